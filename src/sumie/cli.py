"""The `sumie` command line.

User errors (SumieError) print one line to stderr and exit with code 2; no traceback. Ctrl-C exits
with 130, keeping the images already written (each is written atomically, so none is left partial).
`sumie batch` exits with 1 when some of its jobs failed (each is in its manifest), and with 143 on SIGTERM.
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
from .generate import DTYPES, device_and_dtype, folder_beside


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


def next_index(outdir: Path) -> int:
    numbers = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    return max(numbers, default=-1) + 1


def cmd_generate(args) -> int:
    from . import generate
    from .images import image_grid
    _threads(args.threads)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "threads"}
    from_image = generate.settings_from_image(args.params_from) if args.params_from else {}
    settings = generate.resolve({**from_image, **given})
    seed = settings.get("seed", secrets.randbelow(2 ** 32))
    outdir = Path(settings.get("outdir", "outputs"))
    model = generate.load(settings, outdir=outdir, allow_pickle=args.allow_pickle, quiet=args.quiet)
    job = generate.prepare(model, settings)
    outdir.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(settings["n"]):
        image, text = generate.render(model, job, seed + i)
        print(_save_numbered(outdir, f"{seed + i}", image, text), flush=True)
        images.append((image, text))
    if args.grid and len(images) > 1:
        grid = image_grid([im for im, _ in images], rows=1, cols=len(images))
        print(_save_numbered(outdir, "grid", grid, images[0][1]), flush=True)
    return 0


def cmd_batch(args) -> int:
    import signal

    from .batch import jobs, on_ray, run
    from .batch.output import MANIFEST, Output
    options = _job_options()
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise InputError(f"--threads must be from 1 to 1024 (got {args.threads})")
    if not 1 <= args.workers <= 1024 or args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        raise InputError("--workers must be from 1 to 1024, --cpus-per-worker above 0, --gpus-per-worker 0 or more")
    defaults = {k: v for k, v in vars(args).items() if v is not None and k in options and k != "seed"}
    tasks, failures = jobs.read(args.jobs, defaults, options, base_seed=args.seed or 0)
    out = Output(args.outdir)
    address = None if args.ray == "local" else args.ray
    if args.ray:
        runner = on_ray.runner(out, address=address, workers=args.workers, cpus=args.cpus_per_worker,
                               gpus=args.gpus_per_worker, threads=args.threads, allow_pickle=args.allow_pickle)
    else:
        _threads(args.threads)
        runner = run.local(out, allow_pickle=args.allow_pickle)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: no temp file is left behind
    try:
        summary = run.run(tasks, failures, out, runner, quiet=args.quiet)
    finally:
        if args.ray:
            on_ray.shutdown(address)
    print(f"sumie batch: {summary}; manifest: {out.where.rstrip('/')}/{MANIFEST}", flush=True)
    return 1 if summary.failed else 0


def _job_options() -> dict:
    """The settings a job may set, read as the command line reads them: generate's options and the prompt."""
    from .batch.jobs import Option
    p = argparse.ArgumentParser(add_help=False)
    _generation_options(p, "")
    _model_options(p)
    options = {a.dest: Option(a.type, tuple(a.choices) if a.choices else None, a.const is True)
               for a in p._actions if a.dest != "allow_pickle"}
    return {"prompt": Option(), **options}


def cmd_convert(args) -> int:
    from .weights import convert
    _, dtype = device_and_dtype("cpu", args.dtype or "float32")
    print(convert(args.src, args.dst, dtype=dtype if args.dtype else None, allow_pickle=args.allow_pickle,
                  config=args.config, prediction_type=args.prediction_type))
    return 0


def cmd_train_tiny(args) -> int:
    from dataclasses import replace

    from .tiny.train import Recipe, train
    overrides = {k: getattr(args, k) for k in ("seed", "vae_steps", "unet_steps", "unet_batch", "threads")
                 if getattr(args, k) is not None}
    device, _ = device_and_dtype(args.device or "cpu", "float32")
    print(train(args.out, replace(Recipe(), **overrides), quiet=args.quiet, device=str(device)))
    return 0


