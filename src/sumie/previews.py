"""Live previews: the latents of a run in progress as a picture, for much less than a VAE decode.

Three ways, cheapest last:
- TAESD (`taesd`), when the server is given one (`--preview-vae`): a real decode at about 1% of the
  VAE's cost;
- the model's own VAE, for latents of at most FULL_DECODE_MAX positions (sumie-tiny's, 64x64 images);
- A1111's "Approx cheap": each pixel a fixed linear map of its 4 latent channels (APPROX_CHEAP, for the
  SD 1/2 VAE's scaled latents), at latent resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from .taesd import TinyAutoencoder

FULL_DECODE_MAX = 32 * 32  # latent positions decoded by the model's VAE
# (4, 3): latent channel -> R, G, B, A1111's "Approx cheap" factors for SD 1/2 (its sd_vae_approx.py)
APPROX_CHEAP = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))


def approx_cheap(z: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) scaled latents -> (B, 3, h, w) roughly in [-1, 1]."""
    return torch.einsum("bchw,cr->brhw", z.float(), torch.tensor(APPROX_CHEAP, device=z.device))


def rgb(z: torch.Tensor, vae: nn.Module, tiny: TinyAutoencoder | None = None) -> torch.Tensor:
    """(B, C, h, w) scaled latents -> (B, 3, H, W) in about [-1, 1], by the cheapest way that applies
    (module docstring). `vae` is the model's own."""
    with torch.no_grad():
        if tiny is not None:
            weight = tiny.decoder.layers[0].weight
            return TinyAutoencoder.decode(tiny, z.to(weight.device, weight.dtype)).float().cpu()
        if z.shape[-1] * z.shape[-2] <= FULL_DECODE_MAX:
            weight = next(vae.parameters())
            return vae.decode((z / vae.config.scaling_factor).to(weight.device, weight.dtype)).float().cpu()
        if z.shape[1] == len(APPROX_CHEAP):
            return approx_cheap(z).cpu()
        return z[:, :3].float().cpu() / max(1e-6, float(z.abs().max()))  # other latent spaces: a plain projection
