"""sumie against the CPU peers on the same model and machine, in the same run: OpenVINO (through optimum-intel, as
FastSD CPU and Intel's guides use it) and stable-diffusion.cpp, beside diffusers.

    python benchmarks/peers.py [--openvino-python VENV/bin/python] [--sdcpp-python VENV/bin/python] [--calls 3]
                               [--bf16] [--write]

Each peer lives in a virtualenv of its own (`pip install "sumie[bench]"` there): optimum-intel asks for another
torch than sumie's, and stable-diffusion-cpp-python is built from source by pip.
- OpenVINO's pipeline is exported once from benchmarks/.cache/sd15-random (the full SD 1.5 architecture, random
  weights; benchmarks/load.py) into benchmarks/.cache/sd15-random-openvino, with static 256² shapes, and runs
  with INFERENCE_PRECISION_HINT f32 (bf16 with `--bf16`).
- stable-diffusion.cpp reads the single file `sumie convert` writes of that folder (sd15-random.safetensors), at
  f32 and at q8_0 (8-bit weights, its usual), float32 run only: it has no bfloat16 compute on a CPU.

Measured: one image end to end, 256², Euler, 4 steps, guidance 7.5, 2 threads, float32 (sumie's `compile()`), or
with `--bf16` bfloat16 (sumie's `compile()` in bfloat16, diffusers and OpenVINO in bfloat16). Each library runs
in a process of its own and the calls take turns (A B C A B C ...), `--calls` timed calls each after one untimed
call; medians reported, with each process's peak RSS at the end. `--write` puts the table in docs/benchmarks.md,
in a section named after the CPU.
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

CHILD = r"""
import json, sys, time
lib, folder = sys.argv[1], sys.argv[2]
prompt, pipe = "a photograph of an astronaut riding a horse", None
if not lib.startswith("sdcpp"):  # no torch in stable-diffusion.cpp's virtualenv
    import torch
    torch.set_num_threads(2)
    kw = dict(prompt=prompt, num_inference_steps=4, height=256, width=256, guidance_scale=7.5, output_type="np")
    dtype = torch.bfloat16 if "-bf16" in lib else torch.float32
if lib.startswith("sdcpp"):
    from stable_diffusion_cpp import StableDiffusion
    sd = StableDiffusion(model_path=folder + ".safetensors", wtype=lib.split("-")[1], n_threads=2,
                         vae_decode_only=True, verbose=False)
    call = lambda: sd.generate_image(prompt, width=256, height=256, cfg_scale=7.5, sample_method="euler",
                                     sample_steps=4, seed=0)
elif lib.startswith("openvino"):
    from diffusers import EulerDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline
    config = {"INFERENCE_NUM_THREADS": "2", "INFERENCE_PRECISION_HINT": "bf16" if lib.endswith("-bf16") else "f32"}
    exported = folder + "-openvino"
    try:
        pipe = OVStableDiffusionPipeline.from_pretrained(exported, compile=False, ov_config=config)
    except Exception:
        pipe = OVStableDiffusionPipeline.from_pretrained(folder, export=True, compile=False, ov_config=config)
        pipe.save_pretrained(exported)
    pipe.reshape(batch_size=1, height=256, width=256, num_images_per_prompt=1)
    pipe.compile()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    call = lambda: pipe(**kw, generator=torch.Generator().manual_seed(0))
elif lib.startswith("diffusers"):
    import diffusers
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, torch_dtype=dtype)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    call = lambda: pipe(**kw, generator=torch.Generator().manual_seed(0))
else:  # sumie: compile(), in float32 or bfloat16
    import sumie, sumie.compat
    pipe = sumie.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).compile()
    pipe.scheduler = sumie.compat.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    call = lambda: pipe(**kw, seed=0)
if pipe is not None:
    pipe.set_progress_bar_config(disable=True)
call()  # untimed: warm-up, compilation, kernel choices
print("ready", flush=True)
for _ in sys.stdin:
    start = time.perf_counter()
    call()
    print(json.dumps(time.perf_counter() - start), flush=True)
