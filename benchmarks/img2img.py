"""img2img's cost against its strength, on the full SD 1.5 architecture (random weights, written once by
benchmarks/load.py): sumie's and diffusers' StableDiffusionImg2ImgPipeline at 256x256 for strengths 0.25-1.0, and
each library's text to image with the same steps, in the same process, taking turns. At strength s both run
int(s * steps) steps, so the time should follow s (plus the VAE's encode and decode).

    python benchmarks/img2img.py [--steps 10] [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
STRENGTHS = (0.25, 0.5, 0.75, 1.0)
SIDE = 256


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    import diffusers

    from doc import machine, report
    from load import pipelines
    from sumie import StableDiffusionImg2ImgPipeline
    txt_ours, txt_theirs = pipelines()
    ours = StableDiffusionImg2ImgPipeline.from_pipe(txt_ours)
    theirs = diffusers.StableDiffusionImg2ImgPipeline(**txt_theirs.components)
    for p in (txt_theirs, theirs):
        p.set_progress_bar_config(disable=True)
    init = Image.fromarray((np.random.default_rng(0).random((SIDE, SIDE, 3)) * 255).astype(np.uint8))
    common = dict(prompt="a red circle", num_inference_steps=args.steps, output_type="np")
    runs = {("text to image", "sumie"): lambda: txt_ours(**common, height=SIDE, width=SIDE, seed=0),
            ("text to image", "diffusers"): lambda: txt_theirs(**common, height=SIDE, width=SIDE,
                                                               generator=torch.Generator().manual_seed(0))}
    for s in STRENGTHS:
        runs[s, "sumie"] = lambda s=s: ours(**common, image=init, strength=s, seed=0)
        runs[s, "diffusers"] = lambda s=s: theirs(**common, image=init, strength=s,
                                                  generator=torch.Generator().manual_seed(0))
    times = {k: [] for k in runs}
    with torch.no_grad():
        for i in range(args.repeats + 1):  # the first round warms up and is not counted
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                if i:
                    times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = {lib: med["text to image", lib] for lib in ("sumie", "diffusers")}
    lines = [f"- Command: `python benchmarks/img2img.py --steps {args.steps} --repeats {args.repeats}` ({machine()}, "
             f"torch {torch.__version__}, float32, 2 threads; full SD 1.5 architecture, random weights, {SIDE}x{SIDE}, "
             f"PNDM, guidance 7.5; one process, the libraries taking turns, median of {args.repeats})", "",
             "| run | steps run | sumie (s) | diffusers (s) | sumie / diffusers | sumie / its text to image |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key in [("text to image",)] + [(s,) for s in STRENGTHS]:
        kind = key[0]
        a, b = med[kind, "sumie"], med[kind, "diffusers"]
        steps = args.steps if kind == "text to image" else int(args.steps * kind)
        label = kind if kind == "text to image" else f"img2img, strength {kind}"
        lines.append(f"| {label} | {steps} | {a:.2f} | {b:.2f} | {a / b:.2f} | {a / base['sumie']:.2f} |")
    fit = {lib: np.polyfit([int(args.steps * s) for s in STRENGTHS], [med[s, lib] for s in STRENGTHS], 1)
           for lib in ("sumie", "diffusers")}  # seconds = per_step * steps + fixed
    lines += ["", "- Both libraries run int(s * steps) steps at strength s, so the time follows s: a straight line "
              "through the img2img rows gives " + "; ".join(f"{lib} {a:.2f} s per step + {b:.2f} s fixed (text "
              f"encoding, the init image's VAE encode, the decode)" for lib, (a, b) in fit.items()) + "."]
    report("## img2img (issue 22)", lines, args.write)


if __name__ == "__main__":
    main()
