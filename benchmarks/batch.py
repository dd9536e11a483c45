"""What batch invariance costs on a CPU: a batch of images one at a time through the networks (the pipeline's
default on CPU, `pipe.batch_invariant`, so that image i of a batch has exactly the numbers it has alone) against
the whole batch in one call per network, in one process, taking turns. Also the largest difference between image i of the batch
and image i alone, for each way.

    python benchmarks/batch.py [--repeats 3] [--full] [--write]

sumie-tiny: 8 images, its default sampler and 20 steps. --full adds the full SD 1.5 architecture with random
weights (benchmarks/load.py writes it once): 2 images at 256², 4 steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(pipe, n: int, kw: dict, repeats: int) -> dict:
    prompts = ["a small red circle in the top left corner on a blue background"] * n
    alone = np.stack([pipe(prompts[0], seed=100 + i, **kw).images[0] for i in range(n)])
    times, diffs = {"one at a time": [], "whole batch": []}, {}
    for _ in range(repeats):
        for way in times:
            pipe.batch_invariant = way == "one at a time"
            start = time.perf_counter()
            images = pipe(prompts, seed=100, **kw).images
            times[way].append(time.perf_counter() - start)
            diffs[way] = float(np.abs(images - alone).max())
    return {way: (statistics.median(t), diffs[way]) for way, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also the full SD 1.5 architecture at 256²")
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from doc import machine, report

    from sumie import StableDiffusionPipeline, tiny
    runs = [("sumie-tiny, 8 images of 64², 20 steps", "sumie-tiny", 8,
             dict(num_inference_steps=tiny.STEPS, guidance_scale=tiny.GUIDANCE, output_type="np"))]
    if args.full:
        from load import write_model
        runs.append(("SD 1.5 architecture (random weights), 2 images of 256², 4 steps", write_model(single=False), 2,
                     dict(num_inference_steps=4, height=256, width=256, output_type="np")))
    lines = [f"- Command: `python benchmarks/batch.py --repeats {args.repeats}{' --full' if args.full else ''}` "
             f"({machine()}, torch {torch.__version__}, float32, 2 threads, one process, the two ways taking turns, "
             f"median of {args.repeats})", "",
             "| run | one at a time (s) | whole batch (s) | ratio | max difference from each image alone: one at a time "
             "/ whole batch |", "| --- | --- | --- | --- | --- |"]
    for label, model, n, kw in runs:
        pipe = StableDiffusionPipeline.from_pretrained(model)
        pipe.set_progress_bar_config(disable=True)
        pipe(["x"] * n, seed=0, **kw)  # warm-up
        r = measure(pipe, n, kw, args.repeats)
        (a, da), (b, db) = r["one at a time"], r["whole batch"]
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f} | {da:.1e} / {db:.1e} |")
    report("## Batch invariance", lines, args.write)


if __name__ == "__main__":
    main()