print(json.dumps(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 2**20),
      flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--openvino-python", help="the python of a virtualenv with optimum-intel[openvino]")
    ap.add_argument("--sdcpp-python", help="the python of a virtualenv with stable-diffusion-cpp-python")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 instead of float32 (no stable-diffusion.cpp)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from doc import machine, write_section
    from load import write_model
    from sumie.speed.allocator import TUNABLES
    folder, _ = write_model()
    tag = "-bf16" if args.bf16 else ""
    pythons = {"sumie-compiled" + tag: sys.executable, "diffusers" + tag: sys.executable}
    if args.openvino_python:
        pythons["openvino" + tag] = args.openvino_python
    if args.sdcpp_python and not args.bf16:
        pythons.update({"sdcpp-f32": args.sdcpp_python, "sdcpp-q8_0": args.sdcpp_python})
    env = {lib: {"GLIBC_TUNABLES": TUNABLES} for lib in pythons if not lib.startswith("sumie")}
    procs = {}
    for lib, python in pythons.items():  # started one after the other: each loads and warms up alone
        procs[lib] = subprocess.Popen([python, "-c", CHILD, lib, str(folder)], text=True, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env={**os.environ, **env.get(lib, {})})
        line = procs[lib].stdout.readline()
        while line and line.strip() != "ready":
            line = procs[lib].stdout.readline()
        if not line:
            sys.exit(f"{lib} failed to start (its stderr is above)")
    times = {lib: [] for lib in procs}
    for _ in range(args.calls):
        for lib, p in procs.items():
            p.stdin.write("\n")
            p.stdin.flush()
            times[lib].append(json.loads(p.stdout.readline()))
    rss = {}
    for lib, p in procs.items():
        p.stdin.close()
        rss[lib] = json.loads(p.stdout.readline())
        p.wait()
    med = {lib: statistics.median(t) for lib, t in times.items()}
    names = {"sumie-compiled": "sumie `compile()`", "diffusers": "diffusers",
             "sumie-compiled-bf16": "sumie `compile()` bfloat16",
             "sdcpp-f32": "stable-diffusion.cpp f32", "sdcpp-q8_0": "stable-diffusion.cpp q8_0 (8-bit weights)",
             "openvino": "OpenVINO (optimum-intel, f32, static 256²)", "diffusers-bf16": "diffusers bfloat16",
             "openvino-bf16": "OpenVINO (optimum-intel, bf16, static 256²)"}
    base = "diffusers" + tag
    lines = [f"- Machine: {machine()}, 2 threads; {'bfloat16' if args.bf16 else 'float32'}; the full SD 1.5 "
             f"architecture, random weights.",
             f"- Command: `python benchmarks/peers.py"
             f"{' --openvino-python VENV/bin/python' * bool(args.openvino_python)}"
             f"{' --sdcpp-python VENV2/bin/python' * bool(args.sdcpp_python and not args.bf16)} --calls {args.calls}"
             f"{' --bf16' if args.bf16 else ''}`. "
             f"One image end to end, 256², Euler, 4 steps, guidance 7.5; each library in its own process, calls "
             f"taking turns, median of {args.calls}; peak RSS of each process at the end.", "",
             "| engine | end to end (s) | / diffusers | peak RSS (GiB) | / diffusers |",
             "| --- | --- | --- | --- | --- |"]
    for lib in procs:
        lines.append(f"| {names[lib]} | {med[lib]:.2f} | **{med[lib] / med[base]:.2f}** | {rss[lib]:.2f} | "
                     f"{rss[lib] / rss[base]:.2f} |")
    table = "\n".join(lines)
    print(table)
    print({lib: [round(t, 2) for t in ts] for lib, ts in times.items()}, file=sys.stderr)
    if args.write:
        write_section(f"## CPU peers{' in bfloat16' if args.bf16 else ''} on {machine()} (issue 24)", table)


if __name__ == "__main__":
    main()
