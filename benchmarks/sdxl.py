"""sumie vs diffusers on the full SDXL base architecture (random weights): load, one UNet step, peak RSS.

    python benchmarks/sdxl.py [--sizes 512,1024] [--full-image] [--write]

Each library runs alone in its own process (peak RSS = that process's VmHWM, weights included): load the
folder, then for each size the UNet twice on a guided batch (2, 4, size/8, size/8) with the pooled text and
size numbers; the first call is the warm-up (sumie: its kernel choices for new shapes), the second is the
step's time.
`--full-image` also makes one 1024² image with sumie (1 Euler step, no guidance, attention slicing, VAE
in bands) and records its peak RSS. float32, 2 threads. The model folder (about 14 GB) is written once into
benchmarks/.cache/ from the published configs in tests/data. `--write` refreshes the "SDXL (issue 26)"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
lib, folder, sizes = sys.argv[1], sys.argv[2], [int(v) for v in sys.argv[3].split(",")]
out = {}
with torch.no_grad():
    start = time.perf_counter()
    if lib == "sumie":
        import sumie
        pipe = sumie.StableDiffusionXLPipeline.from_pretrained(folder)
    else:
        import diffusers
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    out["load (s)"] = time.perf_counter() - start
    for size in sizes:
        g = torch.Generator().manual_seed(0)
        x, ctx = torch.randn(2, 4, size // 8, size // 8, generator=g), torch.randn(2, 77, 2048, generator=g)
        cond = {"text_embeds": torch.randn(2, 1280, generator=g),
                "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2).float()}
        for name in (f"warm-up, {size}² (first UNet call, s)", f"UNet step, batch 2, {size}² (s)"):
            start = time.perf_counter()
            pipe.unet(x, torch.tensor(500), encoder_hidden_states=ctx, added_cond_kwargs=cond)
            out[name] = time.perf_counter() - start
out["peak RSS (GiB)"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 2**20
print(json.dumps(out))
"""

IMAGE = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
import sumie
start = time.perf_counter()
pipe = sumie.StableDiffusionXLPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
pipe.enable_attention_slicing()
pipe.enable_vae_tiling()
image = pipe("a lighthouse at dusk", num_inference_steps=1, guidance_scale=1.0, height=1024, width=1024,
             scheduler="euler", seed=0).images[0]
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 2**20
print(json.dumps({"1024² image, 1 step (s)": time.perf_counter() - start, "1024² image, peak RSS (GiB)": hwm,
                  "size": list(image.size)}))
"""


def write_model() -> Path:
    """The cached full-size SDXL base folder (diffusers' default random initialisation), written on first use."""
    folder = CACHE / "sdxl-random"
    if (folder / "model_index.json").exists():
        return folder
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sumie.tokenizer import write_vocab_files
    load = lambda name: json.loads((DATA / f"sdxl_{name}.json").read_text())
    torch.manual_seed(0)
    write_vocab_files(CACHE / "vocab")
    write_vocab_files(CACHE / "vocab2", pad_token="!")
    pipe = StableDiffusionXLPipeline(
        unet=UNet2DConditionModel.from_config(load("unet")), vae=AutoencoderKL.from_config(load("vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**load("text_encoder"))),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**load("text_encoder_2"))),
        tokenizer=CLIPTokenizer.from_pretrained(CACHE / "vocab"),
        tokenizer_2=CLIPTokenizer.from_pretrained(CACHE / "vocab2"),
        scheduler=EulerDiscreteScheduler.from_config(load("scheduler")))
    pipe.save_pretrained(folder)
    return folder


def run(code: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512", help="image sizes of the UNet step (default 512)")
    ap.add_argument("--full-image", action="store_true", help="also one 1024² image with sumie")
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    from doc import machine, report
    folder = write_model()
    results = {lib: run(CHILD, lib, folder, args.sizes) for lib in ("sumie", "diffusers")}
    import torch
    command = "python benchmarks/sdxl.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
    lines = [f"- Machine: {machine()}, 2 threads; torch {torch.__version__}; float32",
             f"- Command: `{command.strip()}`. Each library alone in its own process; the full SDXL base "
             f"architecture with random weights (UNet 2.6 B parameters, 10 GB in float32); the step is the "
             f"second UNet call on a guided batch of 2.", "",
             "| measure | diffusers | sumie | ratio |", "| --- | --- | --- | --- |"]
    for key in results["diffusers"]:
        a, b = results["sumie"][key], results["diffusers"][key]
        lines.append(f"| {key} | {b:.2f} | {a:.2f} | **{a / b:.2f}** |")
    if args.full_image:
        image = run(IMAGE, folder)
        lines += ["", f"- One 1024² image with sumie (1 Euler step, guidance 1, `enable_attention_slicing()`, "
                      f"`enable_vae_tiling()`): {image['1024² image, 1 step (s)']:.0f} s in all, peak RSS "
                      f"{image['1024² image, peak RSS (GiB)']:.1f} GiB on this 24 GB machine."]
    report("## SDXL (issue 26)", lines, args.write)


if __name__ == "__main__":
    main()
