"""The `sumie` command line.

User errors (SumieError) print one line to stderr and exit with code 2; no traceback. Ctrl-C exits
with 130, keeping the images already written (each is written atomically, so none is left partial).
"""

from __future__ import annotations

import argparse
import itertools
import re
import secrets
import sys
import warnings
from pathlib import Path

from .errors import InputError, SumieError

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors: one line, exit 2
        print(f"sumie: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def cmd_schedulers(args) -> int:
    from .schedulers import describe
    for sampler_id, line in describe():
        print(f"{sampler_id:12} {line}")
    return 0


def cmd_info(args) -> int:
    from .images import read_parameters
    print(read_parameters(args.image))
    return 0


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


def _device_and_dtype(device: str, dtype: str):
    import torch
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device; use cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: MPS is not available here; use --device cpu")
    return dev, getattr(torch, DTYPES[dtype])


def next_index(outdir: Path) -> int:
    numbers = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    return max(numbers, default=-1) + 1


def cmd_generate(args) -> int:
    from . import tiny
    from .images import image_grid, infotext, load_image
    from .hires import Hires
    from .hires import run as hires_run
    from .img2img import MASKED_CONTENT, RESIZE_MODES, Img2Img, run
    from .lora import Library
    from .pipeline import StableDiffusionPipeline
    from .schedulers import spec_for
    from .weights import model_hash

    given = {k: v for k, v in vars(args).items() if v is not None}
    from_image = settings_from_image(args.params_from) if args.params_from else {}
    embedded = given.get("model", tiny.NAME) == tiny.NAME
    settings = {"negative_prompt": "", "steps": tiny.STEPS if embedded else 50,
                "guidance": tiny.GUIDANCE if embedded else 7.5, "karras": False, "n": 1, "model": tiny.NAME,
                "prompt_syntax": "a1111", "clip_skip": 1, "emphasis": "original", **from_image, **given}
    if "prompt" not in settings:
        raise InputError("give a prompt: sumie generate \"a red circle on a blue background\"")
    if not 1 <= settings["n"] <= 64:
        raise InputError(f"--n must be from 1 to 64 (got {settings['n']})")
    if not 0 <= settings.get("seed", 0) < 2 ** 63:
        raise InputError(f"--seed must be from 0 to 2**63-1 (got {settings['seed']})")
    if not 1 <= settings["clip_skip"] <= 12:
        raise InputError(f"--clip-skip must be from 1 (the last layer) to 12 (got {settings['clip_skip']})")
    device, dtype = _device_and_dtype(settings.get("device", "cpu"), settings.get("dtype", "float32"))
    seed = settings.get("seed", secrets.randbelow(2 ** 32))
    pipe = StableDiffusionPipeline.from_pretrained(
        settings["model"], torch_dtype=dtype, vae=settings.get("vae"), config=settings.get("config"),
        prediction_type=settings.get("prediction_type"), allow_pickle=args.allow_pickle).to(device)
    pipe.set_progress_bar_config(disable=args.quiet)
    decoder = {}
    if "vae_tiny" in settings:  # TAESD decodes (and encodes) in the VAE's place
        from .weights import load_tiny_vae
        pipe.vae = load_tiny_vae(settings["vae_tiny"], dtype=dtype, allow_pickle=args.allow_pickle).to(device)
        decoder = {"VAE Decoder": "TAESD"}  # A1111's field for its TAESD decode
    if args.compile:
        pipe.compile()
    scheduler = settings.get("scheduler", pipe.scheduler.sampler_id)
    spec_for(scheduler)
    outdir = Path(settings.get("outdir", "outputs"))
    folder = folder_beside(settings.get("embeddings"), outdir, "embeddings")
    if folder is not None:
        pipe.embeddings.load_dir(folder, allow_pickle=args.allow_pickle)
    folder = folder_beside(settings.get("lora_dir"), outdir, "loras")
    if folder is not None:
        pipe.lora_library = Library(folder, allow_pickle=args.allow_pickle)
    outdir.mkdir(parents=True, exist_ok=True)
    model_name, hash_ = tiny.NAME if embedded else Path(pipe.source).name, model_hash(pipe.source)
    job = init = fix = None
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if "hires_scale" in settings and "init_image" not in settings:
        fix = Hires(scale=settings["hires_scale"], steps=settings.get("hires_steps", 0),
                    strength=settings.get("hires_strength", 0.7), upscaler=settings.get("hires_upscaler", "Latent"))
        fix.check()
        settings.setdefault("width", native)
        settings.setdefault("height", native)
        fix.size(settings["width"], settings["height"])
    if "init_image" in settings:
        init = load_image(settings["init_image"], f"--init-image {settings['init_image']}").convert("RGB")
        mask = load_image(settings["mask"], f"--mask {settings['mask']}") if "mask" in settings else None
        blur = settings.get("mask_blur", 4)
        job = Img2Img(strength=settings.get("strength", 0.75), resize_mode=RESIZE_MODES.index(
                      settings.get("resize_mode", "just-resize")), mask=mask, mask_blur_x=blur, mask_blur_y=blur,
                      inpainting_fill=MASKED_CONTENT.index(settings.get("inpaint_fill", "original")),
                      only_masked=settings.get("only_masked", False), padding=settings.get("padding", 32),
                      invert_mask=settings.get("invert_mask", False), exact_steps=settings.get("exact_steps", False))
        job.check()
        w, h = init.size  # the output's size by default: the init image's, rounded down to a multiple of 8
        settings.setdefault("width", max(8, w // 8 * 8))
        settings.setdefault("height", max(8, h // 8 * 8))
    elif "mask" in settings:
        raise InputError("--mask needs --init-image: the image the mask paints over")

    images = []
    for i in range(settings["n"]):
        args_ = dict(prompt=settings["prompt"], negative_prompt=settings["negative_prompt"] or None,
                     guidance_scale=settings["guidance"], height=settings.get("height"), width=settings.get("width"),
                     seed=seed + i, scheduler=scheduler, karras=settings["karras"],
                     prompt_syntax=settings["prompt_syntax"], clip_skip=settings["clip_skip"] - 1 or None,
                     emphasis=settings["emphasis"])
        if fix is not None:
            image = hires_run(pipe, fix, steps=settings["steps"], **args_)[0]
        elif job is None:
            image = pipe(num_inference_steps=settings["steps"], **args_).images[0]
        else:
            image = run(pipe, [init], job, steps=settings["steps"], **args_)[0]
        text = infotext(settings["prompt"], settings["negative_prompt"], steps=settings["steps"], sampler_id=scheduler,
                        karras=settings["karras"], cfg_scale=settings["guidance"], seed=seed + i,
                        width=settings.get("width", image.width), height=settings.get("height", image.height),
                        model_hash=hash_, model_name=model_name, clip_skip=settings["clip_skip"],
                        emphasis=settings["emphasis"], prompt_syntax=settings["prompt_syntax"],
                        extra={**decoder, **(job.fields() if job else
                                             fix.fields(settings["width"], settings["height"]) if fix else {})},
                        lora_hashes=pipe.lora_library.hashes_text(settings["prompt"]) if pipe.lora_library and
                        settings["prompt_syntax"] == "a1111" else None)
        print(_save_numbered(outdir, f"{seed + i}", image, text), flush=True)
        images.append((image, text))
    if args.grid and len(images) > 1:
        grid = image_grid([im for im, _ in images], rows=1, cols=len(images))
        print(_save_numbered(outdir, "grid", grid, images[0][1]), flush=True)
    return 0


def folder_beside(given: str | None, outdir: str | Path | None, name: str) -> Path | None:
    """The folder given (--embeddings, --lora-dir), else `name/` beside the output folder when there is one."""
    if given is not None:
        return Path(given)
    beside = Path(outdir).resolve().parent / name if outdir else None
    return beside if beside is not None and beside.is_dir() else None


def cmd_convert(args) -> int:
    from .weights import convert
    _, dtype = _device_and_dtype("cpu", args.dtype or "float32")
    print(convert(args.src, args.dst, dtype=dtype if args.dtype else None, allow_pickle=args.allow_pickle,
                  config=args.config, prediction_type=args.prediction_type))
    return 0


def cmd_train_tiny(args) -> int:
    from dataclasses import replace

    from .tiny.train import Recipe, train
    overrides = {k: getattr(args, k) for k in ("seed", "vae_steps", "unet_steps", "unet_batch", "threads")
                 if getattr(args, k) is not None}
    device, _ = _device_and_dtype(args.device or "cpu", "float32")
    print(train(args.out, replace(Recipe(), **overrides), quiet=args.quiet, device=str(device)))
    return 0


def cmd_eval_tiny(args) -> int:
    from tqdm import tqdm

    from . import tiny
    from .pipeline import StableDiffusionPipeline
    from .tiny.evaluate import contact_sheet, evaluate, evaluate_edits, table
    device, _ = _device_and_dtype(args.device or "cpu", "float32")
    pipe = StableDiffusionPipeline.from_pretrained(args.model).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.batch_invariant = False  # whole batches: the judge needs no bit-identical images, and batches are faster
    steps, guidance = args.steps or tiny.STEPS, tiny.GUIDANCE if args.guidance is None else args.guidance
    if args.edits:
        print(f"model {args.model}, {pipe.scheduler.sampler_id}, {steps} steps, guidance {guidance}, seeds "
              f"{args.seed}..{args.seed + args.n_edits - 1}")
        print(evaluate_edits(pipe, n=args.n_edits, seed=args.seed, steps=steps, guidance=guidance))
        return 0
    with tqdm(total=args.n_train + args.n_held_out, desc="eval", disable=args.quiet) as bar:
        results, examples = evaluate(pipe, n_train=args.n_train, n_held_out=args.n_held_out, seed=args.seed,
                                     steps=steps, guidance=guidance, batch=args.batch, progress=bar.update)
    print(f"model {args.model}, {pipe.scheduler.sampler_id}, {steps} steps, guidance {guidance}, seed {args.seed}")
    print(table(results))
    if args.sheet:
        from .images import save_png
        picks = [e for split in examples.values() for e in split[:50]]
        save_png(contact_sheet(picks), Path(args.sheet), None, overwrite=True)
        print(f"contact sheet: {args.sheet} (first 50 of each split; bar: green = all attributes right)")
    return 0


def cmd_serve(args) -> int:
    from . import tiny
    from .server import serve
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port must be from 1 to 65535 (got {args.port})")
    if args.api_auth and ":" not in args.api_auth:
        raise InputError("--api-auth takes user:password (several separated by commas)")
    if not 0 < args.timeout < float("inf"):
        raise InputError(f"--timeout must be a positive number of seconds (got {args.timeout})")
    for flag, folder in (("--model-dir", args.model_dir), ("--vae-dir", args.vae_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"{flag} {folder}: not a folder")
    if not 1 <= args.queue_size <= 1024:
        raise InputError(f"--queue-size must be from 1 to 1024 (got {args.queue_size})")
    device, _ = _device_and_dtype(args.device or "cpu", "float32")
    serve(args.model or tiny.NAME, host=args.host, port=args.port, outdir=args.outdir, api_key=args.api_key,
          api_auth=args.api_auth, queue_size=args.queue_size, device=str(device), request_timeout=args.timeout,
          embeddings=folder_beside(args.embeddings, args.outdir, "embeddings"), allow_pickle=args.allow_pickle,
          lora_dir=folder_beside(args.lora_dir, args.outdir, "loras"), model_dir=args.model_dir,
          styles=args.styles or ("styles.csv" if Path("styles.csv").is_file() else None), vae_dir=args.vae_dir,
          preview_vae=args.preview_vae, warn=lambda text: print(text, file=sys.stderr))
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FOLDER_OR_ID",
                   help="single files: take the component configs from this diffusers folder")
    p.add_argument("--prediction-type", dest="prediction_type", choices=["epsilon", "v_prediction"],
                   help="override the model's prediction type (SD 2 single files default to v_prediction)")
    p.add_argument("--allow-pickle", dest="allow_pickle", action="store_true",
                   help="allow .ckpt/.bin pickles (tensors only, via torch.load(weights_only=True))")


def _save_numbered(outdir: Path, suffix: str, image, text: str) -> Path:
    """Save as the next free `NNNNN-suffix.png`; never overwrites."""
    from .images import save_png_new
    return save_png_new(image, (outdir / f"{i:05d}-{suffix}.png" for i in itertools.count(next_index(outdir))), text)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sumie", description="Stable Diffusion text-to-image, compact and readable.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("schedulers", help="list the sampler ids").set_defaults(func=cmd_schedulers)
    info = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image")
    info.set_defaults(func=cmd_info)

    g = sub.add_parser("generate", help="generate images from a prompt")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--model", help="a diffusers folder, a model id in the local Hugging Face cache, a single "
                                    ".safetensors checkpoint, or sumie-tiny (the embedded model, the default)")
    g.add_argument("--vae", help="a separate VAE: a single file or a diffusers vae folder")
    g.add_argument("--vae-tiny", dest="vae_tiny", metavar="PATH",
                   help="decode with TAESD, the tiny autoencoder, instead of the VAE: a diffusers AutoencoderTiny "
                        "folder, or the folder or file of taesd_decoder (and taesd_encoder) weights")
    g.add_argument("--negative-prompt", dest="negative_prompt")
    g.add_argument("--steps", type=_int, help="default 50 (sumie-tiny: 20)")
    g.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale (default 7.5, sumie-tiny: 5; <= 1 turns it off)")
    g.add_argument("--scheduler", help="a sampler id (see `sumie schedulers`); default: the model's")
    g.add_argument("--karras", action="store_true", default=None, help="Karras sigmas")
    g.add_argument("--height", type=_int)
    g.add_argument("--width", type=_int)
    g.add_argument("--seed", type=_int, help="default: random; image i uses seed + i")
    g.add_argument("--n", type=_int, help="number of images (default 1)")
    g.add_argument("--grid", action="store_true", help="also write a grid of the images")
    g.add_argument("--outdir", help="default: outputs/")
    g.add_argument("--device", help="cpu (default), cuda, mps")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="default: float32")
    g.add_argument("--prompt-syntax", dest="prompt_syntax", choices=["a1111", "plain"],
                   help="a1111 (default): (emphasis:1.2), [editing:steps], BREAK, long prompts; "
                        "plain: diffusers' reading")
    g.add_argument("--clip-skip", dest="clip_skip", type=_int, metavar="N",
                   help="A1111's count: 1 (default) the last layer of the text encoder, 2 the one before, ...")
    g.add_argument("--emphasis", choices=["original", "none"], help="how (word:1.2) weights apply (default original)")
    g.add_argument("--embeddings", metavar="DIR", help="textual-inversion embeddings, each usable in a prompt by its "
                                                       "file name (default: embeddings/ beside the output folder)")
    g.add_argument("--lora-dir", dest="lora_dir", metavar="DIR",
                   help="LoRA files that <lora:NAME:WEIGHT> in a prompt names "
                        "(default: loras/ beside the output folder)")
    i2i = g.add_argument_group("image to image and inpainting (A1111's options; see docs/img2img.md)")
    i2i.add_argument("--init-image", dest="init_image", metavar="IMG",
                     help="start from this image; width and height default to its size, rounded down to 8")
    i2i.add_argument("--strength", type=float, help="denoising strength from 0 to 1 (default 0.75)")
    i2i.add_argument("--resize-mode", dest="resize_mode", choices=["just-resize", "crop", "fill", "latent"],
                     help="how the image meets --width x --height (default just-resize; latent runs as just-resize)")
    i2i.add_argument("--exact-steps", dest="exact_steps", action="store_true", default=None,
                     help="run exactly --steps steps (A1111's img2img_fix_steps); default: strength x steps")
    i2i.add_argument("--mask", metavar="MASK.png", help="inpaint: white where the image is repainted")
    i2i.add_argument("--mask-blur", dest="mask_blur", type=_int, help="Gaussian blur of the mask in pixels (default 4)")
    i2i.add_argument("--invert-mask", dest="invert_mask", action="store_true", default=None,
                     help="repaint where the mask is black instead")
    i2i.add_argument("--inpaint-fill", dest="inpaint_fill", choices=["fill", "original", "latent-noise",
                     "latent-nothing"], help="what the masked region starts from (default original)")
    i2i.add_argument("--inpaint-only-masked", dest="only_masked", action="store_true", default=None,
                     help="generate only the mask's region (plus --padding) at full size and paste it back")
    i2i.add_argument("--padding", type=_int, help="pixels around the mask with --inpaint-only-masked (default 32)")
    hr = g.add_argument_group("hires fix (A1111's: a first pass at --width x --height, an upscale, an img2img pass)")
    hr.add_argument("--hires-scale", dest="hires_scale", type=float, help="upscale factor, e.g. 2 (turns hires fix on)")
    hr.add_argument("--hires-steps", dest="hires_steps", type=_int, help="second-pass steps (default: --steps)")
    hr.add_argument("--hires-strength", dest="hires_strength", type=float, help="second-pass denoising (default 0.7)")
    hr.add_argument("--hires-upscaler", dest="hires_upscaler", metavar="NAME",
                    help="Latent (default), Latent (nearest), Latent (bicubic), ..., None, Lanczos, Nearest")
    g.add_argument("--params-from", dest="params_from", metavar="IMAGE.png",
                   help="re-create an image from its stored parameters; other options override them")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--compile", action="store_true",
                   help="fast path: packed and Winograd weights on CPU (more memory), torch.compile on a GPU (slow first image)")
    _model_options(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="convert between a diffusers folder and a single .safetensors file")
    c.add_argument("src", help="a diffusers folder, hub-cache id, or single-file checkpoint")
    c.add_argument("dst", help="a new .safetensors file (single file) or a new folder (diffusers layout)")
    c.add_argument("--dtype", choices=sorted(DTYPES), help="store the weights in this dtype (default: as read)")
    _model_options(c)
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser("train-tiny", help="train the embedded model sumie-tiny from scratch (resumable)")
    t.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, and the model in OUT/model")
    t.add_argument("--device", help="cpu (default) or cuda")
    t.add_argument("--seed", type=_int)
    t.add_argument("--vae-steps", dest="vae_steps", type=_int, help="shorter or longer runs, for experiments")
    t.add_argument("--unet-steps", dest="unet_steps", type=_int)
    t.add_argument("--unet-batch", dest="unet_batch", type=_int)
    t.add_argument("--threads", type=_int, help="CPU threads (default: torch's)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train_tiny)

    sv = sub.add_parser("serve", help="an AUTOMATIC1111-compatible HTTP API and a web page")
    sv.add_argument("--model", help="as for generate (default: sumie-tiny)")
    sv.add_argument("--preview-vae", dest="preview_vae", metavar="PATH",
                    help="decode live previews with TAESD (a diffusers AutoencoderTiny folder, or taesd_decoder "
                         "weights); without it, A1111's Approx cheap colours")
    sv.add_argument("--vae-dir", dest="vae_dir", metavar="DIR",
                    help="VAEs (.safetensors files, diffusers vae folders) that sd_vae may name")
    sv.add_argument("--styles", metavar="CSV", help="A1111's styles.csv (name,prompt,negative_prompt); default: "
                                                  "styles.csv in the current folder, when there is one")
    sv.add_argument("--model-dir", dest="model_dir", metavar="DIR",
                    help="diffusers folders and .safetensors files clients may switch to (POST /sdapi/v1/options)")
    sv.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    sv.add_argument("--port", type=_int, default=7860)
    sv.add_argument("--outdir", help="save images here when a request asks (save_images); default: never save")
    sv.add_argument("--api-key", dest="api_key", help="require Authorization: Bearer KEY on every API route")
    sv.add_argument("--api-auth", dest="api_auth", metavar="USER:PASS", help="require HTTP basic auth (A1111's flag)")
    sv.add_argument("--queue-size", dest="queue_size", type=_int, default=16, help="jobs waiting at most (default 16)")
    sv.add_argument("--timeout", type=float, default=600.0, help="seconds a request may wait and run (default 600)")
    sv.add_argument("--device", help="cpu (default), cuda, mps")
    sv.add_argument("--embeddings", metavar="DIR", help="textual-inversion embeddings, each usable in a prompt by "
                                                        "its file name (default: embeddings/ beside --outdir)")
    sv.add_argument("--lora-dir", dest="lora_dir", metavar="DIR",
                    help="LoRA files that <lora:NAME:WEIGHT> in a prompt names (default: loras/ beside --outdir)")
    sv.add_argument("--allow-pickle", dest="allow_pickle", action="store_true",
                    help="allow .pt/.bin embeddings and LoRAs (tensors only, via torch.load(weights_only=True))")
    sv.set_defaults(func=cmd_serve)

    e = sub.add_parser("eval-tiny", help="score sumie-tiny (or another tiny-world model) by image analysis")
    e.add_argument("--model", default="sumie-tiny")
    e.add_argument("--steps", type=_int)
    e.add_argument("--guidance", type=float)
    e.add_argument("--n-train", dest="n_train", type=_int, default=300)
    e.add_argument("--n-held-out", dest="n_held_out", type=_int, default=100)
    e.add_argument("--seed", type=_int, default=0)
    e.add_argument("--batch", type=_int, default=50)
    e.add_argument("--sheet", metavar="PNG", help="write a contact sheet of examples here")
    e.add_argument("--edits", action="store_true", help="score img2img and inpainting edits instead (docs/tiny.md)")
    e.add_argument("--n-edits", dest="n_edits", type=_int, default=50, help="seeds per edit (default 50)")
    e.add_argument("--device", help="cpu (default) or cuda")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = lambda message, *_a, **_k: print(f"sumie: warning: {message}", file=sys.stderr)
    try:
        return args.func(args)
    except SumieError as e:
        print(f"sumie: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sumie: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
