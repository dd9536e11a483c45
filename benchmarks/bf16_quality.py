"""bfloat16 on a CPU: sumie-tiny's images in bfloat16 against float32, same seeds, same prompts.

    python benchmarks/bf16_quality.py [--n 100] [--write]

Both pipelines (`torch_dtype=torch.float32` and `torch.bfloat16`) generate the tiny world's evaluation set
(`sumie.tiny.evaluate`: `--n` training captions and `--n`/2 held-out pairs, image i with seed i) at the
model's default steps and guidance. Reported: the PSNR of each bfloat16 image against its float32 twin
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
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    import torch

    from doc import machine, report
    from sumie import StableDiffusionPipeline, tiny
    from sumie.tiny.evaluate import evaluate, table
    results, examples, seconds = {}, {}, {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny", torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        results[name], examples[name] = evaluate(pipe, n_train=args.n, n_held_out=args.n // 2, steps=tiny.STEPS,
                                                 guidance=tiny.GUIDANCE)
        seconds[name] = time.perf_counter() - start
    values = [psnr(a, b) for split in examples["float32"] for (_, a), (_, b)
              in zip(examples["float32"][split], examples["bfloat16"][split])]
    lines = [f"- Machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
             f"- Command: `python benchmarks/bf16_quality.py --n {args.n}`: sumie-tiny, {len(values)} images "
             f"(64x64, {tiny.STEPS} steps, guidance {tiny.GUIDANCE}), the same seeds in both dtypes", "",
             f"- PSNR of bfloat16 against float32: median {np.median(values):.1f} dB, 5th percentile "
             f"{np.percentile(values, 5):.1f} dB, worst {min(values):.1f} dB",
             f"- Time for all {len(values)} images: float32 {seconds['float32']:.1f} s, bfloat16 "
             f"{seconds['bfloat16']:.1f} s (**{seconds['bfloat16'] / seconds['float32']:.2f}×**)", "",
             "The judge's accuracy:", "",
             table({f"{split}, {name}": r[split] for name, r in results.items() for split in r})]
    report("## bfloat16 on a CPU (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
