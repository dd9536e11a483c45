"""bfloat16 on a CPU: sumie-tiny's images in bfloat16 against float32, same seeds, same prompts.

    python benchmarks/bf16_quality.py [--n 100] [--compile] [--write]

Both pipelines (`torch_dtype=torch.float32` and `torch.bfloat16`) generate the tiny world's evaluation set
(`sumie.tiny.evaluate`: `--n` training captions and `--n`/2 held-out pairs, image i with seed i) at the
model's default steps and guidance; with `--compile`, so does a third, bfloat16 with `pipe.compile()` (packed
weights, kernels of their own). Reported: the PSNR of each bfloat16 image against its float32 twin
(median, 5th percentile and worst), the judge's accuracy for both, and the time of each run. `--write`
refreshes the "bfloat16 on a CPU (issue 24)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="training captions (and half as many held-out pairs)")
    ap.add_argument("--compile", action="store_true", help="also bfloat16 with pipe.compile()")
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    import torch

    from doc import machine, report
    from sumie import StableDiffusionPipeline, tiny
    from sumie.tiny.evaluate import evaluate, table
    results, examples, seconds = {}, {}, {}
    variants = [("float32", torch.float32), ("bfloat16", torch.bfloat16)]
    for name, dtype in variants + ([("bfloat16 compile()", torch.bfloat16)] if args.compile else []):
        pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny", torch_dtype=dtype)
        if name.endswith("compile()"):
            pipe.compile()
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        results[name], examples[name] = evaluate(pipe, n_train=args.n, n_held_out=args.n // 2, steps=tiny.STEPS,
                                                 guidance=tiny.GUIDANCE)
        seconds[name] = time.perf_counter() - start
    lines = [f"- Machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
             f"- Command: `python benchmarks/bf16_quality.py --n {args.n}{' --compile' * args.compile}`: sumie-tiny, "
             f"{args.n + args.n // 2} images (64x64, {tiny.STEPS} steps, guidance {tiny.GUIDANCE}), the same seeds in "
             f"each", ""]
    for name in list(seconds)[1:]:
        values = [psnr(a, b) for split in examples["float32"] for (_, a), (_, b)
                  in zip(examples["float32"][split], examples[name][split])]
        lines += [f"- {name}: PSNR against float32 median {np.median(values):.1f} dB, 5th percentile "
                  f"{np.percentile(values, 5):.1f} dB, worst {min(values):.1f} dB; time for all {len(values)} "
                  f"images {seconds[name]:.1f} s against float32's {seconds['float32']:.1f} s "
                  f"(**{seconds[name] / seconds['float32']:.2f}×**)"]
    lines += ["", "The judge's accuracy:", "",
             table({f"{split}, {name}": r[split] for name, r in results.items() for split in r})]
    report("## bfloat16 on a CPU (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
