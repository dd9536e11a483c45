"""LoRA on the full SD 1.5 architecture (random weights, written once by benchmarks/load.py): applying and removing
a rank-16 LoRA over every attention projection of the UNet and the text encoder, against diffusers'
load_lora_weights + fuse_lora (and unfuse + unload) in the same process, taking turns; and a UNet step with the
LoRA applied against one without.

    python benchmarks/lora.py [--repeats 3] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
RANK = 16


def write_lora(pipe, path: Path) -> int:
    """A Kohya-format LoRA over the attention projections; -> the number of layers it changes."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for prefix, model, inner in (("lora_unet_", pipe.unet, ""), ("lora_te_", pipe.text_encoder, "text_model.")):
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and any(p in name for p in ("to_q", "to_k", "to_v", "to_out", "_proj")):
                key = prefix + (inner + name).replace(".", "_")
                state[f"{key}.lora_down.weight"] = torch.randn(RANK, m.in_features, generator=g) * 0.01
                state[f"{key}.lora_up.weight"] = torch.randn(m.out_features, RANK, generator=g) * 0.01
                state[f"{key}.alpha"] = torch.tensor(float(RANK))
    save_file(state, path)
    return len(state) // 3


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    from doc import machine, report
    from load import CACHE, pipelines
    ours, theirs = pipelines()
    path = CACHE / "sd15-lora-r16.safetensors"
    layers = write_lora(ours, path)
    times = {k: [] for k in ("sumie apply", "sumie remove", "diffusers load + fuse", "diffusers unfuse + unload")}
    for i in range(args.repeats + 1):  # the first round warms up and is not counted
        rounds = {"sumie apply": lambda: ours.load_lora_weights(path), "sumie remove": ours.unload_lora_weights,
                  "diffusers load + fuse": lambda: (theirs.load_lora_weights(str(path)), theirs.fuse_lora()),
                  "diffusers unfuse + unload": lambda: (theirs.unfuse_lora(), theirs.unload_lora_weights())}
        for label, fn in rounds.items():
            seconds = timed(fn)
            if i:
                times[label].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    theirs = None  # its memory back before the steps
    x, t, ctx = torch.randn(2, 4, 32, 32), torch.tensor(500), torch.randn(2, 77, 768)
    step = {"without": [], "with": []}
    with torch.no_grad():
        for _ in range(args.repeats):  # taking turns, each after a warm-up call
            for label in ("without", "with"):
                if label == "with":
                    ours.load_lora_weights(path)
                ours.unet(x, t, encoder_hidden_states=ctx)
                step[label].append(timed(lambda: ours.unet(x, t, encoder_hidden_states=ctx)))
            ours.unload_lora_weights()
    step = {k: statistics.median(v) for k, v in step.items()}
    lines = [f"- Command: `python benchmarks/lora.py --repeats {args.repeats}` ({machine()}, torch {torch.__version__}, "
             f"float32, 2 threads; full SD 1.5 architecture, random weights; a rank-{RANK} LoRA over {layers} attention "
             f"projections of the UNet and text encoder; one process, the libraries taking turns, median of "
             f"{args.repeats})", "",
             "| | sumie (s) | diffusers (s) | ratio |", "| --- | --- | --- | --- |",
             f"| apply (sumie: load_lora_weights; diffusers: load_lora_weights + fuse_lora) | {med['sumie apply']:.2f} | "
             f"{med['diffusers load + fuse']:.2f} | {med['sumie apply'] / med['diffusers load + fuse']:.2f} |",
             f"| remove (sumie: unload_lora_weights; diffusers: unfuse_lora + unload_lora_weights) | "
             f"{med['sumie remove']:.3f} | {med['diffusers unfuse + unload']:.3f} | "
             f"{med['sumie remove'] / med['diffusers unfuse + unload']:.2f} |", "",
             f"- A guided UNet step at 256²: {step['without']:.2f} s without the LoRA, {step['with']:.2f} s with it "
             f"({step['with'] / step['without']:.2f}x): a LoRA lives in the weights, so it costs nothing per step."]
    report("## LoRA (issue 21)", lines, args.write)


if __name__ == "__main__":
    main()
