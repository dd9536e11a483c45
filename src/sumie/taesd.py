"""TAESD, the tiny autoencoder: the SD VAE's latent space, encoded and decoded by a small plain CNN.

Ollin Boer Bohan's TAESD (madebyollin/taesd; diffusers' `AutoencoderTiny`) is distilled to reproduce the SD
VAE's decoder and encoder with 64-channel ReLU blocks and no attention or normalisation: about 1% of the
VAE's arithmetic, at some cost in fine detail. It reads and writes SD's scaled latents as they are
(scaling_factor 1), so a pipeline can decode with it instead of the VAE (`pipe.vae = TinyAutoencoder...`,
`--vae-tiny`), and the server can decode its live previews with it (`--preview-vae`).

Layouts (diffusers' key names; the original `taesd_decoder` / `taesd_encoder` files number the same
`nn.Sequential`, the decoder's one place later, its index 0 being the clamp):
    encoder: conv(3, 64), Block x n0, then per level conv(64, 64, stride 2, no bias), Block x n; conv(64, 4)
    decoder: clamp 3 tanh(z / 3), conv(4, 64), ReLU, per level Block x n, upsample x2, conv(64, 64, no bias);
             last level Block x n, conv(64, 3)
    Block(x) = ReLU(conv(ReLU(conv(ReLU(conv(x))))) + skip(x))
Images are in [-1, 1] at the interface, as for the VAE; inside, TAESD works in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TinyVAEConfig
from .errors import InputError


class Block(nn.Module):
    """Three 3x3 convolutions with ReLUs between them, plus the input (1x1 conv where channels change)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TinyEncoder(nn.Module):
    def __init__(self, cfg: TinyVAEConfig):
        super().__init__()
        layers = []
        for i, (c, n) in enumerate(zip(cfg.encoder_block_out_channels, cfg.num_encoder_blocks)):
            layers.append(nn.Conv2d(cfg.in_channels, c, 3, padding=1) if i == 0
                          else nn.Conv2d(c, c, 3, padding=1, stride=2, bias=False))
            layers += [Block(c, c) for _ in range(n)]
        layers.append(nn.Conv2d(cfg.encoder_block_out_channels[-1], cfg.latent_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) scaled latents
        return self.layers(x.add(1).div(2))


class TinyDecoder(nn.Module):
    def __init__(self, cfg: TinyVAEConfig):
        super().__init__()
        channels = cfg.decoder_block_out_channels
        layers = [nn.Conv2d(cfg.latent_channels, channels[0], 3, padding=1), nn.ReLU()]
        for i, (c, n) in enumerate(zip(channels, cfg.num_decoder_blocks)):
            last = i == len(channels) - 1
            layers += [Block(c, c) for _ in range(n)]
            if not last:
                layers.append(nn.Upsample(scale_factor=cfg.upsampling_scaling_factor, mode="nearest"))
            layers.append(nn.Conv2d(c, cfg.out_channels if last else c, 3, padding=1, bias=last))
        self.layers = nn.Sequential(*layers)
        self.magnitude = cfg.latent_magnitude

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # (B, 4, h, w) scaled latents -> (B, 3, 8h, 8w) in [-1, 1]; latents softly clamped to +-magnitude
        z = torch.tanh(z / self.magnitude) * self.magnitude
        return self.layers(z).mul(2).sub(1)


class Latents:
    """TAESD's encoding: one latent, no distribution; `sample` and `mode` both give it (as diffusers' pipelines
    take `.latents` from AutoencoderTiny's output)."""

    def __init__(self, latents: torch.Tensor):
        self.mean = latents

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


class TinyAutoencoder(nn.Module):
    """TAESD with the VAE's interface: encode(x) -> Latents, decode(z) -> image (module docstring)."""

    def __init__(self, config: TinyVAEConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = TinyEncoder(config), TinyDecoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.layers[0].weight.dtype

    def encode(self, x: torch.Tensor) -> Latents:
        if self.encoder is None:
            raise InputError("this TAESD was loaded from a decoder alone, so it cannot encode an image; load "
                             "the folder that also holds taesd_encoder.safetensors")
        return Latents(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
