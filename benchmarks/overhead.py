"""Pipeline overhead: time spent outside the three networks, sumie vs diffusers, on the same tiny model.

    python benchmarks/overhead.py [--steps 20] [--size 64] [--repeats 7]

Both pipelines load the same small random folder (written once by the oracles, as in the tests) and
generate with the same sampler and seed. Each network call (text encoder, UNet, VAE decode) is timed;
"overhead" is the end-to-end time minus that. Runs alternate A B A B; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from doc import machine  # noqa: E402


class NetTimer:
    """Wraps module methods to add up the seconds spent inside them."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, obj, name):
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        setattr(obj, name, timed)


def measure(pipe, timer, call) -> tuple[float, float]:
    timer.seconds = 0.0
    start = time.perf_counter()
    call()
    total = time.perf_counter() - start
    return total, total - timer.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(2)

    import diffusers
    from oracle import write_model_folder

    import sumie

    folder = write_model_folder(Path(tempfile.mkdtemp()) / "tiny", "sd1")
    ours = sumie.StableDiffusionPipeline.from_pretrained(folder)
    ours.set_progress_bar_config(disable=True)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    theirs.scheduler = diffusers.EulerDiscreteScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)

    timers = {"sumie": NetTimer(), "diffusers": NetTimer()}
    for name, pipe in (("sumie", ours), ("diffusers", theirs)):
        for module, method in ((pipe.unet, "forward"), (pipe.text_encoder, "forward"), (pipe.vae, "decode")):
            timers[name].wrap(module, method)
    kw = dict(prompt="a red circle", num_inference_steps=args.steps, height=args.size, width=args.size,
              output_type="np")
    calls = {
        "sumie": lambda: ours(**kw, scheduler="euler", seed=0),
        "diffusers": lambda: theirs(**kw, generator=[torch.Generator().manual_seed(0)]),
    }
    results = {"sumie": [], "diffusers": []}
    for name in calls:  # warm-up
        calls[name]()
    for _ in range(args.repeats):
        for name in calls:
            results[name].append(measure(None, timers[name], calls[name]))

    med = {n: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for n, rs in results.items()}
    command = "python benchmarks/overhead.py " + " ".join(sys.argv[1:])
    lines = [
        f"- Machine: {machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}",
        f"- Command: `{command.strip()}` ({args.steps} Euler steps, {args.size}x{args.size}, guidance 7.5, tiny random SD1 "
        f"model, median of {args.repeats} interleaved runs)",
        "",
        "| | end-to-end (ms) | outside the networks (ms) |",
        "| --- | --- | --- |",
    ]
    for n, (total, over) in med.items():
        lines.append(f"| {n} | {total * 1e3:.1f} | {over * 1e3:.1f} |")
    lines.append(f"| sumie / diffusers | {med['sumie'][0] / med['diffusers'][0]:.2f} | "
                 f"{med['sumie'][1] / med['diffusers'][1]:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
