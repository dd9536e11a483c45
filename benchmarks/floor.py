"""How close a 256² UNet step is to this machine's arithmetic floor (full SD 1.5 architecture, random weights).

    python benchmarks/floor.py [--write]

Counts the step's floating-point operations (torch.utils.flop_counter), measures the float32 GEMM peak
(a 4096² matrix product), times sumie's UNet step plain and packed (`sumie.packing`, what `compile()` does
on CPU) in one process, and splits the packed step's profile by operator kind. `--write` refreshes the
"UNet step floor" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

KINDS = {"convolution": ("conv",), "linear": ("linear", "addmm", "mm"), "attention": ("attention",)}


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from load import write_model
    from torch.utils.flop_counter import FlopCounterMode

    from sumie import packing
    from sumie.weights import load_model
    folder, _ = write_model()
    unet = load_model(folder).unet
    x, ctx, t = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 768), torch.tensor(500)
    step = lambda: unet(x, t, encoder_hidden_states=ctx)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = counter.get_total_flops()
        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        peak = 2 * 4096 ** 3 / median_time(lambda: a @ b, args.repeats)
        plain = median_time(step, args.repeats)
        packing.pack(unet)
        packed = median_time(step, args.repeats)
        with torch.profiler.profile() as prof:
            step()
    shares = dict.fromkeys([*KINDS, "everything else"], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, needles in KINDS.items() if any(n in event.key.lower() for n in needles)),
                    "everything else")
        shares[kind] += event.self_cpu_time_total
    total = sum(shares.values())
    floor = flops / peak
    lines = [f"- Command: `python benchmarks/floor.py` (torch {torch.__version__}, float32, 2 threads, median of "
             f"{args.repeats})", "",
             "| quantity | value |", "| --- | --- |",
             f"| operations in one guided 256² step (flop_counter; attention not counted) | {flops / 1e9:.0f} GFLOP |",
             f"| float32 GEMM peak (4096² product) | {peak / 1e9:.0f} GFLOP/s |",
             f"| floor: operations / peak | {floor:.2f} s |",
             f"| sumie step, plain | {plain:.2f} s ({floor / plain:.0%} of peak) |",
             f"| sumie step, packed (`compile()` on CPU) | {packed:.2f} s ({floor / packed:.0%} of peak) |"]
    lines += [f"| packed step's time in {kind} | {share / total:.0%} |" for kind, share in shares.items()]
    table = "\n".join(lines)
    print(table)
    if args.write:
        from doc import write_section
        write_section("## UNet step floor (issue 7)", table)


if __name__ == "__main__":
    main()