def cmd_train_lora(args) -> int:
    from .train_lora import Options, train
    _threads(args.threads)
    fields = ("rank", "alpha", "lr", "steps", "batch_size", "resolution", "seed", "targets", "text_encoder",
              "save_every")
    given = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    given.setdefault("alpha", float(given.get("rank", Options.rank)))  # alpha = rank: a scale of 1, Kohya's advice
    say = lambda text: print(text, file=sys.stderr)
    print(train(args.model, args.data, args.out, Options(**given), resume=args.resume, allow_pickle=args.allow_pickle,
                quiet=args.quiet, say=say))
    return 0


def cmd_train_tiny_lora(args) -> int:
    import time

    from .pipeline import StableDiffusionPipeline
    from .tiny import lora_demo
    from .train_lora import train
    _threads(args.threads)
    out = Path(args.out)
    options = lora_demo.recipe(steps=args.steps, lr=args.lr, rank=args.rank, alpha=args.rank and float(args.rank),
                               targets=args.targets)
    data = lora_demo.write_dataset(out / "data", options.seed)
    start = time.perf_counter()
    path = train("sumie-tiny", data, out / "diamond.safetensors", options, resume=args.resume, quiet=args.quiet)
    print(f"trained {path} in {time.perf_counter() - start:.0f} s ({options})")
    if args.n:
        pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny")
        pipe.set_progress_bar_config(disable=True)
        pipe.batch_invariant = False  # whole batches, as eval-tiny
        print(lora_demo.report(lora_demo.judge(pipe, path, n=args.n, n_train=args.n_train), path, options))
    return 0


