"""A UNet step with cross-attention's keys and values computed once per text (`sumie.speed.texts`) against
computing them at every step, as diffusers does (full SD 1.5 architecture, random weights).

    python benchmarks/texts.py [--repeats 20] [--write]

One process, float32, 2 threads, a guided 256² step (batch 2), eager (the pipeline's kernel choice) and
packed (`compile()` on a CPU). The two ways take turns, `--repeats` calls each after one untimed call, each
call on a new copy of the same text encoding (as the pipeline makes one per step); medians. Also the time
the 32 products of to_k and to_v took in one plain step, timed around each. `--write` refreshes the
"Cross-attention keys and values once per text" section of docs/benchmarks.md, one per CPU model.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from doc import machine, report
    from floor import setup

    from sumie.speed import packing, texts
    args, model = setup()
    unet = texts.remember(model.unet)
    x, context = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 768)
    ways = {"once per text": lambda c: unet(x, 500, encoder_hidden_states=c),
            "every step": lambda c: type(unet).forward(unet, x, 500, c)}  # the UNet's own forward: nothing kept
    rows = []
    with torch.no_grad():
        for path in ("eager", "packed"):
            if path == "packed":
                packing.pack(unet)
            assert torch.equal(ways["once per text"](context.clone()), ways["every step"](context.clone()))
            took = {name: [] for name in ways}
            for i in range(args.repeats):
                for name in (list(ways) if i % 2 else list(ways)[::-1]):
                    c = context.clone()
                    start = time.perf_counter()
                    ways[name](c)
                    took[name].append(time.perf_counter() - start)
            spent, started = [], {}
            hooks = [h for name, m in unet.named_modules() if name.endswith(("attn2.to_k", "attn2.to_v"))
                     for h in (m.register_forward_pre_hook(lambda m, a: started.__setitem__(m, time.perf_counter())),
                               m.register_forward_hook(lambda m, a, o: spent.append(time.perf_counter() - started[m])))]
            ways["every step"](context.clone())
            for h in hooks:
                h.remove()
            once, every = (statistics.median(took[name]) for name in ways)
            rows.append(f"| {path} | {every:.3f} s | {once:.3f} s | **{once / every:.3f}** | {sum(spent) * 1e3:.0f} ms "
                        f"({sum(spent) / every:.1%}) |")
    lines = [f"- Command: `python benchmarks/texts.py --repeats {args.repeats}` ({machine()}, torch "
             f"{torch.__version__}, float32, 2 threads, a guided 256² UNet step, the two ways taking turns, medians)",
             "", "| path | keys and values every step | once per text | ratio | to_k and to_v in one step |",
             "| --- | --- | --- | --- | --- |", *rows]
    report(f"## Cross-attention keys and values once per text on {machine()}", lines, args.write)


if __name__ == "__main__":
    main()
