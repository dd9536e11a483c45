"""What A1111's prompt syntax costs: encoding time on the full SD 1.5 text encoder (random weights, written once
by benchmarks/load.py), text-encoder calls over a whole generation, and a UNet step with a two-chunk context.

    python benchmarks/prompts.py [--repeats 5] [--write]

diffusers' encode_prompt of the same 75-token prompt runs in the same process, taking turns with sumie's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHORT = "a photograph of an astronaut riding a horse on the moon " * 6  # 66 words, 66 tokens
LONG = "a (photograph:1.2) of an astronaut riding a [horse] on the moon " * 12  # 132 words: 2 chunks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    from doc import machine, report
    from floor import median_time as median
    from load import pipelines
    ours, theirs = pipelines()
    with torch.no_grad():
        times = {
            "diffusers encode_prompt, 66 tokens": median(
                lambda: theirs.encode_prompt(SHORT, "cpu", 1, True, ""), args.repeats),
            "sumie plain, 66 tokens": median(lambda: ours.encode_prompt(SHORT, ""), args.repeats),
            "sumie a1111, 66 tokens": median(lambda: ours.encode_prompt(SHORT, "", prompt_syntax="a1111"),
                                             args.repeats),
            "sumie a1111, 132 tokens with weights (2 chunks)": median(
                lambda: ours.encode_prompt(LONG, "", prompt_syntax="a1111"), args.repeats),
        }
        calls = []
        hook = ours.text_encoder.register_forward_hook(lambda m, a, out: calls.append(1))
        counts = {}
        for steps in (4, 20):
            calls.clear()
            ours(LONG, num_inference_steps=steps, height=64, width=64, seed=0, output_type="latent",
                 prompt_syntax="a1111")
            counts[steps] = len(calls)
        hook.remove()
        x, t = torch.randn(2, 4, 32, 32), torch.tensor(500)
        contexts = {k: torch.randn(2, 77 * k, 768) for k in (1, 2)}
        steps = {k: [] for k in contexts}
        for _ in range(args.repeats):  # the two contexts take turns
            for k, c in contexts.items():
                steps[k].append(median(lambda c=c: ours.unet(x, t, encoder_hidden_states=c), 1))
        steps = {k: statistics.median(v) for k, v in steps.items()}
    base = times["diffusers encode_prompt, 66 tokens"]
    lines = [f"- Command: `python benchmarks/prompts.py --repeats {args.repeats}` ({machine()}, torch "
             f"{torch.__version__}, float32, 2 threads; full SD 1.5 architecture, random weights; one process, "
             f"median of {args.repeats})", "",
             "| encoding a prompt and the empty negative prompt | seconds | / diffusers |", "| --- | --- | --- |"]
    lines += [f"| {label} | {s:.3f} | {s / base:.2f} |" for label, s in times.items()]
    lines += ["", f"- Text-encoder calls over a whole generation with the 2-chunk prompt: {counts[4]} at 4 steps, "
              f"{counts[20]} at 20 steps (one per chunk, and one for the empty negative prompt; none per step).",
              f"- A guided UNet step at 256² (the contexts taking turns): {steps[1]:.2f} s with a 77-token context, "
              f"{steps[2]:.2f} s with 154 tokens ({steps[2] / steps[1]:.2f}x); only cross-attention sees the length."]
    report("## Prompts (issue 20)", lines, args.write)


if __name__ == "__main__":
    main()
