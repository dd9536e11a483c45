"""Train sumie-tiny from scratch on a CPU: first the VAE, then the text encoder and UNet together.

The networks are sumie's own (`sumie.vae`, `sumie.text_encoder`, `sumie.unet`), configured small; the
result is an ordinary diffusers folder. Recipe, after Rombach et al. 2022 (latent diffusion):

1. VAE (sec. 3), f=4 (64x64 -> 4x16x16): L1 + MSE reconstruction with the shape's pixels weighted
   10x (they are 6-25% of an image), and a small KL term, so latents are nearly deterministic. The
   log-variance starts at -10: an initial latent noise of std 1 would drown the signal for hundreds
   of steps.
2. Latents of every training image are cached once; `scaling_factor` = 1 / their std (sec. 4.3.2).
   The decoder is then refined on them with the weight spread evenly over each shape's edges
   (`decoder_loss`); the encoder, and so every latent, stays as it was.
3. Text encoder + UNet: epsilon prediction (Ho et al. 2020, eq. 14) on SD's scaled-linear schedule,
   Min-SNR-5 loss weights (Hang et al. 2023, eq. 9), captions dropped 10% of the time for
   classifier-free guidance (Ho & Salimans 2022), AdamW with warm-up and cosine decay, EMA weights.

Every stage is deterministic for the seed: step k draws its batch from a generator seeded with
(seed, stage, k), so a run resumed from its last checkpoint continues exactly as if never stopped.
Checkpoints are safetensors + JSON (no pickles), written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TINY
from ..schedulers import parse_config
from ..schedulers.schedule import alphas_cumprod_for
from ..text_encoder import CLIPTextModel
from ..tokenizer import CLIPTokenizer
from ..training import (Captions, Progress, diffusion_loss, load_checkpoint, load_optimizer, lr_at, optimize,
                        optimizer_tensors, save_checkpoint, step_generator)
from ..unet import UNet2DConditionModel
from ..vae import AutoencoderKL
from .data import Scene, all_scenes, training_caption

@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    vae_steps: int = 5000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    shape_weight: float = 10.0
    decoder_steps: int = 1500
    decoder_lr: float = 1e-3
    unet_steps: int = 3000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    uncond_prob: float = 0.1
    min_snr: float = 0.0  # > 0: Min-SNR-gamma loss weights; 0: plain MSE on the prediction target
    prediction_type: str = "v_prediction"
    checkpoint_every: int = 250
    threads: int = 0  # 0: torch's default


# ---------------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------------
def images_tensor(scenes: list[Scene]) -> torch.Tensor:
    """(N, 3, 64, 64) in [-1, 1]."""
    arr = np.stack([s.render() for s in scenes]).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for name, p in model.named_parameters():
        ema[name].lerp_(p.detach(), 1 - decay)


# ---------------------------------------------------------------------------------------------------
# Stage 1: the VAE
# ---------------------------------------------------------------------------------------------------
def vae_loss(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator, kl_weight: float,
             shape_weight: float) -> torch.Tensor:
    """Reconstruction (L1 + MSE, pixels of the shape weighted up: they are a few % of the image) + KL."""
    post = vae.encode(x)
    y = vae.decode(post.sample(generator))
    kl = 0.5 * (post.mean ** 2 + post.std ** 2 - 1 - post.logvar).sum((1, 2, 3)).mean()
    return weighted_error(y, x, 1 + (shape_weight - 1) * shape_mask(x)) + kl_weight * kl


def train_vae(recipe: Recipe, out: Path, log, quiet: bool = False, device: str = "cpu",
              stop: int | None = None) -> AutoencoderKL:
    """Train (or resume) the VAE; `stop` ends this call early at that step, as an interruption would."""
    steps = recipe.vae_steps
    path = out / "vae.safetensors"
    torch.manual_seed(recipe.seed)
    vae = AutoencoderKL(TINY.vae)
    with torch.no_grad():  # start with std ~ 0.007: latent noise of std 1 would drown the signal at first
        vae.quant_conv.bias[vae.config.latent_channels:] = -10.0
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    start = 0
    if path.exists():
        tensors, meta = load_checkpoint(path)
        vae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer(opt, tensors)
        start = meta["step"]
    vae.to(device)
    if start >= steps:
        return vae.eval()
    images = images_tensor(all_scenes()).to(device)
    bar = Progress("vae", steps, start, quiet)
    vae.train()
    for step in range(start, min(steps, stop or steps)):
        g, _ = step_generator(recipe.seed, "vae", step)
        batch = images[torch.randint(len(images), (recipe.vae_batch,), generator=g).to(device)]
        loss = vae_loss(vae, batch, g, recipe.kl_weight, recipe.shape_weight)
        optimize(opt, loss, lr_at(step, steps, recipe.vae_lr, recipe.warmup), bar)
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == steps:
            log({"stage": "vae", "step": step + 1, "loss": round(bar.loss, 5)})
            save_checkpoint({**{f"model.{k}": v for k, v in vae.state_dict().items()}, **optimizer_tensors(opt)},
                         {"step": step + 1}, path)
    bar.close()
    return vae.eval()


def shape_mask(x: torch.Tensor, grow: int = 0) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, 1, H, W) float mask of pixels not of the corner's colour, grown by `grow` px."""
    mask = (x != x[:, :, :1, :1]).any(1, keepdim=True).float()
    return F.max_pool2d(mask, 2 * grow + 1, stride=1, padding=grow) if grow else mask


