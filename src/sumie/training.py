"""Pieces every trainer here shares: the diffusion objective, the learning-rate schedule, seeded per-step
draws, atomic checkpoints (safetensors + JSON, no pickles), the optimizer step and the progress line.

Used by `sumie.tiny.train` (sumie-tiny from scratch) and `sumie.train_lora` (a LoRA on any SD 1/2 model).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from safetensors.torch import load_file

from .tokenizer import CLIPTokenizer
from .weights.files import write_safetensors


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def step_generator(seed: int, stage: str, step: int) -> tuple[torch.Generator, random.Random]:
    key = (seed * 1_000_003 + {"vae": 1, "unet": 2, "decoder": 3, "lora": 4}[stage]) * 10_000_019 + step
    return torch.Generator().manual_seed(key), random.Random(key)


def save_checkpoint(tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    """Tensors and a JSON-able `meta`, atomically (`weights.files.write_safetensors`)."""
    write_safetensors(tensors, path, {"meta": json.dumps(meta)})


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(path), meta


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"opt.{i}.{k}": v for i, s in opt.state_dict()["state"].items() for k, v in s.items()}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def optimize(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, bar, clip: float | None = None) -> None:
    """One optimizer step on `loss` at learning rate `lr`, gradients clipped to norm `clip` if given."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], clip)
    opt.step()
    bar.update(loss.item())


class Progress:
    """One status line on stderr (tqdm), with the running loss."""

    def __init__(self, stage: str, total: int, start: int, quiet: bool):
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=start, desc=stage, disable=quiet, dynamic_ncols=True)
        self.loss = None

    def update(self, loss: float) -> None:
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.bar.set_postfix(loss=f"{self.loss:.4f}", refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()




class Captions:
    """Caption -> (77,) token ids, memoised (the captions repeat)."""

    def __init__(self, tokenizer: CLIPTokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[t] for t in texts])


def diffusion_loss(unet, text_encoder, latents, ids, generator, alpha_bar, min_snr,
                   prediction_type: str = "v_prediction") -> torch.Tensor:
    """Min-SNR-gamma weighted loss (Hang et al. 2023, sec. 3.4): epsilon targets weighted min(SNR, gamma) / SNR,
    v targets (Salimans & Ho 2022, eq. 11 context; v = sqrt(abar) eps - sqrt(1 - abar) x0) weighted
    min(SNR, gamma) / (SNR + 1). Random draws come from the CPU `generator`, so a seed trains the same
    on any device."""
    b, dev = len(latents), latents.device
    t = torch.randint(len(alpha_bar), (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator).to(dev)
    ab = alpha_bar[t].to(dev)  # (B,)
    noisy = ab.sqrt().view(b, 1, 1, 1) * latents + (1 - ab).sqrt().view(b, 1, 1, 1) * noise  # Ho et al. 2020, eq. 4
    pred = unet(noisy, t.to(dev), text_encoder(ids.to(dev)).last_hidden_state)
    snr = ab / (1 - ab)
    if prediction_type == "epsilon":
        target, weight = noise, snr.clamp(max=min_snr) / snr
    else:
        s = lambda v: v.view(b, 1, 1, 1)
        target, weight = s(ab.sqrt()) * noise - s((1 - ab).sqrt()) * latents, snr.clamp(max=min_snr) / (snr + 1)
    if min_snr <= 0:
        weight = torch.ones_like(snr)
    return (weight * (pred - target).pow(2).mean((1, 2, 3))).mean()
