"""sumie vs diffusers on the full SD 1.5 architecture (random weights), same machine, same run.

    python benchmarks/compare.py [--repeats 3] [--compile] [--inductor] [--write]

Each library runs in its own process per repeat (so peak RSS is its own), alternating sumie, diffusers,
(sumie compiled, sumie inductor); medians are reported, with ratios sumie / diffusers. float32, guidance 7.5, 2 threads.
`--write` refreshes the "Engine" section of docs/benchmarks.md. The model is written once into
benchmarks/.cache/ by benchmarks/load.py's `write_model`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
lib, folder = sys.argv[1], sys.argv[2]
import sumie, sumie.compat, diffusers
out = {}

def timed(name, fn, warm=True):
    if warm:
        fn()
    start = time.perf_counter()
    fn()
    out[name] = time.perf_counter() - start

start = time.perf_counter()
if lib.startswith("sumie"):
    pipe = sumie.StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = sumie.compat.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
else:
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
out["load"] = time.perf_counter() - start
pipe.set_progress_bar_config(disable=True)
if lib == "sumie-compiled":
    pipe.compile()  # on CPU: packed weights
elif lib == "sumie-inductor":
    pipe.compile(backend="inductor")
unet = pipe._compiled if lib == "sumie-inductor" else pipe.unet
fast = lib in ("sumie-compiled", "sumie-inductor")
ids = pipe.tokenizer(["a photograph of an astronaut riding a horse"] * 2, padding="max_length", max_length=77,
                     truncation=True, return_tensors="pt").input_ids
with torch.no_grad():
    timed("text encoding", lambda: pipe.text_encoder(ids))
    ctx = pipe.text_encoder(ids)[0]
    for size in (256, 512):
        x = torch.randn(2, 4, size // 8, size // 8)
        t = torch.tensor(500)
        if lib == "sumie-inductor" and size == 512:
            continue
        start = time.perf_counter()
        unet(x, t, encoder_hidden_states=ctx)
        if fast and size == 256:
            out["warm-up (first UNet call)"] = time.perf_counter() - start
        timed(f"UNet step, batch 2, {size}²", lambda: unet(x, t, encoder_hidden_states=ctx), warm=False)
        if lib != "sumie-inductor":
            z = torch.randn(1, 4, size // 8, size // 8)
            decode = pipe.vae.decode
            timed(f"VAE decode {size}²", lambda: decode(z))
kw = dict(prompt="a photograph of an astronaut riding a horse", num_inference_steps=4, height=256, width=256,
          output_type="np", generator=torch.Generator().manual_seed(0))
timed("end-to-end, 4 steps, 256²", lambda: pipe(**kw))
out["peak RSS (GiB)"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 2**20
print(json.dumps(out))
"""


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also measure sumie's fast path (pipe.compile())")
    ap.add_argument("--inductor", action="store_true", help="also measure pipe.compile(backend='inductor')")
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    from load import write_model
    folder, _ = write_model()
    libs = ["sumie", "diffusers"] + (["sumie-compiled"] if args.compile else []) + (
        ["sumie-inductor"] if args.inductor else [])
    runs: dict[str, list[dict]] = {lib: [] for lib in libs}
    for _ in range(args.repeats):
        for lib in libs:
            done = subprocess.run([sys.executable, "-c", CHILD, lib, str(folder)], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{lib} run failed:\n{done.stderr[-3000:]}")
            runs[lib].append(json.loads(done.stdout.strip().splitlines()[-1]))
    med = {lib: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for lib, rs in runs.items()}
    import torch
    command = "python benchmarks/compare.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
    extra = {"sumie-compiled": "compile() (packed)", "sumie-inductor": "compile(backend='inductor')"}
    extra = {lib: name for lib, name in extra.items() if lib in med}
    lines = [f"- Machine: {cpu_name()}, 2 threads; torch {torch.__version__}; float32",
             f"- Command: `{command.strip()}` (median of {args.repeats}; each library in its own process)", "",
             "| measure | sumie | diffusers | sumie / diffusers |" + "".join(f" sumie {n} | ratio |" for n in extra.values()),
             "| --- | --- | --- | --- |" + " --- | --- |" * len(extra)]
    keys = list(med["diffusers"]) + ["warm-up (first UNet call)"] * bool(extra)
    for key in keys:
        unit = "" if "RSS" in key else " s"
        a, b = med["sumie"].get(key), med["diffusers"].get(key)
        row = f"| {key} | " + (f"{a:.2f}{unit} | {b:.2f}{unit} | **{a / b:.2f}** |" if b is not None else " | | |")
        for lib in extra:
            c = med[lib].get(key)
            row += (f" {c:.2f}{unit} | " + (f"**{c / b:.2f}** |" if b is not None else " |")) if c is not None else " | |"
        lines.append(row)
    table = "\n".join(lines)
    print(table)
    for lib, rs in runs.items():  # every run, to judge the noise
        print(f"{lib}: " + "; ".join(f"{k} " + "/".join(f"{r[k]:.2f}" for r in rs) for k in rs[0]), file=sys.stderr)
    if args.write:
        from doc import write_section
        intro = ("Full SD 1.5 architecture, random weights, diffusers' own `from_pretrained` against sumie's on the "
                 "same folder. Timings exclude warm-up except where named; ratios are against diffusers' eager "
                 "time.\n\n")
        write_section("## Engine (issue 7)", intro + table)


if __name__ == "__main__":
    main()
