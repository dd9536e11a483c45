"""The `sumie` command line.

User errors (SumieError) print one line to stderr and exit with code 2; no traceback. Ctrl-C exits
with 130, keeping the images already written (each is written atomically, so none is left partial).
"""

from __future__ import annotations

import argparse
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
    except ValueError:
        raise InputError(f"{path}: cannot read the stored parameters ({p})") from None
    if "Sampler" in p:
        out["scheduler"], karras = from_a1111(p["Sampler"])
        out["karras"] = karras or p.get("Schedule type", "").lower() == "karras"
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
    from . import __version__
    from .images import format_parameters, image_grid, save_png
    from .pipeline import StableDiffusionPipeline
    from .schedulers import spec_for
    from .weights import model_hash

    given = {k: v for k, v in vars(args).items() if v is not None}
    settings = {"negative_prompt": "", "steps": 50, "guidance": 7.5, "karras": False, "n": 1, **(
        settings_from_image(args.params_from) if args.params_from else {}), **given}
    if "prompt" not in settings:
        raise InputError("give a prompt: sumie generate \"a red circle on a blue background\"")
    if not settings.get("model"):
        raise InputError("no model given: pass --model with a diffusers folder, hub-cache id or .safetensors file "
                         "(the embedded model is not available yet)")
    if not 1 <= settings["n"] <= 64:
        raise InputError(f"--n must be from 1 to 64 (got {settings['n']})")
    if not 0 <= settings.get("seed", 0) < 2 ** 63:
        raise InputError(f"--seed must be from 0 to 2**63-1 (got {settings['seed']})")
    device, dtype = _device_and_dtype(settings.get("device", "cpu"), settings.get("dtype", "float32"))
    seed = settings.get("seed", secrets.randbelow(2 ** 32))
    pipe = StableDiffusionPipeline.from_pretrained(
        settings["model"], torch_dtype=dtype, vae=settings.get("vae"), config=settings.get("config"),
        prediction_type=settings.get("prediction_type"), allow_pickle=args.allow_pickle).to(device)
    pipe.set_progress_bar_config(disable=args.quiet)
    if args.compile:
        pipe.compile()
    scheduler = settings.get("scheduler", pipe.scheduler.sampler_id)
    spec_for(scheduler)
    outdir = Path(settings.get("outdir", "outputs"))
    outdir.mkdir(parents=True, exist_ok=True)
    model_name, hash_ = Path(pipe.source).name, model_hash(pipe.source)

    images = []
    for i in range(settings["n"]):
        image = pipe(settings["prompt"], negative_prompt=settings["negative_prompt"] or None,
                     num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                     height=settings.get("height"), width=settings.get("width"), seed=seed + i,
                     scheduler=scheduler, karras=settings["karras"]).images[0]
        text = format_parameters(
            settings["prompt"], settings["negative_prompt"], Steps=settings["steps"],
            Sampler=spec_for(scheduler).a1111, Schedule_type="Karras" if settings["karras"] else "Automatic",
            CFG_scale=settings["guidance"], Seed=seed + i, Size=f"{image.width}x{image.height}",
            Model_hash=hash_, Model=model_name, Version=f"sumie {__version__}")
        print(_save_numbered(outdir, f"{seed + i}", image, text, save_png), flush=True)
        images.append((image, text))
    if args.grid and len(images) > 1:
        grid = image_grid([im for im, _ in images], rows=1, cols=len(images))
        print(_save_numbered(outdir, "grid", grid, images[0][1], save_png), flush=True)
    return 0


def cmd_convert(args) -> int:
    from .weights import convert
    _, dtype = _device_and_dtype("cpu", args.dtype or "float32")
    print(convert(args.src, args.dst, dtype=dtype if args.dtype else None, allow_pickle=args.allow_pickle,
                  config=args.config, prediction_type=args.prediction_type))
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FOLDER_OR_ID",
                   help="single files: take the component configs from this diffusers folder")
    p.add_argument("--prediction-type", dest="prediction_type", choices=["epsilon", "v_prediction"],
                   help="override the model's prediction type (SD 2 single files default to v_prediction)")
    p.add_argument("--allow-pickle", dest="allow_pickle", action="store_true",
                   help="allow .ckpt/.bin pickles (tensors only, via torch.load(weights_only=True))")


def _save_numbered(outdir: Path, suffix: str, image, text: str, save_png) -> Path:
    """Save as the next free `NNNNN-suffix.png`; never overwrites."""
    index = next_index(outdir)
    while True:
        try:
            return save_png(image, outdir / f"{index:05d}-{suffix}.png", text)
        except FileExistsError:
            index += 1


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
    g.add_argument("--model", help="a diffusers folder, a model id in the local Hugging Face cache, or a "
                                    "single .safetensors checkpoint")
    g.add_argument("--vae", help="a separate VAE: a single file or a diffusers vae folder")
    g.add_argument("--negative-prompt", dest="negative_prompt")
    g.add_argument("--steps", type=_int)
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5; <= 1 turns it off)")
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
    g.add_argument("--params-from", dest="params_from", metavar="IMAGE.png",
                   help="re-create an image from its stored parameters; other options override them")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first image, faster after)")
    _model_options(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="convert between a diffusers folder and a single .safetensors file")
    c.add_argument("src", help="a diffusers folder, hub-cache id, or single-file checkpoint")
    c.add_argument("dst", help="a new .safetensors file (single file) or a new folder (diffusers layout)")
    c.add_argument("--dtype", choices=sorted(DTYPES), help="store the weights in this dtype (default: as read)")
    _model_options(c)
    c.set_defaults(func=cmd_convert)
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
