"""AutoencoderKL (Rombach et al. 2022, sec. 3 and appendix G): images <-> latents, 8x smaller per side for SD.

The encoder returns a diagonal Gaussian over latents; the decoder maps latents back to pixels in
[-1, 1]. Parameter names are diffusers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from .layers import Attention, Downsample, ResnetBlock, Upsample

EPS = 1e-6  # GroupNorm epsilon throughout the VAE


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element (Kingma & Welling 2014, sec. 2.4)."""

    def __init__(self, moments: torch.Tensor):
        # moments: (B, 2C, h, w) -> mean, logvar: (B, C, h, w)
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps, eps drawn from `generator` (on the generator's device, then moved)."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean


class AttentionBlock(Attention):
    """Single-head self-attention over the H*W positions, with its own GroupNorm and a residual."""

    def __init__(self, ch: int, groups: int):
        super().__init__(ch, heads=1, qkv_bias=True)
        self.group_norm = nn.GroupNorm(groups, ch, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).view(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        h = super().forward(h)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(ch, ch, temb_ch=None, groups=groups, eps=EPS) for _ in range(2))
        self.attentions = nn.ModuleList([AttentionBlock(ch, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Level(nn.Module):
    """ResNet blocks at one resolution, then an optional resampler."""

    def __init__(self, in_ch: int, out_ch: int, n: int, groups: int, *, down: bool = False, up: bool = False):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, temb_ch=None, groups=groups, eps=EPS) for i in range(n))
        self.downsamplers = nn.ModuleList([Downsample(out_ch, padding=0)]) if down else None
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if up else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for resampler in self.downsamplers or self.upsamplers or ():
            x = resampler(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            Level(chs[max(i - 1, 0)], ch, cfg.layers_per_block, g, down=i < len(chs) - 1) for i, ch in enumerate(chs))
        self.mid_block = MidBlock(chs[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, chs[-1], eps=EPS)
        self.conv_out = nn.Conv2d(chs[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> (B, 2 * latent_channels, H/f, W/f)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, g = cfg.block_out_channels[::-1], cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, chs[0], 3, padding=1)
        self.mid_block = MidBlock(chs[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            Level(chs[max(i - 1, 0)], ch, cfg.layers_per_block + 1, g, up=i < len(chs) - 1) for i, ch in enumerate(chs))
        self.conv_norm_out = nn.GroupNorm(g, chs[-1], eps=EPS)
        self.conv_out = nn.Conv2d(chs[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: (B, latent_channels, h, w) -> (B, 3, h*f, w*f)
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        L = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * L, 2 * L, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(L, L, 1) if cfg.use_post_quant_conv else None

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x: (B, 3, H, W) in [-1, 1] -> posterior over (B, latent_channels, H/f, W/f) unscaled latents."""
        moments = self.encoder(x)
        return DiagonalGaussian(moments if self.quant_conv is None else self.quant_conv(moments))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_channels, h, w) unscaled latents -> (B, 3, h*f, w*f) images, nominally in [-1, 1]."""
        return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))
