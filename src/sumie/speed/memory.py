"""The pipeline's memory options: where each network runs (offloading), attention slicing, VAE bands."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..layers import Attention
from ..taesd import TinyAutoencoder
from ..vae import AutoencoderKL
from . import bands


def slice_attention(models: list[nn.Module], size: int | None) -> None:
    """Every Attention of `models` attends `size` queries at a time (None or 0: all at once)."""
    for model in models:
        for m in model.modules():
            if isinstance(m, Attention):
                m.slice_size = size


def move(module: nn.Module, device: torch.device) -> None:
    """Move `module`'s own parameters and buffers (not its children's) to `device`."""
    for p in module._parameters.values():
        if p is not None:
            p.data = p.data.to(device)
    for name, b in module._buffers.items():
        if b is not None:
            module._buffers[name] = b.to(device)


class Offload:
    """Weights live on the CPU and run on `device`: a whole network at a time (`placed`), or with
    `sequential`, each layer's own weights only for that layer's forward (the least device memory)."""

    def __init__(self, device: str | torch.device, *, sequential: bool = False):
        self.device, self.sequential = torch.device(device), sequential

    def hook(self, models: list[nn.Module]) -> None:
        """With `sequential`: every layer with weights moves them to the device for its forward, then back."""
        if not self.sequential:
            return
        for model in models:
            for module in model.modules():
                if module._parameters or module._buffers:
                    module.register_forward_pre_hook(lambda m, args: move(m, self.device))
                    module.register_forward_hook(lambda m, args, out: move(m, torch.device("cpu")))

    @contextlib.contextmanager
    def placed(self, module: nn.Module):
        """Run `module` on the device for the duration of the block (whole-network offload)."""
        if self.sequential:
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")


def decode(vae: AutoencoderKL, z: torch.Tensor, band_budget: int | None) -> torch.Tensor:
    """vae.decode(z), in bands of rows (`bands.decode`) when a budget is set or the image has at least
    `bands.BANDS_FROM` pixels: (B, C, h, w) unscaled latents -> (B, 3, h*f, w*f). TAESD decodes in one call."""
    if isinstance(vae, TinyAutoencoder):
        return TinyAutoencoder.decode(vae, z)  # the plain tensor, also for sumie.compat's subclass
    if band_budget is not None:
        return bands.decode(vae, z, band_budget)
    if z.shape[-2] * z.shape[-1] * vae.config.downscale ** 2 >= bands.BANDS_FROM:
        return bands.decode(vae, z)
    return vae.decode(z)
