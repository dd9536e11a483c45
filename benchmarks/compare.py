"""sumie vs diffusers on the full SD 1.5 architecture (random weights), same machine, same run.

    python benchmarks/compare.py [--repeats 3] [--compile] [--inductor] [--write]

Timings: diffusers and one sumie variant (eager, compiled, inductor) are loaded in one process and their
calls alternate (A B A B ...), `--repeats` timed calls each, so the machine's slow drifts hit both alike;
each variant has a process of its own with diffusers. Load time, warm-up and peak RSS: each library alone in its own process, `--repeats`
processes, medians reported. Ratios are sumie / diffusers. float32, guidance 7.5, 2 threads.
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
import json, statistics, sys, time
import torch
torch.set_num_threads(2)
mode, lib, folder, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import sumie, sumie.compat, diffusers
out = {}


def build(lib):
    start = time.perf_counter()
    if lib.startswith("sumie"):
        pipe = sumie.StableDiffusionPipeline.from_pretrained(folder)
        pipe.scheduler = sumie.compat.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    out.setdefault("load", time.perf_counter() - start)
    pipe.set_progress_bar_config(disable=True)
    if lib == "sumie-compiled":
        pipe.compile()  # on CPU: packed weights
    elif lib == "sumie-inductor":
        pipe.compile(backend="inductor")
    return pipe


def measures(lib, pipe):
    # name -> call; every call runs once untimed first (the first UNet call of a fast path is its warm-up)
    unet = pipe._compiled if lib == "sumie-inductor" else pipe.unet
    ids = pipe.tokenizer(["a photograph of an astronaut riding a horse"] * 2, padding="max_length", max_length=77,
                         truncation=True, return_tensors="pt").input_ids
    ctx = pipe.text_encoder(ids)[0]
    t = torch.tensor(500)
    calls = {"text encoding": lambda: pipe.text_encoder(ids)}
    for size in (256, 512):
        x, z = torch.randn(2, 4, size // 8, size // 8), torch.randn(1, 4, size // 8, size // 8)
        if lib != "sumie-inductor" or size == 256:  # inductor compiles per shape: 256² only
            calls[f"UNet step, batch 2, {size}²"] = lambda x=x: unet(x, t, encoder_hidden_states=ctx)
        if lib != "sumie-inductor":
            calls[f"VAE decode {size}²"] = lambda z=z: pipe.vae.decode(z)
    kw = dict(prompt="a photograph of an astronaut riding a horse", num_inference_steps=4, height=256, width=256,
              output_type="np")
    calls["end-to-end, 4 steps, 256²"] = lambda: pipe(**kw, generator=torch.Generator().manual_seed(0))
    return calls


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


with torch.no_grad():
    if mode == "alone":  # load, warm-up and peak RSS of one library in its own process
        pipe = build(lib)
        for name, fn in measures(lib, pipe).items():
            first = seconds(fn)
            if name == "UNet step, batch 2, 256²" and lib in ("sumie-compiled", "sumie-inductor"):
                out["warm-up (first UNet call)"] = first
        out["peak RSS (GiB)"] = next(int(l.split()[1]) for l in open("/proc/self/status")
                                     if l.startswith("VmHWM:")) / 2**20
    else:  # timings: the sumie variants in `lib` and diffusers in one process, their calls alternating
        libs = lib.split(",") + ["diffusers"]
        runs = {name: measures(name, build(name)) for name in libs}
        for name in runs[libs[0]]:
            have = [l for l in libs if name in runs[l]]
            for l in have:
                runs[l][name]()
            times = zip(*[[seconds(runs[l][name]) for l in have] for _ in range(calls)])  # per library
            out[name] = dict(zip(have, map(statistics.median, times)))
        out.pop("load")
print(json.dumps(out))
"""


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def run(mode: str, lib: str, folder, calls: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, lib, str(folder), str(calls)], capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"{mode} {lib} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="processes per library, and calls per timing")
    ap.add_argument("--compile", action="store_true", help="also measure sumie's fast path (pipe.compile())")
    ap.add_argument("--inductor", action="store_true", help="also measure pipe.compile(backend='inductor')")
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    from load import write_model
    folder, _ = write_model()
    mine = ["sumie"] + (["sumie-compiled"] if args.compile else []) + (["sumie-inductor"] if args.inductor else [])
    # each sumie variant in its own process with diffusers: all three pipelines together need about 20 GiB,
    # and on a 24 GiB machine the kernel then drops and re-reads sumie's memory-mapped weights
    groups = [[lib] for lib in mine]
    together = [(group, run("together", ",".join(group), folder, args.repeats)) for group in groups]
    paired = {lib: {k: [v[lib], v["diffusers"]] for k, v in times.items() if lib in v}
              for group, times in together for lib in group}
    alone = {lib: [] for lib in mine + ["diffusers"]}
    for _ in range(args.repeats):
        for lib in alone:
            alone[lib].append(run("alone", lib, folder, 0))
    med = {lib: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for lib, rs in alone.items()}
    import torch
    command = "python benchmarks/compare.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
    names = {"sumie": "sumie", "sumie-compiled": "sumie compile() (packed)",
             "sumie-inductor": "sumie compile(backend='inductor')"}
    lines = [f"- Machine: {cpu_name()}, 2 threads; torch {torch.__version__}; float32",
             f"- Command: `{command.strip()}`. Timings: diffusers and one sumie variant loaded in one process, "
             f"their calls alternating, median of {args.repeats} calls each after one untimed call; a process per "
             f"variant. Load, warm-up and peak RSS: each library alone in its own process, median of "
             f"{args.repeats} processes.", "",
             "| measure | diffusers | " + " | ".join(f"{names[lib]} | ratio" for lib in mine) + " |",
             "| --- | --- |" + " --- | --- |" * len(mine)]
    for key in ["load", *paired["sumie"], "peak RSS (GiB)", "warm-up (first UNet call)"]:
        unit = "" if "RSS" in key else " s"
        base = med["diffusers"].get(key) or paired["sumie"].get(key, [None, None])[1]
        row = f"| {key} | " + (f"{base:.2f}{unit} |" if base is not None else " |")
        for lib in mine:
            pair = paired[lib].get(key)
            a, b = (pair if pair else (med[lib].get(key), base))
            row += (" | |" if a is None else f" {a:.2f}{unit} | **{a / b:.2f}** |" if b else f" {a:.2f}{unit} | |")
        lines.append(row)
    table = "\n".join(lines)
    print(table)
    for lib, rs in alone.items():  # every single-process run
        print(f"{lib} alone: " + "; ".join(f"{k} " + "/".join(f"{r[k]:.2f}" for r in rs) for k in rs[0]),
              file=sys.stderr)
    for lib, pair in paired.items():
        print(f"{lib} against diffusers in its process: " + "; ".join(f"{k} {a:.2f} vs {b:.2f}"
                                                                       for k, (a, b) in pair.items()), file=sys.stderr)
    if args.write:
        from doc import write_section
        intro = ("Full SD 1.5 architecture, random weights, diffusers' own `from_pretrained` against sumie's on the "
                 "same folder. Timings exclude warm-up except where named. Every ratio is against diffusers' "
                 "eager time measured in the same process, calls alternating, so that the machine's slow "
                 "drifts (±15% or more between processes here) cancel.\n\n")
        write_section("## Engine (issue 7)", intro + table)


if __name__ == "__main__":
    main()
