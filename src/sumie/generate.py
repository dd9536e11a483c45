"""One generation job, shared by `sumie generate` and `sumie batch`: settings in, images and their A1111
`parameters` text out.

Settings are a dict keyed by the CLI's option names (argparse dests: prompt, negative_prompt, steps, guidance,
scheduler, karras, width, height, seed, n, model, init_image, hires_scale, ...). In order:

- `resolve` fills the defaults and checks the values that need no model;
- `load` builds the pipeline that the model settings (`MODEL_KEYS`) name;
- `prepare` checks the rest against that model: the sampler, the init image and mask, the hires fix;
- `render` makes the image of one seed, with the infotext that `sumie generate` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

# the settings that choose the loaded model: jobs that share them share one pipeline
MODEL_KEYS = ("model", "vae", "vae_tiny", "config", "prediction_type", "device", "dtype", "compile", "embeddings",
              "lora_dir")
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve(given: dict) -> dict:
    """`given` (no None values) over the defaults, checked; the seed stays absent when none was given."""
    from . import tiny
    embedded = given.get("model", tiny.NAME) == tiny.NAME
    settings = {"negative_prompt": "", "steps": tiny.STEPS if embedded else 50,
                "guidance": tiny.GUIDANCE if embedded else 7.5, "karras": False, "n": 1, "model": tiny.NAME,
                "prompt_syntax": "a1111", "clip_skip": 1, "emphasis": "original", **given}
    if "prompt" not in settings:
        raise InputError("give a prompt: sumie generate \"a red circle on a blue background\"")
    if not 1 <= settings["n"] <= 64:
        raise InputError(f"--n must be from 1 to 64 (got {settings['n']})")
    if not 0 <= settings.get("seed", 0) < 2 ** 63:
        raise InputError(f"--seed must be from 0 to 2**63-1 (got {settings['seed']})")
    if not 1 <= settings["clip_skip"] <= 12:
        raise InputError(f"--clip-skip must be from 1 (the last layer) to 12 (got {settings['clip_skip']})")
    if "mask" in settings and "init_image" not in settings:
        raise InputError("--mask needs --init-image: the image the mask paints over")
    return settings


def device_and_dtype(device: str, dtype: str):
    import torch
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device; use cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: MPS is not available here; use --device cpu")
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(sorted(DTYPES))}")
    return dev, getattr(torch, DTYPES[dtype])


def folder_beside(given: str | None, outdir: str | Path | None, name: str) -> Path | None:
    """The folder given (--embeddings, --lora-dir), else `name/` beside the output folder when there is one."""
    if given is not None:
        return Path(given)
    if not outdir or "://" in str(outdir):
        return None
    beside = Path(outdir).resolve().parent / name
    return beside if beside.is_dir() else None


@dataclass
class Model:
    """A loaded pipeline and what an infotext says of it."""
    pipe: Any  # StableDiffusionPipeline
    name: str  # A1111's "Model"
    hash: str  # A1111's "Model hash"
    decoder: dict = field(default_factory=dict)  # {"VAE Decoder": "TAESD"} with --vae-tiny


def load(settings: dict, *, outdir: str | Path | None, allow_pickle: bool = False, quiet: bool = True) -> Model:
    """The pipeline of `settings`' model keys, with its TAESD decoder, embeddings and LoRA folder."""
    from . import tiny
    from .auto import load_pipeline
    from .lora import Library
    from .weights import model_hash
    device, dtype = device_and_dtype(settings.get("device", "cpu"), settings.get("dtype", "float32"))
    pipe = load_pipeline(
        settings["model"], torch_dtype=dtype, vae=settings.get("vae"), config=settings.get("config"),
        prediction_type=settings.get("prediction_type"), allow_pickle=allow_pickle).to(device)
    pipe.set_progress_bar_config(disable=quiet)
    decoder = {}
    if "vae_tiny" in settings:  # TAESD decodes (and encodes) in the VAE's place
        from .weights import load_tiny_vae
        pipe.vae = load_tiny_vae(settings["vae_tiny"], dtype=dtype, allow_pickle=allow_pickle).to(device)
        decoder = {"VAE Decoder": "TAESD"}  # A1111's field for its TAESD decode
    if settings.get("compile"):
        pipe.compile()
    folder = folder_beside(settings.get("embeddings"), outdir, "embeddings")
    if folder is not None:
        pipe.embeddings.load_dir(folder, allow_pickle=allow_pickle)
    folder = folder_beside(settings.get("lora_dir"), outdir, "loras")
    if folder is not None:
        pipe.lora_library = Library(folder, allow_pickle=allow_pickle)
    embedded = settings["model"] == tiny.NAME
    return Model(pipe, tiny.NAME if embedded else Path(pipe.source).name, model_hash(pipe.source), decoder)


