"""Speed of the embedded model sumie-tiny at its default settings on this machine: one 64x64 image
inside the process (after warm-up), and a cold `sumie generate` with process start included.

    python benchmarks/tiny_speed.py [--repeats 5] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    import torch

    from sumie import StableDiffusionPipeline, tiny
    prompt = "a small red circle in the top left corner on a blue background"
    pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny")
    pipe.set_progress_bar_config(disable=True)
    call = lambda seed: pipe(prompt, num_inference_steps=tiny.STEPS, guidance_scale=tiny.GUIDANCE, seed=seed)
    call(0)
    in_process = []
    for i in range(args.repeats):
        start = time.perf_counter()
        call(i)
        in_process.append(time.perf_counter() - start)
    cold = []
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sumie.cli", "generate", prompt, "--seed", str(i), "--outdir", out,
                            "--quiet"], check=True, capture_output=True)
            cold.append(time.perf_counter() - start)
    rows = ["| measure | median | min | max | target |", "| --- | --- | --- | --- | --- |",
            f"| one image in process | {statistics.median(in_process):.3f} s | {min(in_process):.3f} s | "
            f"{max(in_process):.3f} s | <= 1 s |",
            f"| cold `sumie generate` | {statistics.median(cold):.2f} s | {min(cold):.2f} s | {max(cold):.2f} s | <= 6 s |"]
    table = "\n".join(rows)
    print(table)
    if args.write:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
        from doc import write_section
        intro = (f"`python benchmarks/tiny_speed.py --write`: {tiny.STEPS} steps of {pipe.scheduler.sampler_id}, "
                 f"guidance {tiny.GUIDANCE}, 64x64, float32, torch {torch.__version__}, {torch.get_num_threads()} "
                 f"threads; {args.repeats} runs each.\n\n")
        write_section("## Embedded model speed (issue 5)", intro + table)


if __name__ == "__main__":
    main()
