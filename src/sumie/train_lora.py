"""Train a LoRA for an SD 1/2 model on a folder of captioned images (`sumie train-lora`), saved as Kohya's
trainers save one, so that A1111, ComfyUI, diffusers and sumie load it as they load any LoRA.

- **Data** (Kohya's layout): DATA and its subfolders hold images, each beside a same-named .txt caption. An image
  with no caption takes its folder's name, less Kohya's repeat count ("10_sks dog" -> "sks dog"); a folder
  named "N_..." counts its images N times when images are drawn. Each image is resized so that its short side is
  `resolution`, centre-cropped to a square, and encoded once by the VAE (the posterior's mean, scaled).
- **The layer**: each targeted Linear / Conv2d weight W is parametrized as W + (alpha / rank) * up @ down
  (`LoRAWeight`), the update `lora.Update.delta` computes when a LoRA file is loaded. down starts Kaiming-uniform
  and up at zero, so training starts from the model as it is (Hu et al. 2021, sec. 4.1).
- **The step** (`step_loss`): the model's own objective, epsilon or v as its scheduler's prediction_type says
  (`training.diffusion_loss`), at timesteps drawn uniformly; AdamW on the LoRA's factors only.
- **Runs** are deterministic for a seed (every draw comes from a generator seeded by (seed, step)) and resumable
  from NAME.state.safetensors, written atomically every `save_every` steps with the loss log NAME.loss.tsv.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import InputError
from .lora import COMPONENTS, Update
from .training import (Captions, Progress, diffusion_loss, load_checkpoint, load_optimizer, optimize, optimizer_tensors,
                       save_checkpoint, step_generator)
from .weights.files import write_safetensors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TARGETS = {  # --targets -> (component, a pattern its layer names must match); Kohya's defaults are "transformer"
    "attention": [("unet", r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$")],
    "transformer": [("unet", r"attentions\.\d+\.")],  # every Linear / 1x1 Conv2d of the transformer blocks
}
TEXT_ENCODER_TARGET = ("text_encoder", r"(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")  # Kohya's CLIPAttention + MLP


@dataclass(frozen=True)
class Options:
    rank: int = 4
    alpha: float = 4.0
    lr: float = 1e-4
    steps: int = 500
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    targets: str = "attention"
    text_encoder: bool = False
    save_every: int = 100


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    image: Path
    caption: str
    folder: str  # its folder's name (Kohya's key for tag frequencies)
    repeats: int
    captioned: bool


def read_folder(data: str | Path) -> list[Example]:
    """DATA's images (subfolders too, sorted) and their captions, as the module docstring says."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"{data} is not a folder; give a folder of images with same-named .txt captions")
    examples = []
    for path in sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        repeats, name = re.match(r"(?:(\d+)_)?(.*)", path.parent.name).groups()
        text = path.with_suffix(".txt")
        caption = text.read_text(encoding="utf-8").strip() if text.is_file() else name
        examples.append(Example(path, caption, path.parent.name, int(repeats or 1), text.is_file()))
    if not examples:
        raise InputError(f"{data} holds no images ({', '.join(IMAGE_SUFFIXES)}); put the training images there, "
                         f"each with a same-named .txt caption")
    return examples


