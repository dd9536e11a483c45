"""Peak memory at 1024x1024 on CPU, and what tiling does to the image: full SD 1.5 architecture, random weights.

    python benchmarks/memory.py [--write]

Each measurement runs in its own process (peak RSS = that process's VmHWM, weights included):
- a whole 1024^2 generation (1 Euler step, guidance 7.5) with `enable_attention_slicing()` and
  `enable_vae_tiling()`, the issue's 8 GB case;
- the VAE decode of one 128^2 latent (a 1024^2 image): sumie's decoder in one call and `vae.decode`, which runs
  in bands of rows at this size; diffusers' plain and with `vae.enable_tiling()`. The mean and largest difference
  from the library's one-call decode are in 8-bit levels.
`--write` refreshes the "Memory at 1024²" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(2)
mode, folder, out = sys.argv[1:4]
start = time.perf_counter()
with torch.no_grad():
    if mode == "sumie pipeline":
        import sumie, sumie.compat
        pipe = sumie.StableDiffusionPipeline.from_pretrained(folder)
        pipe.scheduler = sumie.compat.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.enable_attention_slicing()
        pipe.enable_vae_tiling()
        image = pipe("a photograph of an astronaut riding a horse", num_inference_steps=1, height=1024, width=1024,
                     seed=0, output_type="np").images
    else:
        z = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(0))
        if mode.startswith("sumie"):
            from sumie.speed import bands
            from sumie.weights import load_model
            vae = load_model(folder).vae
            image = bands.decode(vae, z) if mode.endswith("bands") else vae.decoder(vae.post_quant_conv(z))
        else:
            import diffusers
            vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae")
            if mode.endswith("tiled"):
                vae.enable_tiling()
            image = vae.decode(z).sample
        image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
np.save(out, image)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gib": hwm / 2**20}))
"""

MODES = ["sumie pipeline", "sumie decode", "sumie decode in bands", "diffusers decode", "diffusers decode tiled"]
PLAIN = {"sumie decode in bands": "sumie decode", "diffusers decode tiled": "diffusers decode"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="refresh docs/benchmarks.md")
    args = ap.parse_args()
    from load import write_model
    folder, _ = write_model()
    results, images = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            out = Path(tmp) / (mode.replace(" ", "-") + ".npy")
            done = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(out)],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            images[mode] = np.load(out)
            print(mode, results[mode], file=sys.stderr)
    import torch
    lines = [f"- Command: `python benchmarks/memory.py` (torch {torch.__version__}, float32, 2 threads; "
             "each row its own process; peak RSS includes the weights)", "",
             "| run | peak RSS (GiB) | seconds | mean / max difference from the plain decode (levels) |",
             "| --- | --- | --- | --- |"]
    for mode in MODES:
        r, diff = results[mode], ""
        if mode in PLAIN:
            d = np.abs(images[mode] - images[PLAIN[mode]]) * 255
            diff = f"{d.mean():.4f} / {d.max():.2f}"
        label = {"sumie pipeline": "sumie 1024² generation, 1 step, attention slicing + VAE tiling",
                 "sumie decode": "sumie decode in one call (`vae.decoder`), 128² latent",
                 "sumie decode in bands": "sumie `vae.decode` (bands of rows from 512² up), 128² latent",
                 "diffusers decode tiled": "diffusers decode with `vae.enable_tiling()`, 128² latent"}.get(
                     mode, f"{mode}, 128² latent")
        lines.append(f"| {label} | {r['peak_rss_gib']:.2f} | {r['seconds']:.1f} | {diff} |")
    rss = {mode: r["peak_rss_gib"] for mode, r in results.items()}
    secs = {mode: r["seconds"] for mode, r in results.items()}
    levels = {mode: np.abs(images[mode] - images[PLAIN[mode]]) * 255 for mode in PLAIN}
    ours, theirs = levels["sumie decode in bands"], levels["diffusers decode tiled"]
    notes = [
        f"- The whole 1024² generation with attention slicing and VAE tiling peaks at {rss['sumie pipeline']:.2f} GiB "
        "(the issue asks for 8 GB).",
        f"- sumie's bands differ from its one-call decode by a mean of {ours.mean():.4f} levels (the issue allows "
        "≤ 1); `tests/test_options.py` checks the same at 512² and with one-row bands.",
        f"- diffusers' tiles differ from its plain decode by a mean of {theirs.mean():.2f} levels and up to "
        f"{theirs.max():.1f} at the seams, on these random weights.",
        f"- Bands take {secs['sumie decode in bands']:.1f} s against {secs['sumie decode']:.1f} s in one call, so "
        f"`vae.decode` uses them from 512² pixels up ({rss['sumie decode in bands']:.2f} GiB instead of "
        f"{rss['sumie decode']:.2f} here).",
        "- Exactness costs memory: each layer's input and output stay whole, where diffusers' independent tiles "
        f"need one tile's worth ({rss['diffusers decode tiled']:.2f} GiB). Within a resnet block the 1×1 shortcut "
        "writes its result into its own input's memory, band by band."]
    table = "\n".join(lines + [""] + notes)
    print(table)
    if args.write:
        from doc import write_section
        intro = ("Full SD 1.5 architecture with random weights (3.97 GiB of float32 safetensors, mapped). "
                 "sumie's VAE tiling runs each layer in bands of rows with whole-image GroupNorm statistics, so "
                 "it gives the plain decode's image; diffusers' tiles each normalise on their own.\n\n")
        write_section("## Memory at 1024² (issue 7)", intro + table)


if __name__ == "__main__":
    main()
