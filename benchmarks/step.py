"""The guided UNet step, sumie (eager and `compile()`) against diffusers, in one process, calls taking turns.

    python benchmarks/step.py [--calls 16] [--sizes 256,512] [--write]

compare.py runs each library in a process of its own, so that neither's allocator state touches the other's;
but on a noisy host two processes of the same library can differ by 10% or more (two diffusers processes of
one run took 2.78 and 3.11 s for the same 256² step), which is wider than the distance to a target. Here the
three UNets of the full SD 1.5 architecture (random weights, loaded from the same folder) share one process
and the malloc settings sumie sets (`sumie.speed.allocator`), and each round calls all three, in an order
that rotates every round. Reported: each one's median, and the median over rounds of each round's ratio
to diffusers (the pairwise ratio, which a slow drift of the host hits alike). float32, 2 threads, batch 2
(a guided step), the text one random encoding of 77 tokens; sumie's UNets as its pipeline holds them, so with
cross-attention's keys and values once per text (`sumie.speed.texts`), as in compare.py. `--write` refreshes
"UNet step in one process on <CPU>".
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


def unets(folder) -> dict:
    """{label: the UNet}: diffusers', sumie's eager and sumie's after `compile()` (packed weights)."""
    import diffusers

    import sumie
    compiled = sumie.StableDiffusionPipeline.from_pretrained(folder)
    compiled.compile()
    return {"diffusers": diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
            "sumie": sumie.StableDiffusionPipeline.from_pretrained(folder).unet,
            "sumie compile()": compiled.unet}


def rounds(calls: dict, n: int) -> dict[str, list[float]]:
    """{label: seconds of each round's call}: one untimed call each, then n rounds calling every label, the
    order rotated by one each round."""
    labels = list(calls)
    for label in labels:
        calls[label]()
    took = {label: [] for label in labels}
    for r in range(n):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            start = time.perf_counter()
            calls[label]()
            took[label].append(time.perf_counter() - start)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=16, help="rounds at 256²; a quarter of them at 512²")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from doc import machine, report
    from load import write_model

    from sumie.speed.allocator import keep_freed_memory
    keep_freed_memory()  # as a sumie pipeline does; diffusers, in this process, runs with it too
    folder, _ = write_model()
    nets = unets(folder)
    ctx, t = torch.randn(2, 77, 768), torch.tensor(500)
    rows = []
    with torch.no_grad():
        for size in map(int, args.sizes.split(",")):
            x = torch.randn(2, 4, size // 8, size // 8)
            n = args.calls if size <= 256 else max(3, args.calls // 4)
            took = rounds({label: (lambda u=u: u(x, t, encoder_hidden_states=ctx)) for label, u in nets.items()}, n)
            base = took["diffusers"]
            for label, seconds in took.items():
                if label != "diffusers":
                    pairwise = statistics.median(s / b for s, b in zip(seconds, base))
                    mine, theirs = statistics.median(seconds), statistics.median(base)
                    rows.append(f"| {size}² | {label} | {mine:.2f} s | {theirs:.2f} s | {mine / theirs:.2f} | "
                                f"**{pairwise:.3f}** | {min(seconds) / min(base):.2f} | {n} |")
    lines = [f"- Command: `python benchmarks/step.py --calls {args.calls} --sizes {args.sizes}` ({machine()}, "
             f"torch {torch.__version__}, float32, 2 threads)", "",
             "| size | sumie | sumie's median | diffusers' median | ratio of medians | pairwise ratio (median) "
             "| ratio of best calls | rounds |", "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows]
    report(f"## UNet step in one process on {machine()} (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
