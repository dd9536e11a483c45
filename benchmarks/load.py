"""Load time and peak memory: sumie vs diffusers on the full SD 1.5 architecture with random weights.

    python benchmarks/load.py [--repeats 3]

The first run writes the model once into benchmarks/.cache/ through the oracles (a diffusers folder,
float32, random weights) and a single-file copy of it with `sumie convert`. Each load then runs in its
own process (so peak RSS is that library's alone), alternating sumie and diffusers; medians reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
DATA = ROOT / "tests" / "data"

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
lib, form, folder, single = sys.argv[1:5]
import sumie, diffusers  # imports are not part of the load time
start = time.perf_counter()
if lib == "sumie":
    pipe = sumie.StableDiffusionPipeline.from_pretrained(folder if form == "folder" else single)
else:
    if form == "folder":
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_single_file(single, config=folder, safety_checker=None,
                                                                  local_files_only=True)
seconds = time.perf_counter() - start
with torch.no_grad():  # then read every weight once (a lazily mapped file is read here)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        for p in module.parameters():
            p.sum()
touched = time.perf_counter() - start
# VmHWM: this process's peak resident set (ru_maxrss would include the parent's, inherited across exec)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "touched": touched, "peak_rss_gb": hwm / 2**20}))
"""


def write_model(single: bool = True) -> tuple[Path, Path] | Path:
    """The cached model folder, and (with `single`) its single-file copy; written on first use."""
    CACHE.mkdir(parents=True, exist_ok=True)
    folder, path = CACHE / "sd15-random", CACHE / "sd15-random.safetensors"
    if not (folder / "model_index.json").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        import torch
        from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        from sumie.tokenizer import write_vocab_files
        load = lambda name: json.loads((DATA / f"sd15_{name}.json").read_text())
        torch.manual_seed(0)
        write_vocab_files(CACHE / "vocab")
        pipe = StableDiffusionPipeline(
            unet=UNet2DConditionModel.from_config(load("unet")), vae=AutoencoderKL.from_config(load("vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig(**load("text_encoder"))),
            tokenizer=CLIPTokenizer.from_pretrained(CACHE / "vocab"), scheduler=PNDMScheduler.from_config(load("scheduler")),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(folder)
    if not single:
        return folder
    if not path.exists():
        from sumie.weights import convert
        convert(folder, path)
    return folder, path


def pipelines():
    """(sumie's, diffusers') pipelines of the cached full SD 1.5 folder, on 2 threads."""
    import torch
    torch.set_num_threads(2)
    import diffusers

    from sumie import StableDiffusionPipeline
    folder = write_model(single=False)
    ours = StableDiffusionPipeline.from_pretrained(folder)
    ours.set_progress_bar_config(disable=True)
    return ours, diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    folder, single = write_model()
    size_gb = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**30
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for form in ("folder", "single"):
            for lib in ("sumie", "diffusers"):
                out = subprocess.run([sys.executable, "-c", CHILD, lib, form, str(folder), str(single)],
                                     capture_output=True, text=True, check=True).stdout
                results.setdefault((lib, form), []).append(json.loads(out.strip().splitlines()[-1]))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "touched", "peak_rss_gb")} for k, v in results.items()}
    import torch
    lines = [f"- Model: full SD 1.5 architecture, random float32 weights, {size_gb:.2f} GiB of safetensors",
             f"- Command: `python benchmarks/load.py --repeats {args.repeats}` (torch {torch.__version__}; "
             f"each load in a fresh process after importing both libraries, page cache warm; median of {args.repeats})", "",
             "| form | sumie load (s) | diffusers load (s) | ratio | load + read all weights: sumie / diffusers (s) | "
             "sumie peak RSS (GiB) | diffusers peak RSS (GiB) | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for form in ("folder", "single"):
        a, b = med[("sumie", form)], med[("diffusers", form)]
        lines.append(f"| {form} | {a['seconds']:.2f} | {b['seconds']:.2f} | {a['seconds'] / b['seconds']:.2f} | "
                     f"{a['touched']:.2f} / {b['touched']:.2f} | {a['peak_rss_gb']:.2f} | {b['peak_rss_gb']:.2f} | {a['peak_rss_gb'] / b['peak_rss_gb']:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