def fingerprint(data: Path, examples: list[Example]) -> str:
    """A digest of the dataset (each image's path under DATA, size, caption and repeats): a resumed run must see
    the same data, wherever the folder now is."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.image.relative_to(data).as_posix(), e.image.stat().st_size, e.caption,
                                  e.repeats]).encode())
    return digest.hexdigest()


def tag_frequency(examples: list[Example]) -> dict[str, dict[str, int]]:
    """{folder: {tag: images whose caption has it}}, tags being a caption's comma-separated parts (Kohya's
    ss_tag_frequency)."""
    out: dict[str, dict[str, int]] = {}
    for e in examples:
        counts = out.setdefault(e.folder, {})
        for tag in dict.fromkeys(t.strip() for t in e.caption.split(",") if t.strip()):
            counts[tag] = counts.get(tag, 0) + 1
    return out


def image_tensor(path: Path, resolution: int) -> torch.Tensor:
    """An image file -> (3, resolution, resolution) in [-1, 1]: short side resized, then centre-cropped."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = resolution / min(im.size)
        w, h = max(resolution, round(im.width * scale)), max(resolution, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.LANCZOS) if (w, h) != im.size else im
        left, top = (w - resolution) // 2, (h - resolution) // 2
        arr = np.asarray(im.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


@torch.no_grad()
def encode(vae, examples: list[Example], resolution: int, batch: int = 8) -> torch.Tensor:
    """(N, 4, resolution / f, resolution / f) scaled latents: the posterior means."""
    out = []
    for i in range(0, len(examples), batch):
        x = torch.stack([image_tensor(e.image, resolution) for e in examples[i:i + batch]])
        out.append(vae.encode(x.to(vae.dtype)).mean.float() * vae.config.scaling_factor)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------
# The LoRA layer
# ---------------------------------------------------------------------------------------------------
class LoRAWeight(nn.Module):
    """A parametrization W -> W + multiplier * (alpha / rank) * up @ down of a Linear's (out, in) or a 1x1
    Conv2d's (out, in, 1, 1) weight; down (rank, in[, 1, 1]), up (out, rank[, 1, 1])."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, *weight.shape[1:]))
        self.up = nn.Parameter(torch.zeros(weight.shape[0], rank, *weight.shape[2:]))
        nn.init.kaiming_uniform_(self.down, a=5 ** 0.5, generator=generator)  # nn.Linear's own initialisation
        self.alpha, self.multiplier = float(alpha), 1.0

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.down, "lora_up.weight": self.up, "alpha": torch.tensor(self.alpha)}

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = Update("", "", self.tensors()).delta(weight.shape)
        return weight + self.multiplier * delta.to(weight.dtype)


def targets(models: dict[str, nn.Module], options: Options) -> list[tuple[str, str, nn.Module]]:
    """(component, module path, layer) of every layer the options train."""
    rules = TARGETS[options.targets] + ([TEXT_ENCODER_TARGET] if options.text_encoder else [])
    found = [(component, name, m) for component, pattern in rules
             for name, m in models[component].named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d)) and re.search(pattern, name)
             and (isinstance(m, nn.Linear) or m.kernel_size == (1, 1))]
    for component, name, m in found:
        smallest = min(m.weight.shape[:2])
        if options.rank > smallest:
            raise InputError(f"--rank {options.rank} is larger than layer {component}.{name} "
                             f"({tuple(m.weight.shape[:2])}); use --rank {smallest} or less")
    return found


def attach(layers: list[tuple[str, str, nn.Module]], options: Options) -> dict[tuple[str, str], LoRAWeight]:
    """Parametrize every layer's weight with a fresh LoRAWeight, drawn from a generator seeded by the seed."""
    generator = torch.Generator().manual_seed(options.seed)
    out = {}
    for component, name, m in layers:
        m.weight.requires_grad_(False)
        lora = LoRAWeight(m.weight, options.rank, options.alpha, generator)
        parametrize.register_parametrization(m, "weight", lora)
        out[(component, name)] = lora
    return out


def detach(layers: list[tuple[str, str, nn.Module]]) -> None:
    """The layers' original weights back, unparametrized."""
    for _, _, m in layers:
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


def kohya_key(component: str, name: str) -> str:
    """Kohya's name of a layer: lora_unet_down_blocks_1_attentions_0_..._to_q, lora_te_text_model_encoder_..."""
    prefix, _, inner = COMPONENTS[component]
    return prefix[0] + (inner + name).replace(".", "_")


def kohya_tensors(loras: dict[tuple[str, str], LoRAWeight]) -> dict[str, torch.Tensor]:
    return {f"{kohya_key(c, n)}.{k}": v.detach().float().contiguous()
            for (c, n), lora in loras.items() for k, v in lora.tensors().items()}


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------
def step_loss(pipe, latents: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, options: Options, step: int,
              alpha_bar: torch.Tensor) -> torch.Tensor:
    """The loss of training step `step`: a batch drawn by weight (an image's repeats), noised at uniform
    timesteps, and the model's own objective on it."""
    generator, _ = step_generator(options.seed, "lora", step)
    index = torch.multinomial(weights, options.batch_size, replacement=True, generator=generator)
    return diffusion_loss(pipe.unet, pipe.text_encoder, latents[index], ids[index], generator, alpha_bar, 0.0,
                          pipe.scheduler.config["prediction_type"])


def alpha_bars(pipe) -> torch.Tensor:
    """(T,) the model's training noise schedule, alpha-bar_t (Ho et al. 2020, eq. 4)."""
    from .schedulers import parse_config
    from .schedulers.schedule import alphas_cumprod_for
    return alphas_cumprod_for(parse_config(dict(pipe.scheduler.config), pipe.scheduler.sampler_id))


def _same_run(options: Options) -> dict:
    """The options a resumed run must share with the saved state (more steps, or other save points, are fine)."""
    return {k: v for k, v in asdict(options).items() if k not in ("steps", "save_every")}


def train(model: str, data: str | Path, out: str | Path, options: Options = Options(), *, resume: bool = False,
          allow_pickle: bool = False, quiet: bool = False, say=print) -> Path:
    """Train a LoRA of `model` (a folder, hub-cache id, single file or "sumie-tiny") on DATA and write it to
    `out` (.safetensors, Kohya's format with ss_* metadata). Returns `out`."""
    from .auto import load_pipeline
    from .xl import StableDiffusionXLPipeline
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: give a .safetensors file name")
    if min(options.rank, options.steps, options.batch_size, options.save_every) < 1 or options.resolution < 8:
        raise InputError("--rank, --steps, --batch-size and --save-every must be at least 1, and --resolution at "
                         "least 8")
    if options.targets not in TARGETS:
        raise InputError(f"--targets {options.targets!r}: use {' or '.join(TARGETS)}")
    examples = read_folder(data)
    data_digest = fingerprint(Path(data), examples)
    pipe = load_pipeline(model, allow_pickle=allow_pickle)
    if isinstance(pipe, StableDiffusionXLPipeline):
        raise InputError(f"{model} is an SDXL model; train-lora trains SD 1.x and 2.x models")
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.requires_grad_(False)
    models = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    layers = targets(models, options)
    bare = [e for e in examples if not e.captioned]
    if bare:
        say(f"sumie: {len(bare)} of {len(examples)} images have no .txt caption; each takes its folder's name as "
            f"its caption, as Kohya's trainers do (for example {bare[0].image.name!r}: {bare[0].caption!r})")
    loras = attach(layers, options)
    factors = [p for lora in loras.values() for p in lora.parameters()]
    opt = torch.optim.AdamW(factors, lr=options.lr, weight_decay=0.01)
    state, log = out.with_suffix(".state.safetensors"), out.with_suffix(".loss.tsv")
    out.parent.mkdir(parents=True, exist_ok=True)
    start, rows = 0, ["step\tloss"]
    if resume and not state.is_file():
        say(f"sumie: --resume: there is no {state} yet, so training starts at step 0")
    if resume and state.is_file():
        tensors, meta = load_checkpoint(state)
        if _same_run(Options(**meta["options"])) != _same_run(options) or meta["data"] != data_digest:
            raise InputError(f"{state} was written with other options ({meta['options']}) or other data; start anew "
                             f"without --resume, or give the same options and images")
        with torch.no_grad():
            for (c, n), lora in loras.items():
                lora.down.copy_(tensors[f"{kohya_key(c, n)}.lora_down.weight"])
                lora.up.copy_(tensors[f"{kohya_key(c, n)}.lora_up.weight"])
        load_optimizer(opt, tensors)
        start = meta["step"]
        if log.is_file():
            rows = [r for r in log.read_text().splitlines() if not r[:1].isdigit() or int(r.split("\t")[0]) <= start]
    latents = encode(pipe.vae, examples, options.resolution)
    ids = Captions(pipe.tokenizer)([e.caption for e in examples])
    weights = torch.tensor([float(e.repeats) for e in examples])
    alpha_bar = alpha_bars(pipe)
    bar = Progress("train-lora", options.steps, start, quiet)
    try:
        for step in range(start, options.steps):
            loss = step_loss(pipe, latents, ids, weights, options, step, alpha_bar)
            optimize(opt, loss, options.lr, bar)
            rows.append(f"{step + 1}\t{loss.item():.6f}")
            if (step + 1) % options.save_every == 0 or step + 1 == options.steps:
                _write_text(log, "\n".join(rows) + "\n")
                save_checkpoint({**kohya_tensors(loras), **optimizer_tensors(opt)},
                                {"step": step + 1, "options": asdict(options), "data": data_digest},
                                state)
    finally:
        bar.close()
    metadata = training_metadata(pipe, model, examples, options, out)
    write_safetensors(kohya_tensors(loras), out, metadata, data_hash_key="sshs_model_hash")
    detach(layers)
    return out


def training_metadata(pipe, model: str, examples: list[Example], options: Options, out: Path) -> dict[str, str]:
    """Kohya's ss_* fields (strings), as A1111 and ComfyUI read them. No dates: a seed gives the same file."""
    from .weights import model_hash
    v2 = pipe.text_encoder.config.hidden_size == 1024
    dirs = {}
    for e in examples:
        dirs.setdefault(e.folder, {"n_repeats": e.repeats, "img_count": 0})["img_count"] += 1
    fields = {
        "ss_network_module": "networks.lora", "ss_network_dim": options.rank, "ss_network_alpha": options.alpha,
        "ss_network_args": {"targets": options.targets, "text_encoder": options.text_encoder},
        "ss_sd_model_name": Path(str(pipe.source)).name if model != "sumie-tiny" else model,
        "ss_sd_model_hash": model_hash(pipe.source), "ss_v2": v2, "ss_base_model_version": "sd_v2" if v2 else "sd_v1",
        "ss_v_parameterization": pipe.scheduler.config["prediction_type"] == "v_prediction",
        "ss_resolution": f"({options.resolution}, {options.resolution})", "ss_learning_rate": options.lr,
        "ss_unet_lr": options.lr, "ss_text_encoder_lr": options.lr if options.text_encoder else 0,
        "ss_max_train_steps": options.steps, "ss_steps": options.steps, "ss_batch_size_per_device": options.batch_size,
        "ss_seed": options.seed, "ss_num_train_images": sum(e.repeats for e in examples),
        "ss_dataset_dirs": dirs, "ss_tag_frequency": tag_frequency(examples), "ss_output_name": out.stem,
        "ss_optimizer": "torch.optim.AdamW(weight_decay=0.01)", "ss_lr_scheduler": "constant",
        "ss_training_comment": "sumie train-lora",
    }
    return {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()}  # True -> "True", as Kohya


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)
