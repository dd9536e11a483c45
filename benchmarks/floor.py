"""How close a 256² UNet step is to this machine's arithmetic floor (full SD 1.5 architecture, random weights).

    python benchmarks/floor.py [--write]

Counts the step's floating-point operations (torch.utils.flop_counter; and how many are left when the 3x3
convolutions packing computes by Winograd take 4 multiplies for 9, or 2.25 where it takes F(4x4, 3x3):
the tiling this machine's tuning chose, `packed_tile`), measures the float32 GEMM peak (a 4096² matrix
product by MKL and by oneDNN, the faster of the two; on an AMD EPYC oneDNN's was the faster) and the rate
of reading memory (a sum over 1 GiB), times sumie's UNet step eager and packed (`sumie.speed.packing`, what
`compile()` does on CPU) in one process, and splits the packed step by layer kind, timed around each layer
(no profiler, whose own cost distorts the split): the arithmetic each kind does, its rate, and for 3x3 convolutions the
weights each reads. `--write` refreshes the "UNet step floor on CPU" section of docs/benchmarks.md, one per CPU
model (issue 7's, on an Intel Xeon, is headed "UNet step floor (issue 7)").
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

    from sumie.speed.allocator import keep_freed_memory
    from sumie.speed.kernels import by_shape
    from sumie.weights import load_model
    keep_freed_memory()  # as a pipeline does
    folder, _ = write_model()
    model = load_model(folder)
    for net in (model.unet, model.vae):
        by_shape(net)  # the eager kernel choice, as a pipeline does
    return args, model


def packed_tile(conv: torch.nn.Conv2d, x: torch.Tensor) -> int | None:
    """m of the Winograd F(m x m, 3x3) packing takes for conv on x on this machine (`sumie.speed.tuning`), or None."""
    from sumie.speed import packing, winograd
    if not winograd.plain_3x3(conv):
        return None
    name = packing.algorithm(conv, x, conv.padding)
    return {"winograd2": 2, "winograd4": 4}.get(name.removesuffix(" batched"))


def conv_multiplies(conv: torch.nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(multiply-adds, weight bytes read) of a packed 3x3 convolution: Winograd's F(m x m, 3x3) takes
    (m+2)^2 / m^2 multiplies per output and channel pair where a direct one takes 9 (`sumie.speed.winograd`)."""
    pairs = conv.in_channels * conv.out_channels
    m = packed_tile(conv, x)
    if m:
        return out.numel() * conv.in_channels * (m + 2) ** 2 // m ** 2, pairs * (m + 2) ** 2 * 4
    return out.numel() * conv.in_channels * 9, pairs * 9 * 4


def timed_split(model: torch.nn.Module, step, repeats: int) -> dict:
    """{input (H, W) of 3x3 convolutions, or None for linear layers and 1x1 convolutions: [seconds,
    multiply-adds, weight bytes] per step}, each layer timed around its forward."""
    split, started = {}, {}

    def after(m, args, out):
        took = time.perf_counter() - started.pop(m)
        x = args[0]
        wide = getattr(m, "kernel_size", None) == (3, 3)
        macs, weights = conv_multiplies(m, x, out) if wide else (out.numel() * m.weight[0].numel(), 0)
        entry = split.setdefault(tuple(x.shape[-2:]) if wide else None, [0.0, 0, 0])
        entry[0] += took / repeats
        entry[1] += macs / repeats
        entry[2] += weights / repeats
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    start = lambda m, args: started.__setitem__(m, time.perf_counter())
    hooks = [h for m in layers for h in (m.register_forward_pre_hook(start), m.register_forward_hook(after))]
    step()
    split.clear()
    for _ in range(repeats):
        step()
    for h in hooks:
        h.remove()
    return split


def main() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from sumie.speed import kernels, packing
    args, model = setup()
    unet = model.unet
    x, ctx, t = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 768), torch.tensor(500)
    step = lambda: unet(x, t, encoder_hidden_states=ctx)
    saved = []  # multiply-adds the 3x3 convolutions packing hands to Winograd save
    hooks = [m.register_forward_hook(lambda m, args, out: saved.append(out.numel() * m.in_channels * 9
                                                                       - conv_multiplies(m, args[0], out)[0]))
             for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        packing.unpack(unet)  # counted as direct convolutions, whatever algorithm the eager pass picks
        with counter:
            step()
        kernels.by_shape(unet)
        flops = counter.get_total_flops()
        for h in hooks:
            h.remove()
        packed_flops = flops - 2 * sum(saved)
        a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
        products = {"MKL's (`a @ b`)": lambda: a @ b,
                    "oneDNN's (`mkldnn._linear_pointwise`)": lambda: torch.ops.mkldnn._linear_pointwise(
                        a, b, None, "none", [], "")}
        rates = {name: 2 * 4096 ** 3 / median_time(run, args.repeats) for name, run in products.items()}
        peak = max(rates.values())
        big = torch.ones(2**28)
        bandwidth = big.numel() * 4 / median_time(big.sum, args.repeats)
        del big
        plain = median_time(step, args.repeats)
        packing.pack(unet)
        packed = median_time(step, args.repeats)
        split = timed_split(unet, step, args.repeats)
    floor, packed_floor = flops / peak, packed_flops / peak
    from doc import machine, report
    lines = [f"- Command: `python benchmarks/floor.py` ({machine()}, torch {torch.__version__}, float32, 2 threads, "
             f"median of {args.repeats})", "",
             "| quantity | value |", "| --- | --- |",
             f"| operations in one guided 256² step (flop_counter; attention not counted) | {flops / 1e9:.0f} GFLOP |",
             *[f"| float32 4096² product, {name} | {rate / 1e9:.0f} GFLOP/s |" for name, rate in rates.items()],
             f"| peak: the faster of the two | {peak / 1e9:.0f} GFLOP/s |",
             f"| reading memory (sum over 1 GiB) | {bandwidth / 1e9:.0f} GB/s |",
             f"| floor: operations / peak | {floor:.2f} s |",
             f"| sumie step, eager (`sumie.speed.kernels`: im2col and Winograd where they pay, so its floor is lower) "
             f"| {plain:.2f} s ({floor / plain:.0%} of the floor above) |",
             f"| the same with Winograd's 3x3 convolutions where packing uses them | {packed_flops / 1e9:.0f} GFLOP |",
             f"| floor with Winograd | {packed_floor:.2f} s |",
             f"| sumie step, packed (`compile()` on CPU, Winograd included) | {packed:.2f} s "
             f"({packed_floor / packed:.0%} of peak) |", "",
             "The packed step by layer kind, each layer timed around its forward:", "",
             "| layers | time per step | share | GFLOP | GFLOP/s | weights read | GB/s |", "|" + " --- |" * 7]
    for size in sorted(split, key=lambda size: (size is None, -size[0] if size else 0)):  # large images first
        took, macs, weights = split[size]
        name = f"3x3 convolutions at {size[0]}x{size[1]}" if size else "linear layers and 1x1 convolutions"
        lines.append(f"| {name} | {took * 1e3:.0f} ms | {took / packed:.0%} | {2 * macs / 1e9:.1f} | "
                     f"{2 * macs / took / 1e9:.0f} | {f'{weights / 1e6:.0f} MB' if weights else ''} | "
                     f"{f'{weights / took / 1e9:.1f}' if weights else ''} |")
    rest = packed - sum(v[0] for v in split.values())
    lines.append(f"| everything else (attention, norms, activations, residuals) | {rest * 1e3:.0f} ms | "
                 f"{rest / packed:.0%} | | | | |")
    report(f"## UNet step floor on {machine()} (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
