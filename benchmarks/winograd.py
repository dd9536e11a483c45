"""Winograd F(2x2, 3x3) and F(4x4, 3x3) against oneDNN's packed convolution on the 3x3 layers SD 1.5 runs at 256².

    python benchmarks/winograd.py [--write]

Records every Conv2d call of one guided UNet step (batch 2, 32x32 latents) and one VAE decode (32x32 latent)
on the full SD 1.5 architecture with random weights, keeps the 3x3 stride-1 shapes, and times each in one
process: oneDNN with its weights packed once, and F(2x2, 3x3) and, from 8x8 positions, F(4x4, 3x3), each
with its sums over channels by one oneDNN product per tile position or by one batched `torch.bmm`, on the
weights `compile()` keeps for them ("used" marks the algorithm this machine's tuning chose for `compile()`).
Also the max error of each against a float64 convolution. `--write` refreshes the "Winograd convolution on
CPU" section of docs/benchmarks.md, one per CPU model (issue 7's, on an Intel Xeon, is headed "Winograd
convolution (issue 7)").
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def layer_calls(model, run, keep) -> dict:
    """(input shape, weight shape) -> [layer, calls] for the calls `run` makes of the layers `keep(layer)` picks."""
    calls = {}

    def hook(layer, args, _):
        calls.setdefault((tuple(args[0].shape), tuple(layer.weight.shape)), [layer, 0])[1] += 1
    hooks = [m.register_forward_hook(hook) for m in model.modules() if keep(m)]
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    return calls


def conv_calls(model, run) -> dict:
    """(input shape, weight shape) -> [conv, calls] for the 3x3 stride-1 convs `run` makes."""
    return layer_calls(model, run, lambda m: isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                       and m.stride == (1, 1))


def header(script: str, repeats: int, columns: list[str]) -> list[str]:
    """The command line and a markdown table head for a per-layer convolution table."""
    return [f"- Command: `python benchmarks/{script}` (torch {torch.__version__}, float32, 2 threads, median of "
            f"{repeats}; error: max abs difference from a float64 convolution)", "",
            "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def each_layer(runs: dict):
    """(run, input shape, weight shape, conv, calls, random input x, float64 conv of x) per recorded shape."""
    for run, calls in runs.items():
        for (shape, wshape), (conv, n) in calls.items():
            x = torch.randn(shape)
            yield run, shape, wshape, conv, n, x, F.conv2d(x.double(), conv.weight.double(), conv.bias.double(),
                                                           padding=1)


def main() -> None:
    from doc import machine
    from floor import median_time, setup

    from sumie.speed import packing
    args, model = setup()
    ctx = torch.randn(2, 77, 768)
    runs = {"UNet": conv_calls(model.unet, lambda: model.unet(torch.randn(2, 4, 32, 32), 500,
                                                               encoder_hidden_states=ctx)),
            "VAE": conv_calls(model.vae, lambda: model.vae.decode(torch.randn(1, 4, 32, 32)))}
    lines = header("winograd.py", args.repeats, ["network", "input", "output channels", "calls",
                                                  "F(2x2): oneDNN products / batched",
                                                  "F(4x4): oneDNN products / batched",
                                                  "oneDNN packed", "used", "used / oneDNN", "error oneDNN",
                                                  "error F(2x2)", "error F(4x4)"])
    totals = {}
    pads = (1, 1)
    with torch.no_grad():
        for net, shape, wshape, conv, n, x, exact in each_layer(runs):
            tiles = (2, 4) if min(shape[-2:]) >= 8 else (2,)
            names = ["onednn", *(f"winograd{m}{way}" for m in tiles for way in ("", " batched"))]
            calls = {}
            for name in names:  # as packing.algorithm times them
                make, run = packing.PACKED[name]
                calls[name] = functools.partial(run, x, make(conv.weight, shape, pads), conv.bias, pads)
            errors = [(calls[name]().double() - exact).abs().max().item()  # the batched ones: the same arithmetic
                      for name in ("onednn", *(f"winograd{m} batched" for m in tiles))]
            took = {name: median_time(call, args.repeats) for name, call in calls.items()}
            used = packing.algorithm(conv, x, pads)
            if used.startswith("winograd") and used in took:
                t = totals.setdefault(net, [0.0, 0.0])
                t[0] += n * took["onednn"]
                t[1] += n * took[used]
            cells = [" / ".join(f"{'used, ' if used == name else ''}{took[name] * 1e3:.1f} ms"
                                for name in (f"winograd{m}", f"winograd{m} batched")) if m in tiles else ""
                     for m in (2, 4)]
            errs = [f"{e:.1e}" for e in errors] + [""] * (3 - len(errors))
            ratio = f"{took[used] / took['onednn']:.2f}" if used in took else ""
            lines.append(f"| {net} | {'x'.join(map(str, shape))} | {wshape[0]} | {n} | {' | '.join(cells)} | "
                         f"{took['onednn'] * 1e3:.1f} ms | {used} | {ratio} | {' | '.join(errs)} |")
    lines.append("")
    lines.append("- used: the algorithm this machine's tuning chose for `compile()` (`packing.PACKED`); used / oneDNN: "
                 "its time over oneDNN's convolution's, where this script times it.")
    lines += [f"- {net}: the layers `compile()` runs by Winograd take {b:.2f} s per "
              f"{'step' if net == 'UNet' else 'decode'} against oneDNN's convolution's {a:.2f} s (**{b / a:.2f}×**)."
              for net, (a, b) in totals.items()]
    from doc import report
    report(f"## Winograd convolution on {machine()} (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
