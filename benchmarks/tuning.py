"""Kernel tuning (`sumie.speed.tuning`): what it costs, what it chose on this machine, and by how much.

    python benchmarks/tuning.py [--write]

Full SD 1.5 architecture, random weights, float32, 2 threads, a cache folder of its own that starts empty.
For the eager pipeline and for `compile()` (packed), two processes one after the other: each times the first
and the second call of a guided UNet step (batch 2) at 256² and 512² and of a VAE decode at 256² and 512²
(bands from 512², as the pipeline decodes). In the first process the first call tunes; the second process
reads the choices from the cache. Then every tuned shape: each candidate's time on the tuning input (two
images, `sumie.speed.tuning.sample`) and the one kept. `--write` refreshes the section of docs/benchmarks.md
named after the machine's CPU ("Kernel tuning on ... (issue 24)").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
import sumie
from sumie.speed import tuning
from sumie.speed.memory import decode
folder, mode = sys.argv[1], sys.argv[2]
pipe = sumie.StableDiffusionPipeline.from_pretrained(folder)
if mode == "packed":
    pipe.compile()
ctx, t, out = torch.randn(2, 77, 768), torch.tensor(500), {}
calls = {}
for size in (256, 512):
    x, z = torch.randn(2, 4, size // 8, size // 8), torch.randn(1, 4, size // 8, size // 8)
    calls[f"UNet step {size}²"] = lambda x=x: pipe.unet(x, t, encoder_hidden_states=ctx)
    calls[f"VAE decode {size}²"] = lambda z=z: decode(pipe.vae, z, None)
with torch.no_grad():
    for name, call in calls.items():
        times = []
        for _ in range(2):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        out[name] = times
print(json.dumps({"calls": out, "timings": tuning.TUNER.timings, "choices": tuning.TUNER.choices}))
"""


def run(folder: Path, mode: str, cache: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode], capture_output=True, text=True,
                          env=dict(os.environ, SUMIE_CACHE_DIR=cache))
    if done.returncode:
        sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    import torch

    from doc import machine, report
    from load import write_model
    from sumie.speed import kernels, packing, tuning
    folder, _ = write_model()
    lines = [f"- Machine: {machine()}, 2 threads; torch {torch.__version__}; float32",
             "- Command: `python benchmarks/tuning.py`. Each mode: a first process with an empty cache (its first "
             "call of each shape tunes), then a second process reading the cache. Seconds of the first call / "
             "the second call.", "",
             "| mode | call | first process | second process | tuning cost |", "| --- | --- | --- | --- | --- |"]
    tuned = {}
    for mode in ("eager", "packed"):
        with tempfile.TemporaryDirectory() as cache:
            first, second = run(folder, mode, cache), run(folder, mode, cache)
        tuned[mode] = first
        for name, (a, b) in first["calls"].items():
            c, d = second["calls"][name]
            lines.append(f"| {mode} | {name} | {a:.2f} / {b:.2f} | {c:.2f} / {d:.2f} | {a - b:+.2f} s |")
        keys = len(first["timings"])
        lines.append(f"| {mode} | shapes tuned | {keys} | {len(second['timings'])} | |")
    lines += ["", "Every tuned shape with a call of at least "
              f"{tuning.MIN_SECONDS * 1e3:.0f} ms: each candidate's time on two images (ms; blank: dropped after "
              "one call that took over twice the best), **the one kept** (another than the reference only at "
              f"≤ {tuning.MARGIN} of its time, and again when the fastest and the reference are timed once more in "
              "turns: the confirmation).", ""]
    groups = {"eager 3x3": list(kernels.EAGER), "eager linear": list(kernels.LINEAR),
              "packed 3x3": list(packing.PACKED)}
    for group, names in groups.items():
        first = tuned[group.split()[0]]
        lines += [f"| {group} shape | " + " | ".join(names)
                  + " | confirmation: winner / reference | kept / reference |",
                  "| --- |" + " --- |" * (len(names) + 2)]
        saved = [0.0, 0.0]
        for key, took in sorted(first["timings"].items()):
            if not key.startswith(group + " ") or len(took) == 1:
                continue  # under MIN_SECONDS: the reference, untried
            kept = first["choices"][key]
            cells = [("" if n not in took else f"**{took[n] * 1e3:.1f}**" if n == kept else f"{took[n] * 1e3:.1f}")
                     for n in names]
            ref = took[names[0]]
            saved[0] += ref
            saved[1] += took[kept]
            again = [f"{took[tuning.AGAIN + n] * 1e3:.1f}" for n in names[1:] + names[:1] if tuning.AGAIN + n in took]
            lines.append(f"| {key.split(' ', 2)[2]} | " + " | ".join(cells) + f" | {' / '.join(again)} | "
                         f"{took[kept] / ref:.2f} |")
        lines += ["", f"- {group}: one call of each tuned shape takes {saved[1]:.2f} s by the kept algorithms against "
                      f"{saved[0]:.2f} s by the reference (**{saved[1] / max(saved[0], 1e-9):.2f}×**).", ""]
    report(f"## Kernel tuning on {machine()} (issue 24)", lines, args.write)


if __name__ == "__main__":
    main()