def weighted_error(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    err = y - x
    return (weight * (err.abs() + err ** 2)).mean()


# ---------------------------------------------------------------------------------------------------
# Stage 2: the decoder again, encoder frozen
# ---------------------------------------------------------------------------------------------------
def decoder_loss(vae: AutoencoderKL, z: torch.Tensor, x: torch.Tensor, weight: float) -> torch.Tensor:
    """Stage 1 weights the shape's own pixels, which rewards painting past its edges (a background pixel
    wrongly painted costs 1, a shape pixel missed costs `weight`): small circles come out square. Here
    the weight covers the shape and 2 px around it, so both kinds of edge error cost the same."""
    return weighted_error(vae.decode(z), x, 1 + (weight - 1) * shape_mask(x, grow=2))


def train_decoder(recipe: Recipe, out: Path, vae: AutoencoderKL, latents: torch.Tensor, images: torch.Tensor, log,
                  quiet: bool = False, device: str = "cpu", stop: int | None = None) -> AutoencoderKL:
    """Refine the decoder (and post_quant_conv) on the cached latents; the encoder, hence every latent
    the UNet learns, is unchanged."""
    steps, path = recipe.decoder_steps, out / "decoder.safetensors"
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=recipe.decoder_lr, weight_decay=0.0)
    start = 0
    if path.exists():
        tensors, meta = load_checkpoint(path)
        vae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
        load_optimizer(opt, tensors)
        start = meta["step"]
    vae.to(device)
    bar = Progress("decoder", steps, start, quiet) if start < steps else None
    for step in range(start, min(steps, stop or steps)):
        g, _ = step_generator(recipe.seed, "decoder", step)
        index = torch.randint(len(images), (recipe.vae_batch,), generator=g).to(device)
        loss = decoder_loss(vae, latents[index], images[index], recipe.shape_weight)
        optimize(opt, loss, lr_at(step, steps, recipe.decoder_lr, recipe.warmup), bar)
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == steps:
            log({"stage": "decoder", "step": step + 1, "loss": round(bar.loss, 5)})
            state = {f"model.{k}": v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant"))}
            save_checkpoint({**state, **optimizer_tensors(opt)}, {"step": step + 1}, path)
    if bar:
        bar.close()
    return vae.eval()


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N, 3, 64, 64) -> (N, 4, 16, 16) posterior means, unscaled."""
    return torch.cat([vae.encode(images[i:i + batch]).mean for i in range(0, len(images), batch)])


# ---------------------------------------------------------------------------------------------------
# Stage 2: text encoder + UNet
# ---------------------------------------------------------------------------------------------------
def train_unet(recipe: Recipe, out: Path, latents: torch.Tensor, log, quiet: bool = False, device: str = "cpu",
               stop: int | None = None) -> tuple[CLIPTextModel, UNet2DConditionModel]:
    """Train on `latents` (N, 4, 16, 16, already scaled) of `all_scenes()`; returns the EMA networks."""
    steps = recipe.unet_steps
    path = out / "unet.safetensors"
    torch.manual_seed(recipe.seed + 1)
    text_encoder = CLIPTextModel(TINY.text_encoder)
    unet = UNet2DConditionModel(TINY.unet)
    models = {"text_encoder": text_encoder, "unet": unet}
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=0.01)
    ema = {f"{m}.{k}": p.detach().clone() for m, model in models.items() for k, p in model.named_parameters()}
    start = 0
    if path.exists():
        tensors, meta = load_checkpoint(path)
        for m, model in models.items():
            model.load_state_dict({k[len(m) + 7:]: v for k, v in tensors.items() if k.startswith(f"model.{m}.")})
        ema = {k[4:]: v.clone() for k, v in tensors.items() if k.startswith("ema.")}
        load_optimizer(opt, tensors)
        start = meta["step"]
    for model in models.values():
        model.to(device)
    ema = {k: v.to(device) for k, v in ema.items()}
    latents = latents.to(device)
    scenes = all_scenes()
    captions = Captions(CLIPTokenizer.standard())
    alpha_bar = alphas_cumprod_for(parse_config(dict(TINY.scheduler), "dpm++2m"))
    bar = Progress("text encoder + unet", steps, start, quiet) if start < steps else None
    for m in models.values():
        m.train()
    for step in range(start, min(steps, stop or steps)):
        g, rng = step_generator(recipe.seed, "unet", step)
        index = torch.randint(len(scenes), (recipe.unet_batch,), generator=g)
        texts = ["" if rng.random() < recipe.uncond_prob else training_caption(scenes[i], rng) for i in index]
        loss = diffusion_loss(unet, text_encoder, latents[index.to(device)], captions(texts), g, alpha_bar,
                              recipe.min_snr, recipe.prediction_type)
        optimize(opt, loss, lr_at(step, steps, recipe.unet_lr, recipe.warmup), bar, clip=1.0)
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        for m, model in models.items():
            ema_update({k: ema[f"{m}.{k}"] for k, _ in model.named_parameters()}, model, decay)
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == steps:
            log({"stage": "unet", "step": step + 1, "loss": round(bar.loss, 5)})
            state = {f"model.{m}.{k}": v for m, model in models.items() for k, v in model.state_dict().items()}
            save_checkpoint({**state, **{f"ema.{k}": v for k, v in ema.items()}, **optimizer_tensors(opt)},
                         {"step": step + 1}, path)
    if bar:
        bar.close()
    for m, model in models.items():
        model.load_state_dict({k: ema[f"{m}.{k}"] for k, _ in model.named_parameters()}, strict=False)
        model.cpu().eval()
    return text_encoder, unet


# ---------------------------------------------------------------------------------------------------
# The whole recipe
# ---------------------------------------------------------------------------------------------------
def export(out: Path, vae: AutoencoderKL, text_encoder, unet, scaling_factor: float,
           prediction_type: str = "v_prediction") -> Path:
    """Write the diffusers folder `out/model` (atomically: built beside it, then renamed)."""
    from ..weights import Components, write_folder
    vae.config = replace(TINY.vae, scaling_factor=scaling_factor, force_upcast=False)
    parts = Components(tokenizer=CLIPTokenizer.standard(), text_encoder=text_encoder, unet=unet, vae=vae,
                       scheduler_config={**TINY.scheduler, "prediction_type": prediction_type}, source=out)
    final = out / "model"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out))
    try:
        write_folder(parts, tmp / "model")
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp / "model", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def train(out: str | Path, recipe: Recipe = Recipe(), *, quiet: bool = False, device: str = "cpu",
          stop: tuple[str, int] | None = None) -> Path | None:
    """Run (or resume) the whole recipe in `out`; returns the diffusers folder `out/model`. `stop`
    = (stage, step) ends the run there, returning None, as an interruption would (for tests)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    recipe_file = out / "recipe.json"
    if recipe_file.exists() and json.loads(recipe_file.read_text()) != asdict(recipe):
        from ..errors import InputError
        raise InputError(f"{out} holds a run with another recipe ({recipe_file}); use a new --out folder")
    recipe_file.write_text(json.dumps(asdict(recipe), indent=2))
    started = time.perf_counter()

    def log(record: dict) -> None:
        record["minutes"] = round((time.perf_counter() - started) / 60, 2)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    at = lambda stage: stop[1] if stop and stop[0] == stage else None
    vae = train_vae(recipe, out, log, quiet, device=device, stop=at("vae"))
    if at("vae"):
        return None
    images = images_tensor(all_scenes()).to(device)
    raw = encode_all(vae, images)  # (N, 4, 16, 16): fixed from here on
    vae = train_decoder(recipe, out, vae, raw, images, log, quiet, device=device, stop=at("decoder"))
    if at("decoder"):
        return None
    scaling_factor = float(1 / raw.std())
    text_encoder, unet = train_unet(recipe, out, raw * scaling_factor, log, quiet, device=device, stop=at("unet"))
    if at("unet"):
        return None
    return export(out, vae.cpu(), text_encoder, unet, scaling_factor, recipe.prediction_type)
