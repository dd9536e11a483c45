"""How close a 256² UNet step is to this machine's arithmetic floor (full SD 1.5 architecture, random weights).

    python benchmarks/floor.py [--write]

Counts the step's floating-point operations (torch.utils.flop_counter; and how many are left when the
3x3 convolutions `sumie.winograd.fits` accepts take 4 multiplies for 9), measures the float32 GEMM peak
(a 4096² matrix product), times sumie's UNet step eager and packed (`sumie.packing`, what `compile()` does
on CPU) in one process, and splits the packed step's profile by operator kind. `--write` refreshes the
"UNet step floor" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

KINDS = {"convolution": ("conv", "bmm"), "linear": ("linear", "addmm", "mm"), "attention": ("attention",)}


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def setup():
    """(--repeats/--write arguments, the full SD 1.5 model with random weights), on 2 threads."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from load import write_model

    from sumie.allocator import keep_freed_memory
    from sumie.weights import load_model
    keep_freed_memory()  # as a pipeline does
    folder, _ = write_model()
    return args, load_model(folder)


def main() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from sumie import convolution, packing, winograd
    args, model = setup()
    unet = model.unet
    x, ctx, t = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 768), torch.tensor(500)
    step = lambda: unet(x, t, encoder_hidden_states=ctx)
    wide = []  # multiply-adds of the 3x3 convolutions packing hands to Winograd (4 multiplies where 9)
    hooks = [m.register_forward_hook(lambda m, args, out: wide.append(out.numel() * m.in_channels * 9)
                                      if winograd.fits(m, args[0]) else None)
             for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter, mock.patch.object(convolution.Conv2d, "forward", torch.nn.Conv2d.forward):
            step()  # counted as direct convolutions, whatever algorithm the eager Conv2d picks
        flops = counter.get_total_flops()
        for h in hooks:
            h.remove()
        packed_flops = flops - 2 * sum(wide) * 5 / 9
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
    floor, packed_floor = flops / peak, packed_flops / peak
    lines = [f"- Command: `python benchmarks/floor.py` (torch {torch.__version__}, float32, 2 threads, median of "
             f"{args.repeats})", "",
             "| quantity | value |", "| --- | --- |",
             f"| operations in one guided 256² step (flop_counter; attention not counted) | {flops / 1e9:.0f} GFLOP |",
             f"| float32 GEMM peak (4096² product) | {peak / 1e9:.0f} GFLOP/s |",
             f"| floor: operations / peak | {floor:.2f} s |",
             f"| sumie step, eager (im2col and Winograd where they pay, `sumie.convolution`) | {plain:.2f} s "
             f"({floor / plain:.0%} of peak) |",
             f"| the same with Winograd's 3x3 convolutions where packing uses them | {packed_flops / 1e9:.0f} GFLOP |",
             f"| floor with Winograd | {packed_floor:.2f} s |",
             f"| sumie step, packed (`compile()` on CPU, Winograd included) | {packed:.2f} s "
             f"({packed_floor / packed:.0%} of peak) |"]
    lines += [f"| packed step's time in {kind} | {share / total:.0%} |" for kind, share in shares.items()]
    from doc import report
    report("## UNet step floor (issue 7)", lines, args.write)


if __name__ == "__main__":
    main()