def cmd_eval_tiny(args) -> int:
    from tqdm import tqdm

    from . import tiny
    from .pipeline import StableDiffusionPipeline
    from .tiny.evaluate import contact_sheet, evaluate, evaluate_edits, table
    device, _ = device_and_dtype(args.device or "cpu", "float32")
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
    device, dtype = device_and_dtype(args.device or "cpu", args.dtype or "float32")
    serve(args.model or tiny.NAME, host=args.host, port=args.port, outdir=args.outdir, api_key=args.api_key,
          api_auth=args.api_auth, queue_size=args.queue_size, device=str(device), dtype=dtype,
          request_timeout=args.timeout, embeddings=folder_beside(args.embeddings, args.outdir, "embeddings"),
          allow_pickle=args.allow_pickle,
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


THREADS_HELP = ("CPU threads (default: torch's, one per core); the pixels of a CPU run can change by a level "
                "with the thread count, so give the same number to reproduce an image exactly")


def _threads(n: int | None) -> None:
    if n is None:
        return
    if not 1 <= n <= 1024:
        raise InputError(f"--threads must be from 1 to 1024 (got {n})")
    import torch
    torch.set_num_threads(n)


def _generation_options(p: argparse.ArgumentParser, seed_help: str) -> None:
    """The options of one generation job: `generate`'s, and `batch`'s defaults for its jobs."""
    p.add_argument("--model", help="a diffusers folder, a model id in the local Hugging Face cache, a single "
                                    ".safetensors checkpoint, or sumie-tiny (the embedded model, the default)")
    p.add_argument("--vae", help="a separate VAE: a single file or a diffusers vae folder")
    p.add_argument("--vae-tiny", dest="vae_tiny", metavar="PATH",
                   help="decode with TAESD, the tiny autoencoder, instead of the VAE: a diffusers AutoencoderTiny "
                        "folder, or the folder or file of taesd_decoder (and taesd_encoder) weights")
    p.add_argument("--negative-prompt", dest="negative_prompt")
    p.add_argument("--steps", type=_int, help="default 50 (sumie-tiny: 20)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale (default 7.5, sumie-tiny: 5; <= 1 turns it off)")
    p.add_argument("--scheduler", help="a sampler id (see `sumie schedulers`); default: the model's")
    p.add_argument("--karras", action="store_true", default=None, help="Karras sigmas")
    p.add_argument("--height", type=_int)
    p.add_argument("--width", type=_int)
    p.add_argument("--seed", type=_int, help=seed_help)
    p.add_argument("--n", type=_int, help="number of images (default 1)")
    p.add_argument("--device", help="cpu (default), cuda, mps")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: float32")
    p.add_argument("--prompt-syntax", dest="prompt_syntax", choices=["a1111", "plain"],
                   help="a1111 (default): (emphasis:1.2), [editing:steps], BREAK, long prompts; "
                        "plain: diffusers' reading")
    p.add_argument("--clip-skip", dest="clip_skip", type=_int, metavar="N",
                   help="A1111's count: 1 (default) the last layer of the text encoder, 2 the one before, ...")
    p.add_argument("--emphasis", choices=["original", "none"], help="how (word:1.2) weights apply (default original)")
    p.add_argument("--embeddings", metavar="DIR", help="textual-inversion embeddings, each usable in a prompt by its "
                                                       "file name (default: embeddings/ beside the output folder)")
    p.add_argument("--lora-dir", dest="lora_dir", metavar="DIR",
                   help="LoRA files that <lora:NAME:WEIGHT> in a prompt names "
                        "(default: loras/ beside the output folder)")
    i2i = p.add_argument_group("image to image and inpainting (A1111's options; see docs/img2img.md)")
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
    hr = p.add_argument_group("hires fix (A1111's: a first pass at --width x --height, an upscale, an img2img pass)")
    hr.add_argument("--hires-scale", dest="hires_scale", type=float, help="upscale factor, e.g. 2 (turns hires fix on)")
    hr.add_argument("--hires-steps", dest="hires_steps", type=_int, help="second-pass steps (default: --steps)")
    hr.add_argument("--hires-strength", dest="hires_strength", type=float, help="second-pass denoising (default 0.7)")
    hr.add_argument("--hires-upscaler", dest="hires_upscaler", metavar="NAME",
                    help="Latent (default), Latent (nearest), Latent (bicubic), ..., None, Lanczos, Nearest")
    p.add_argument("--compile", action="store_true", default=None,
                   help="fast path: packed and Winograd weights on CPU (more memory), torch.compile on a GPU (slow first image)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sumie", description="Stable Diffusion text-to-image, compact and readable.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("schedulers", help="list the sampler ids").set_defaults(func=cmd_schedulers)
    info = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image")
    info.set_defaults(func=cmd_info)

    g = sub.add_parser("generate", help="generate images from a prompt")
    g.add_argument("prompt", nargs="?")
    _generation_options(g, "default: random; image i uses seed + i")
    g.add_argument("--grid", action="store_true", help="also write a grid of the images")
    g.add_argument("--outdir", help="default: outputs/")
    g.add_argument("--params-from", dest="params_from", metavar="IMAGE.png",
                   help="re-create an image from its stored parameters; other options override them")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=_int, help=THREADS_HELP)
    _model_options(g)
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("batch", help="render a file of jobs to a folder, resumable; on a Ray cluster with --ray",
                       description="JOBS: a .txt file (one prompt a line), a .jsonl file (one object a line, keyed by "
                                   "generate's option names) or a .csv file (a header of those names). The options "
                                   "below are every job's defaults. See docs/batch.md.")
    b.add_argument("jobs", metavar="JOBS")
    b.add_argument("--outdir", required=True, help="a folder, or a URI fsspec can write (s3://, gs://); "
                                                   "manifest.jsonl goes there too")
    _generation_options(b, "the base of the seeds of the jobs without one (default 0): each gets a seed "
                           "derived from it and its line")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--threads", type=_int, help=THREADS_HELP + "; on Ray, default --cpus-per-worker")
    _model_options(b)
    r = b.add_argument_group("Ray (pip install \"sumie[ray]\"; see docs/scale-out.md)")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: auto, HOST:PORT or ray://HOST:PORT; alone, a local Ray started for the run")
    r.add_argument("--workers", type=_int, default=1, help="actors, each with one model replica (default 1)")
    r.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=float, default=1.0, help="default 1")
    r.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=float, default=0.0, help="default 0")
    b.set_defaults(func=cmd_batch)

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
    sv.add_argument("--dtype", choices=sorted(DTYPES), help="default: float32 (bfloat16: see docs/speed.md)")
    sv.add_argument("--embeddings", metavar="DIR", help="textual-inversion embeddings, each usable in a prompt by "
                                                        "its file name (default: embeddings/ beside --outdir)")
    sv.add_argument("--lora-dir", dest="lora_dir", metavar="DIR",
                    help="LoRA files that <lora:NAME:WEIGHT> in a prompt names (default: loras/ beside --outdir)")
    sv.add_argument("--allow-pickle", dest="allow_pickle", action="store_true",
                    help="allow .pt/.bin embeddings and LoRAs (tensors only, via torch.load(weights_only=True))")
    sv.set_defaults(func=cmd_serve)

    tl = sub.add_parser("train-lora", help="train a LoRA on a folder of captioned images (Kohya's format; resumable)")
    tl.add_argument("data", help="a folder of images, each with a same-named .txt caption (subfolders too)")
    tl.add_argument("--model", required=True,
                    help="an SD 1/2 diffusers folder, hub-cache id, single file, or sumie-tiny")
    tl.add_argument("--out", required=True,
                    help="the LoRA to write (NAME.safetensors); its state and loss log go beside it")
    tl.add_argument("--rank", type=_int, help="the LoRA's rank (default 4)")
    tl.add_argument("--alpha", type=float, help="its alpha; the update is scaled by alpha / rank (default: the rank)")
    tl.add_argument("--lr", type=float, help="AdamW's learning rate (default 1e-4)")
    tl.add_argument("--steps", type=_int, help="optimizer steps (default 500)")
    tl.add_argument("--batch-size", dest="batch_size", type=_int, help="images per step (default 1)")
    tl.add_argument("--resolution", type=_int, help="square training size in pixels (default 512)")
    tl.add_argument("--seed", type=_int, help="the run's seed: one seed, one file (default 0)")
    tl.add_argument("--targets", choices=["attention", "transformer"],
                    help="attention: the attention projections (default); transformer: every layer of the "
                         "transformer blocks, as Kohya's trainer")
    tl.add_argument("--text-encoder", dest="text_encoder", action="store_true", default=None,
                    help="also train the text encoder's attention and MLP layers")
    tl.add_argument("--save-every", dest="save_every", type=_int, help="steps between saved states (default 100)")
    tl.add_argument("--resume", action="store_true", help="continue from NAME.state.safetensors")
    tl.add_argument("--threads", type=_int, help="CPU threads (default: torch's)")
    tl.add_argument("--quiet", action="store_true", help="no progress bar")
    tl.add_argument("--allow-pickle", dest="allow_pickle", action="store_true",
                    help="allow a .ckpt/.bin pickle model (tensors only, via torch.load(weights_only=True))")
    tl.set_defaults(func=cmd_train_lora)

    tt = sub.add_parser("train-tiny-lora",
                        help="teach sumie-tiny a new shape, the diamond, with a LoRA, then judge it (docs/tiny.md)")
    tt.add_argument("out", help="run folder: the dataset in OUT/data, the LoRA OUT/diamond.safetensors")
    tt.add_argument("--steps", type=_int, help="optimizer steps (default: the recipe's)")
    tt.add_argument("--lr", type=float)
    tt.add_argument("--rank", type=_int)
    tt.add_argument("--targets", choices=["attention", "transformer"])
    tt.add_argument("--n", type=_int, default=100,
                    help="diamond prompts of each size to judge (0: train only; default 100)")
    tt.add_argument("--n-train", dest="n_train", type=_int, default=300,
                    help="training captions to judge (default 300)")
    tt.add_argument("--resume", action="store_true", help="continue from OUT/diamond.state.safetensors")
    tt.add_argument("--threads", type=_int, help="CPU threads (default: torch's)")
    tt.add_argument("--quiet", action="store_true", help="no progress bar")
    tt.set_defaults(func=cmd_train_tiny_lora)

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
