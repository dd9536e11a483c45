"""Winograd F(2x2, 3x3) and F(4x4, 3x3) against oneDNN's packed convolution on the 3x3 layers SD 1.5 runs at 256².

    python benchmarks/winograd.py [--write]

Records every Conv2d call of one guided UNet step (batch 2, 32x32 latents) and one VAE decode (32x32 latent)
on the full SD 1.5 architecture with random weights, keeps the 3x3 stride-1 shapes, and times each in one
process: oneDNN with its weights packed once (what `compile()` did before), and `winograd.conv3x3` with
F(2x2, 3x3) and, from 8x8 positions, F(4x4, 3x3) ("used" marks the one `compile()` takes,
this machine's tuning, `floor.packed_tile`). Also the max error of each against a float64 convolution. `--write` refreshes the
"Winograd convolution" section of docs/benchmarks.md.
"""

from __future__ import annotations

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
    from floor import median_time, packed_tile, setup

    from sumie.speed import winograd
    args, model = setup()
    ctx = torch.randn(2, 77, 768)
    runs = {"UNet": conv_calls(model.unet, lambda: model.unet(torch.randn(2, 4, 32, 32), 500,
                                                               encoder_hidden_states=ctx)),
            "VAE": conv_calls(model.vae, lambda: model.vae.decode(torch.randn(1, 4, 32, 32)))}
    lines = header("winograd.py", args.repeats, ["network", "input", "output channels", "calls", "F(2x2, 3x3)",
                                                  "F(4x4, 3x3)", "oneDNN packed", "used / oneDNN", "error oneDNN",
                                                  "error F(2x2)", "error F(4x4)"])
    totals = {}
    with torch.no_grad():
        for net, shape, wshape, conv, n, x, exact in each_layer(runs):
            pads = ([1, 1], [1, 1], [1, 1], 1)
            packed = torch.ops.mkldnn._reorder_convolution_weight(conv.weight, *pads, list(shape))
            onednn = lambda: torch.ops.mkldnn._convolution_pointwise(x, packed, conv.bias, *pads, "none", [], "")
            tiles = (2, 4) if min(shape[-2:]) >= 8 else (2,)
            kept = {m: winograd.transform_weight(conv.weight, m).contiguous() for m in tiles}  # as packing keeps it
            winos = {m: (lambda U=U: winograd.conv3x3(x, U, conv.bias)) for m, U in kept.items()}
            errors = [(f().double() - exact).abs().max().item() for f in (onednn, *winos.values())]
            a = median_time(onednn, args.repeats)
            b = {m: median_time(f, args.repeats) for m, f in winos.items()}
            used = packed_tile(conv, x)
            if used:
                t = totals.setdefault(net, [0.0, 0.0])
                t[0] += n * a
                t[1] += n * b[used]
            cells = [f"{'used, ' if used == m else ''}{b[m] * 1e3:.1f} ms" if m in b else "" for m in (2, 4)]
            errs = [f"{e:.1e}" for e in errors] + [""] * (3 - len(errors))
            lines.append(f"| {net} | {'x'.join(map(str, shape))} | {wshape[0]} | {n} | {' | '.join(cells)} | "
                         f"{a * 1e3:.1f} ms | {b[used] / a if used else b[2] / a:.2f} | {' | '.join(errs)} |")
    lines.append("")
    lines.append("- used / oneDNN: where `compile()` takes neither tiling, F(2x2, 3x3)'s time over oneDNN's.")
    lines += [f"- {net}: the layers Winograd is used for take {b:.2f} s per {'step' if net == 'UNet' else 'decode'} "
              f"against oneDNN's {a:.2f} s (**{b / a:.2f}×**)." for net, (a, b) in totals.items()]
    from doc import report
    report("## Winograd convolution (issue 7)", lines, args.write)


if __name__ == "__main__":
    main()
