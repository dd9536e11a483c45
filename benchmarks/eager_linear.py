"""The eager Linear's algorithms (`sumie.speed.kernels.LINEAR`) against F.linear, which diffusers runs, per shape.

    python benchmarks/eager_linear.py [--repeats 5] [--write]

Records every Linear call of one guided UNet step at 256² (batch 2) and of the text encoder (batch 2) on the
full SD 1.5 architecture with random weights, then times each shape both ways in one process: F.linear
(MKL's product on x86) and oneDNN's on the weight as stored, with the algorithm this machine's tuning keeps,
and each one's max error against a float64 product. `--write` refreshes the section of docs/benchmarks.md
named after the machine's CPU ("Eager Linear on ... (issue 24)").
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from doc import machine, report
    from floor import median_time, setup

    from winograd import layer_calls

    from sumie.speed import kernels
    args, model = setup()
    kernels.by_shape(model.text_encoder)  # as the pipeline does
    ctx, ids = torch.randn(2, 77, 768), torch.randint(0, 49408, (2, 77))
    linear = lambda m: type(m) is torch.nn.Linear
    runs = {"UNet 256²": layer_calls(model.unet, lambda: model.unet(torch.randn(2, 4, 32, 32), 500,
                                                                     encoder_hidden_states=ctx), linear),
            "text encoder": layer_calls(model.text_encoder, lambda: model.text_encoder(ids), linear)}
    columns = ["run", "input", "output features", "calls", "sumie's algorithm", "F.linear", "GFLOP/s",
               "oneDNN", "GFLOP/s", "sumie / F.linear", "error F.linear", "error oneDNN"]
    lines = [f"- Command: `python benchmarks/eager_linear.py` ({machine()}, torch {torch.__version__}, float32, "
             f"2 threads, median of {args.repeats}; error: max abs difference from a float64 product)", "",
             "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    totals = {}
    with torch.no_grad():
        for run, calls in runs.items():
            for (shape, wshape), (layer, n) in calls.items():
                x = torch.randn(shape)
                w, b = layer.weight, layer.bias
                exact = F.linear(x.double(), w.double(), None if b is None else b.double())
                ways = {name: (lambda run=way: run(x, w, b)) for name, way in kernels.LINEAR.items()}
                took = {name: median_time(call, args.repeats) for name, call in ways.items()}
                errors = {name: (call().double() - exact).abs().max().item() for name, call in ways.items()}
                used = kernels.linear_algorithm(x, w, b)
                flops = 2 * x.numel() * wshape[0]
                t = totals.setdefault(run, [0.0, 0.0])
                t[0] += n * took["blas"]
                t[1] += n * took[used]
                lines.append(f"| {run} | {'x'.join(map(str, shape))} | {wshape[0]} | {n} | {used} | "
                             f"{took['blas'] * 1e3:.2f} ms | {flops / took['blas'] / 1e9:.0f} | "
                             f"{took['onednn'] * 1e3:.2f} ms | {flops / took['onednn'] / 1e9:.0f} | "
                             f"{took[used] / took['blas']:.2f} | {errors['blas']:.1e} | {errors['onednn']:.1e} |")
    lines += ["", "Over all of a run's Linear calls:"]
    lines += [f"- {run}: {b:.3f} s against F.linear's {a:.3f} s (**{b / a:.2f}×**)." for run, (a, b) in totals.items()]
    report(f"## Eager Linear on {machine()} (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
