"""Attention in a packed 512² UNet step, against the cost of attention's own products (full SD 1.5 architecture,
random weights).

    python benchmarks/attention.py [--repeats 3] [--write]

One process, float32, 2 threads. Times a guided 512² step (batch 2) packed (`compile()` on a CPU) and, inside
it, each call of torch's `scaled_dot_product_attention` (16 self- and 16 cross-attentions). Then, for each shape
the step met, alone: torch's attention on inputs laid out as the UNet's (heads as a strided view); its two
products alone, the scores Q K^T and the mix P V, as `torch.bmm` on contiguous heads over chunks of
CHUNK queries, so that the scores fit in memory; and the softmax alone on those chunks of scores. Medians of
`--repeats`. Where the two products alone take about as long as torch's whole attention, its fused kernel is
bound by them, and an unfused arrangement, which adds the softmax's time, cannot beat it. `--write` refreshes
the "Attention in a 512² step" section of docs/benchmarks.md, one per CPU model.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHUNK = 512  # queries per chunk for the products and the softmax alone: 16 heads x 512 x 4096 scores = 128 MiB


def timed_attention(step, repeats: int) -> tuple[float, dict]:
    """(seconds per step, {(q shape, k shape): [calls, seconds] per step}), each attention timed around its call."""
    from floor import median_time
    real, calls = F.scaled_dot_product_attention, defaultdict(lambda: [0, 0.0])

    def timed(q, k, v, *args, **kwargs):
        start = time.perf_counter()
        out = real(q, k, v, *args, **kwargs)
        entry = calls[(tuple(q.shape), tuple(k.shape))]
        entry[0] += 1
        entry[1] += time.perf_counter() - start
        return out
    took = median_time(step, repeats)  # the step as a user runs it, before attention is wrapped
    F.scaled_dot_product_attention = timed  # sumie.layers calls it through the module attribute
    try:
        step()
        calls.clear()
        for _ in range(repeats):
            step()
    finally:
        F.scaled_dot_product_attention = real
    return took, {shape: [n // repeats, seconds / repeats] for shape, (n, seconds) in calls.items()}


def alone(q_shape: tuple, k_shape: tuple, repeats: int) -> dict:
    """Seconds for one call of each way, on random inputs of these (B, heads, N|M, hd) shapes."""
    from floor import median_time
    (B, H, N, D), M = q_shape, k_shape[2]
    q, k, v = (torch.randn(B, n, H * D).view(B, n, H, D).transpose(1, 2) for n in (N, M, M))  # as the UNet's
    qc, vc = q.reshape(B * H, N, D), v.reshape(B * H, M, D)  # contiguous (B heads, N|M, hd)
    kt = k.reshape(B * H, M, D).transpose(1, 2).contiguous()  # (B heads, hd, M)
    chunk = min(CHUNK, N)
    scores, out = torch.empty(B * H, chunk, M), torch.empty(B * H, chunk, D)

    def products():
        for i in range(0, N, chunk):
            torch.bmm(qc[:, i:i + chunk], kt, out=scores)
            torch.bmm(scores, vc, out=out)

    def softmax():
        for i in range(0, N, chunk):
            torch.softmax(scores, dim=-1)
    return {"attention": median_time(lambda: F.scaled_dot_product_attention(q, k, v), repeats),
            "products": median_time(products, repeats), "softmax": median_time(softmax, repeats)}


def main() -> None:
    from doc import machine, report
    from floor import setup

    from sumie.speed import packing
    args, model = setup()
    unet = packing.pack(model.unet)
    x, context = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768)
    with torch.no_grad():
        step_time, calls = timed_attention(lambda: unet(x, 500, encoder_hidden_states=context), args.repeats)
        ways = {shape: alone(*shape, args.repeats) for shape in calls}
    lines = [f"- Command: `python benchmarks/attention.py --repeats {args.repeats}` ({machine()}, torch "
             f"{torch.__version__}, float32, 2 threads, a guided 512² step packed, medians)", "",
             "| queries x keys, heads x width | calls per step | in the step | alone: torch's attention | "
             "its two products alone | softmax alone | GFLOP per call | attention GFLOP/s |", "|" + " --- |" * 8]
    total = {"step": 0.0, "attention": 0.0, "products": 0.0, "softmax": 0.0}
    for (q_shape, k_shape), (n, seconds) in sorted(calls.items(), key=lambda item: -item[1][1]):
        (B, H, N, D), M = q_shape, k_shape[2]
        gflop = 4 * B * H * N * M * D / 1e9
        way = ways[(q_shape, k_shape)]
        total["step"] += seconds
        for name in ("attention", "products", "softmax"):
            total[name] += n * way[name]
        lines.append(f"| {N} x {M}, {H} x {D} | {n} | {seconds * 1e3:.0f} ms | {way['attention'] * 1e3:.1f} ms | "
                     f"{way['products'] * 1e3:.1f} ms | {way['softmax'] * 1e3:.1f} ms | {gflop:.2f} | "
                     f"{gflop / way['attention']:.0f} |")
    lines.append(f"| all, per step | {sum(n for n, _ in calls.values())} | {total['step']:.2f} s "
                 f"({total['step'] / step_time:.0%} of the step's {step_time:.2f} s) | {total['attention']:.2f} s | "
                 f"{total['products']:.2f} s | {total['softmax']:.2f} s | | |")
    report(f"## Attention in a 512² step on {machine()} (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
