"""sumie vs diffusers on the full SD 1.5 architecture (random weights), same machine, same run.

    python benchmarks/compare.py [--repeats 3] [--calls 5] [--compile] [--inductor] [--bf16] [--glibc-defaults]
                                 [--avx2] [--sizes 256,512] [--alone-only] [--write]

Timings: one sumie variant (eager, compiled, inductor) and diffusers each run in a process of their own,
and their calls take turns (A B A B ...), `--calls` timed calls each, so the machine's slow drifts hit both
alike while neither library's memory allocator state touches the other's. Each variant has its own
diffusers process. diffusers runs with the glibc malloc settings that sumie sets in its own process
(`sumie.speed.allocator`), so the ratios compare the engines; `--glibc-defaults` runs it with glibc as it comes,
as a diffusers user gets it. Load time, warm-up and peak RSS: each library alone in its own process,
`--repeats` processes, medians reported. Ratios are sumie / diffusers. float32, guidance 7.5, 2 threads.
`--avx2` caps torch's, oneDNN's and MKL's kernels at AVX2 in every process: issue 7's targets name an AVX2
machine, and this one has AVX-512. `--bf16` adds sumie in bfloat16 (and with `--compile`, `compile()` in
bfloat16) against diffusers in bfloat16 (both `torch_dtype=torch.bfloat16`). `--sizes 256` measures the UNet
and VAE at 256² only. `--alone-only` measures only load, warm-up and peak RSS, and prints them. `--write`
refreshes the section of docs/benchmarks.md named after the machine's CPU ("Engine on ... (issue 24)"): one per
CPU model. The model is written once into benchmarks/.cache/ by benchmarks/load.py's `write_model`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from sumie.speed.allocator import TUNABLES  # noqa: E402  (sumie's malloc settings, for diffusers' processes)

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(2)
mode, lib, folder, sizes = sys.argv[1], sys.argv[2], sys.argv[3], [int(v) for v in sys.argv[4].split(",")]
import sumie, sumie.compat, diffusers
from sumie.speed.memory import decode
out = {}


DTYPE = torch.bfloat16 if lib.endswith("-bf16") else torch.float32


def build(lib):
    start = time.perf_counter()
    if lib.startswith("sumie"):
        pipe = sumie.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=DTYPE)
        pipe.scheduler = sumie.compat.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, torch_dtype=DTYPE)
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    out.setdefault("load", time.perf_counter() - start)
    pipe.set_progress_bar_config(disable=True)
    if lib.startswith("sumie-compiled"):
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
    ctx = ctx.to(DTYPE)
    for size in sizes:
        x, z = (torch.randn(b, 4, size // 8, size // 8, dtype=DTYPE) for b in (2, 1))
        if lib != "sumie-inductor" or size == 256:  # inductor compiles per shape: 256² only
            calls[f"UNet step, batch 2, {size}²"] = lambda x=x: unet(x, t, encoder_hidden_states=ctx)
        if lib != "sumie-inductor":
            calls[f"VAE decode {size}²"] = (lambda z=z: decode(pipe.vae, z, None)) if lib.startswith("sumie") \
                else (lambda z=z: pipe.vae.decode(z))  # sumie's as its pipeline decodes: bands from 512²
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
            if name == "UNet step, batch 2, 256²":  # sumie: kernel choices read from the cache (not the first process)
                out["warm-up (first UNet call)"] = first
        out["peak RSS (GiB)"] = next(int(l.split()[1]) for l in open("/proc/self/status")
                                     if l.startswith("VmHWM:")) / 2**20
    else:  # "serve": timings, driven call by call from the parent (one line per call: the measure's name)
        pipe = build(lib)
        runs = measures(lib, pipe)
        print(json.dumps(list(runs)), flush=True)
        for name in sys.stdin:  # answer: [seconds, minor page faults] of the call
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            took = seconds(runs[name.strip()])
            print(json.dumps([took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults]), flush=True)
        sys.exit(0)
print(json.dumps(out))
"""


