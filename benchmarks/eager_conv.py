"""The eager Conv2d's algorithms (`sumie.speed.kernels`) against F.conv2d, which diffusers runs, per 3x3 layer.

    python benchmarks/eager_conv.py [--repeats 5] [--write]

Records every 3x3 stride-1 convolution of one guided UNet step at 256² and 512² (batch 2) and one VAE decode
at 256² on the full SD 1.5 architecture with random weights, then times each shape both ways in one
process, with its max error against a float64 convolution. `--write` refreshes the section of
docs/benchmarks.md named after the machine's CPU ("Eager convolution on ... (issue 24)"; issue 7's, on an
Intel Xeon, is headed "Eager convolution (issue 7)").
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def algorithm(conv, x) -> str:
    """The algorithm sumie's Conv2d takes for x: the one this machine's tuning chose (`sumie.speed.tuning`)."""
    from sumie.speed import kernels
    return kernels.algorithm(x, conv.weight, conv.bias, conv.padding)


def main() -> None:
    from floor import median_time, setup
    from winograd import conv_calls, each_layer, header
    args, model = setup()
    ctx = torch.randn(2, 77, 768)
    unet = lambda size: lambda: model.unet(torch.randn(2, 4, size, size), 500, encoder_hidden_states=ctx)
    runs = {"UNet 256²": conv_calls(model.unet, unet(32)), "UNet 512²": conv_calls(model.unet, unet(64)),
            "VAE 256²": conv_calls(model.vae, lambda: model.vae.decode(torch.randn(1, 4, 32, 32)))}
    lines = header("eager_conv.py", args.repeats, ["run", "input", "output channels", "calls", "sumie's algorithm",
                                                    "F.conv2d", "sumie", "ratio", "error F.conv2d", "error sumie"])
    totals = {}
    with torch.no_grad():
        for run, shape, wshape, conv, n, x, exact in each_layer(runs):
            direct = lambda: F.conv2d(x, conv.weight, conv.bias, padding=1)
            ours = lambda: conv(x)
            errors = [(f().double() - exact).abs().max().item() for f in (direct, ours)]
            used = algorithm(conv, x)
            a, b = (median_time(direct, args.repeats), median_time(ours, args.repeats)) if used != "direct" \
                else (median_time(direct, args.repeats),) * 2
            t = totals.setdefault(run, [0.0, 0.0])
            t[0] += n * a
            t[1] += n * b
            if used != "direct":
                lines.append(f"| {run} | {'x'.join(map(str, shape))} | {wshape[0]} | {n} | {used} | "
                             f"{a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {b / a:.2f} | {errors[0]:.1e} | {errors[1]:.1e} |")
    lines.append("")
    lines.append("Shapes not listed run `F.conv2d` in both. Over all of a run's 3x3 convolutions:")
    lines += [f"- {run}: {b:.2f} s against F.conv2d's {a:.2f} s (**{b / a:.2f}×**)." for run, (a, b) in totals.items()]
    from doc import machine, report
    report(f"## Eager convolution on {machine()} (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
