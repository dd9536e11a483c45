"""GPU benchmark: full SD 1.5 architecture, fp16, 512², 50 guided steps; sumie eager, sumie compiled, diffusers.

    python benchmarks/gpu.py              # on a CUDA machine; finishes in a few minutes
    python benchmarks/gpu.py --tiny       # anywhere: the tiny test model on CPU, so the script never rots

Reports it/s (UNet steps per second, guided batch of 2), end-to-end seconds and peak device memory.
Record the numbers in docs/benchmarks.md with the card's name.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


def run(name, pipe, call, device, steps):
    call()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    print(f"| {name} | {steps / seconds:.2f} | {seconds:.2f} | {peak:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    import diffusers

    import sumie
    if args.tiny:
        from oracle import write_model_folder
        folder, device, dtype, size = write_model_folder(Path(tempfile.mkdtemp()) / "tiny"), torch.device("cpu"), \
            torch.float32, 64
        steps = args.steps or 4
    else:
        from load import write_model
        folder, device, dtype, size = write_model()[0], torch.device("cuda"), torch.float16, 512
        steps = args.steps or 50
    kw = dict(prompt="a photograph of an astronaut riding a horse", num_inference_steps=steps, height=size,
              width=size, output_type="np")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny model)"
    print(f"{name}, torch {torch.__version__}, {dtype}, {size}², {steps} steps\n")
    print("| run | it/s | end-to-end (s) | peak memory (GiB) |\n| --- | --- | --- | --- |")
    ours = sumie.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    ours.set_progress_bar_config(disable=True)
    run("sumie eager", ours, lambda: ours(**kw, scheduler="euler", seed=0), device, steps)
    ours.unet.to(memory_format=torch.channels_last)
    ours.compile(**({"mode": "max-autotune-no-cudagraphs"} if device.type == "cuda" else {}))
    run("sumie compiled", ours, lambda: ours(**kw, scheduler="euler", seed=0), device, steps)
    del ours
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None).to(device)
    theirs.scheduler = diffusers.EulerDiscreteScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    run("diffusers (SDPA)", theirs, lambda: theirs(**kw, generator=torch.Generator().manual_seed(0)), device, steps)


if __name__ == "__main__":
    main()