# caps torch's own kernels, oneDNN's and MKL's at AVX2 (the machine issue 7's targets name) on a CPU with more
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


SIZES = "256,512"  # --sizes, passed to every child


def env(lib: str, glibc_defaults: bool) -> dict:
    """diffusers runs with sumie's malloc settings (sumie.speed.allocator) unless `glibc_defaults`."""
    if lib == "diffusers" and not glibc_defaults:
        return dict(os.environ, GLIBC_TUNABLES=TUNABLES)
    return dict(os.environ)


def run(mode: str, lib: str, folder, glibc_defaults: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, lib, str(folder), SIZES], capture_output=True,
                          text=True, env=env(lib, glibc_defaults))
    if done.returncode:
        sys.exit(f"{mode} {lib} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def lockstep(procs: dict[str, tuple[str, dict]], folder, calls: int, only=None) -> dict:
    """{measure: {label: (median seconds, median minor page faults)}} for processes {label: (lib, environment)}:
    loaded one after the other, then each measure (those in `only`, if given) called once untimed in each, then
    `calls` timed calls taking turns (A B A B ...)."""
    running, names = {}, {}
    for label, (lib, environment) in procs.items():
        running[label] = subprocess.Popen([sys.executable, "-c", CHILD, "serve", lib, str(folder), SIZES], text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment)
        line = running[label].stdout.readline()
        if not line:
            sys.exit(f"{label} failed to start (its stderr is above)")
        names[label] = json.loads(line)
    call = lambda label, name: (running[label].stdin.write(name + "\n"), running[label].stdin.flush(),
                                json.loads(running[label].stdout.readline()))[-1]
    out = {}
    last = names[list(procs)[-1]]  # put diffusers last: it has every measure
    for name in [n for n in last if only is None or n in only]:
        have = [label for label in procs if name in names[label]]
        for label in have:
            call(label, name)
        answers = zip(*[[call(label, name) for label in have] for _ in range(calls)])
        out[name] = {label: tuple(map(statistics.median, zip(*a))) for label, a in zip(have, answers)}
    for p in running.values():
        p.stdin.close()
        p.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="processes per library for load, warm-up and RSS")
    ap.add_argument("--calls", type=int, default=5, help="timed calls per library and measure")
    ap.add_argument("--compile", action="store_true", help="also measure sumie's fast path (pipe.compile())")
    ap.add_argument("--inductor", action="store_true", help="also measure pipe.compile(backend='inductor')")
    ap.add_argument("--bf16", action="store_true", help="also measure sumie against diffusers, both in bfloat16")
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="run diffusers with glibc's malloc as it comes, not with sumie's settings (sumie.speed.allocator)")
    ap.add_argument("--avx2", action="store_true",
                    help="cap every process's vector instructions at AVX2; --write then refreshes its own section")
    ap.add_argument("--sizes", default="256,512", help="image sizes of the UNet and VAE measures (default 256,512)")
    ap.add_argument("--alone-only", dest="alone_only", action="store_true",
                    help="only load, warm-up and peak RSS (each library alone in its own process); prints, never writes")
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    global SIZES
    SIZES = args.sizes
    from doc import machine, write_section
    cpu = machine() + (", capped at AVX2 (--avx2)" if args.avx2 else "")  # before the cap: what the CPU has
    if args.avx2:
        os.environ.update(AVX2)  # the children inherit it
    from load import write_model
    folder, _ = write_model()
    mine = ["sumie"] + (["sumie-compiled"] if args.compile else []) + (["sumie-inductor"] if args.inductor else []) \
        + (["sumie-bf16"] if args.bf16 else []) \
        + (["sumie-compiled-bf16"] if args.bf16 and args.compile else [])
    # each sumie variant takes turns with a diffusers process of its own: all of them at once would need
    # more than this 24 GiB machine has, and the kernel would drop and re-read sumie's memory-mapped weights
    partner = lambda lib: "diffusers-bf16" if lib.endswith("-bf16") else "diffusers"  # the diffusers it runs against
    if args.alone_only:
        for lib in mine + ["diffusers"]:
            for _ in range(args.repeats):
                print(f"{lib} alone: {json.dumps(run('alone', lib, folder, args.glibc_defaults))}", flush=True)
        return
    pairs = {lib: lockstep({lib: (lib, env(lib, args.glibc_defaults)),
                            "diffusers": (partner(lib), env("diffusers", args.glibc_defaults))}, folder, args.calls)
             for lib in mine}
    paired = {lib: {k: [v[lib][0], v["diffusers"][0]] for k, v in pairs[lib].items() if lib in v} for lib in mine}
    alone = {lib: [] for lib in mine + ["diffusers"] + (["diffusers-bf16"] if args.bf16 else [])}
    for _ in range(args.repeats):
        for lib in alone:
            alone[lib].append(run("alone", lib, folder, args.glibc_defaults))
    med = {lib: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for lib, rs in alone.items()}
    import torch
    command = "python benchmarks/compare.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
    names = {"sumie": "sumie", "sumie-compiled": "sumie compile() (packed)",
             "sumie-inductor": "sumie compile(backend='inductor')",
             "sumie-bf16": "sumie bfloat16 (vs diffusers bfloat16)",
             "sumie-compiled-bf16": "sumie compile() bfloat16 (vs diffusers bfloat16)"}
    lines = [f"- Machine: {cpu}, 2 threads; torch {torch.__version__}; float32"
             + (" (bfloat16 where named)" if args.bf16 else ""),
             f"- Command: `{command.strip()}`. Timings: diffusers and one sumie variant each in a process of its "
             f"own, their calls taking turns, median of {args.calls} calls each after one untimed call; a "
             f"diffusers process per variant. diffusers' malloc: "
             + ("glibc's defaults" if args.glibc_defaults else "sumie's settings (`sumie.speed.allocator`)")
             + f". Load, warm-up and peak RSS: each library alone in its own process, median of {args.repeats} "
             f"processes. The diffusers column is the process that took turns with sumie; other variants name "
             f"their own.", "",
             "| measure | diffusers | " + " | ".join(f"{names[lib]} | ratio" for lib in mine) + " |",
             "| --- | --- |" + " --- | --- |" * len(mine)]
    for key in ["load", *paired["sumie"], "peak RSS (GiB)", "warm-up (first UNet call)"]:
        unit = "" if "RSS" in key else " s"
        base = med["diffusers"].get(key) or paired["sumie"].get(key, [None, None])[1]
        row = f"| {key} | " + (f"{base:.2f}{unit} |" if base is not None else " |")
        for lib in mine:
            pair = paired[lib].get(key)
            a, b = (pair if pair else (med[lib].get(key), med[partner(lib)].get(key, base)))
            against = f" (diffusers {b:.2f}{unit})" if pair and lib != mine[0] else ""  # its own diffusers process
            row += (" | |" if a is None else f" {a:.2f}{unit}{against} | **{a / b:.2f}** |" if b
                    else f" {a:.2f}{unit} | |")
        lines.append(row)
    table = "\n".join(lines)
    print(table)
    for lib, rs in alone.items():  # every single-process run
        print(f"{lib} alone: " + "; ".join(f"{k} " + "/".join(f"{r[k]:.2f}" for r in rs) for k in rs[0]),
              file=sys.stderr)
    for lib, pair in paired.items():
        print(f"{lib} against its diffusers process: " + "; ".join(f"{k} {a:.2f} vs {b:.2f}"
                                                                       for k, (a, b) in pair.items()), file=sys.stderr)
    if args.write:
        intro = ("Full SD 1.5 architecture, random weights, diffusers' own `from_pretrained` against sumie's on the "
                 "same folder. Timings exclude warm-up except where named. Every ratio is against diffusers' "
                 "eager time measured in the same run, calls taking turns between the two processes, so that "
                 "the machine's slow drifts (±15% or more) hit both.\n\n")
        write_section(f"## Engine on {cpu} (issue 24)", intro + table)


if __name__ == "__main__":
    main()