@dataclass
class Job:
    """One job's settings, checked against its model: the sampler, and the img2img or hires-fix options."""
    settings: dict
    scheduler: str
    img2img: Any = None  # sumie.img2img.Img2Img
    init: Any = None  # the init image (PIL, RGB)
    hires: Any = None  # sumie.hires.Hires


def prepare(model: Model, settings: dict) -> Job:
    """Check `settings` against `model` and fill the size an init image or the hires fix implies."""
    from .hires import Hires
    from .images import load_image
    from .img2img import MASKED_CONTENT, RESIZE_MODES, Img2Img
    from .schedulers import spec_for
    settings = dict(settings)
    scheduler = settings.get("scheduler", model.pipe.scheduler.sampler_id)
    spec_for(scheduler)
    job = Job(settings, scheduler)
    native = model.pipe.unet.config.sample_size * model.pipe.vae_scale_factor
    if "hires_scale" in settings and "init_image" not in settings:
        job.hires = Hires(scale=settings["hires_scale"], steps=settings.get("hires_steps", 0),
                          strength=settings.get("hires_strength", 0.7),
                          upscaler=settings.get("hires_upscaler", "Latent"))
        job.hires.check()
        settings.setdefault("width", native)
        settings.setdefault("height", native)
        job.hires.size(settings["width"], settings["height"])
    if "init_image" in settings:
        job.init = load_image(settings["init_image"], f"--init-image {settings['init_image']}").convert("RGB")
        mask = load_image(settings["mask"], f"--mask {settings['mask']}") if "mask" in settings else None
        blur = settings.get("mask_blur", 4)
        job.img2img = Img2Img(strength=settings.get("strength", 0.75), resize_mode=RESIZE_MODES.index(
                              settings.get("resize_mode", "just-resize")), mask=mask, mask_blur_x=blur,
                              mask_blur_y=blur, inpainting_fill=MASKED_CONTENT.index(settings.get("inpaint_fill",
                                                                                                  "original")),
                              only_masked=settings.get("only_masked", False), padding=settings.get("padding", 32),
                              invert_mask=settings.get("invert_mask", False),
                              exact_steps=settings.get("exact_steps", False))
        job.img2img.check()
        w, h = job.init.size  # the output's size by default: the init image's, rounded down to a multiple of 8
        settings.setdefault("width", max(8, w // 8 * 8))
        settings.setdefault("height", max(8, h // 8 * 8))
    return job


def render(model: Model, job: Job, seed: int):
    """The image of `seed` (PIL) and its A1111 `parameters` text."""
    from .hires import run as hires_run
    from .images import infotext
    from .img2img import run as img2img_run
    s, pipe = job.settings, model.pipe
    args = dict(prompt=s["prompt"], negative_prompt=s["negative_prompt"] or None, guidance_scale=s["guidance"],
                height=s.get("height"), width=s.get("width"), seed=seed, scheduler=job.scheduler,
                karras=s["karras"], prompt_syntax=s["prompt_syntax"], clip_skip=s["clip_skip"] - 1 or None,
                emphasis=s["emphasis"])
    if job.hires is not None:
        image = hires_run(pipe, job.hires, steps=s["steps"], **args)[0]
    elif job.img2img is None:
        image = pipe(num_inference_steps=s["steps"], **args).images[0]
    else:
        image = img2img_run(pipe, [job.init], job.img2img, steps=s["steps"], **args)[0]
    fields = job.img2img.fields() if job.img2img else job.hires.fields(s["width"], s["height"]) if job.hires else {}
    text = infotext(s["prompt"], s["negative_prompt"], steps=s["steps"], sampler_id=job.scheduler,
                    karras=s["karras"], cfg_scale=s["guidance"], seed=seed, width=s.get("width", image.width),
                    height=s.get("height", image.height), model_hash=model.hash, model_name=model.name,
                    clip_skip=s["clip_skip"], emphasis=s["emphasis"], prompt_syntax=s["prompt_syntax"],
                    extra={**model.decoder, **fields},
                    lora_hashes=pipe.lora_library.hashes_text(s["prompt"]) if pipe.lora_library and
                    s["prompt_syntax"] == "a1111" else None)
    return image, text


def settings_from_image(path: str) -> dict:
    """`generate` options recorded in an image's A1111 parameters."""
    from .images import parse_parameters, read_parameters
    from .schedulers import from_a1111
    p = parse_parameters(read_parameters(path))
    out = {"prompt": p["Prompt"], "negative_prompt": p["Negative prompt"]}
    try:
        if "Steps" in p:
            out["steps"] = int(p["Steps"])
        if "CFG scale" in p:
            out["guidance"] = float(p["CFG scale"])
        if "Seed" in p:
            out["seed"] = int(p["Seed"])
        if "Size" in p:
            out["width"], out["height"] = (int(v) for v in p["Size"].split("x"))
        if "Clip skip" in p:
            out["clip_skip"] = int(p["Clip skip"])
    except ValueError:
        raise InputError(f"{path}: cannot read the stored parameters ({p})") from None
    if "Sampler" in p:
        out["scheduler"], karras = from_a1111(p["Sampler"])
        out["karras"] = karras or p.get("Schedule type", "").lower() == "karras"
    out.update(img2img_settings(p, path))
    out["prompt_syntax"] = "plain" if p.get("Prompt syntax", "").lower() == "plain" else "a1111"
    out["emphasis"] = "none" if p.get("Emphasis", "").lower() == "none" else "original"
    return out


def img2img_settings(p: dict[str, str], path: str) -> dict:
    """The img2img (used only with --init-image) and hires-fix options in an image's A1111 parameters."""
    from .img2img import MASKED_CONTENT, RESIZE_NAMES
    out = {}
    try:
        if "Hires upscale" in p or "Hires upscaler" in p:  # a hires-fixed image: its strength is the second pass's
            out["hires_scale"] = float(p.get("Hires upscale", 2))
            out["hires_steps"] = int(p.get("Hires steps", 0))
            out["hires_upscaler"] = p.get("Hires upscaler", "Latent")
            out["hires_strength"] = float(p.get("Denoising strength", 0.7))
        elif "Denoising strength" in p:
            out["strength"] = float(p["Denoising strength"])
        if "Mask blur" in p:
            out["mask_blur"] = int(p["Mask blur"])
        if "Masked area padding" in p:
            out["padding"] = int(p["Masked area padding"])
    except ValueError:
        raise InputError(f"{path}: cannot read the stored img2img parameters ({p})") from None
    if p.get("Masked content", "").replace(" ", "-") in MASKED_CONTENT:
        out["inpaint_fill"] = p["Masked content"].replace(" ", "-")
    if p.get("Inpaint area") == "Only masked":
        out["only_masked"] = True
    if p.get("Mask mode") == "Inpaint not masked":
        out["invert_mask"] = True
    if p.get("Resize mode") in RESIZE_NAMES:
        out["resize_mode"] = RESIZE_NAMES[p["Resize mode"]]
    return out
