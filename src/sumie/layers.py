"""Building blocks shared by the UNet and the VAE: attention, ResNet block, resampling, time embedding.

Parameter names follow the diffusers folder layout (`to_q`, `to_out.0`, `conv_shortcut`, ...), so
published weights load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn



def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal embedding of timesteps t (B,) -> (B, dim), float32.

    Vaswani et al. 2017, sec. 3.5; frequencies exp(-ln(10000) * i / (dim/2 - freq_shift)).
    """
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    angles = t[:, None].float() * torch.exp(exponent)[None, :]  # (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)] if flip_sin_to_cos
                    else [torch.sin(angles), torch.cos(angles)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class Attention(nn.Module):
    """Multi-head attention, self (context=None) or cross (Vaswani et al. 2017, eq. 1).

    `slice_size` (queries per chunk, None = all at once) trades speed for peak memory."""

    slice_size: int | None = None

    def __init__(self, dim: int, *, heads: int, context_dim: int | None = None, qkv_bias: bool = False,
                 upcast: bool = False):
        super().__init__()
        self.heads, self.upcast = heads, upcast
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(to_k(context), to_v(context)): (B, M, context_dim) -> 2 x (B, M, dim). A cross-attention's depend on
        the text only (`speed.texts` reuses them across steps)."""
        return self.to_k(context), self.to_v(context)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, N, dim), context: (B, M, context_dim) -> (B, N, dim)
        B, N, C = x.shape
        q, k, v = (t.view(B, -1, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, N|M, hd)
                   for t in (self.to_q(x), *self.keys_values(x if context is None else context)))
        if self.upcast and q.dtype in (torch.float16, torch.bfloat16):  # SD 2.1: fp16 softmax overflows
            q, k, v = q.float(), k.float(), v.float()
        if self.slice_size and N > self.slice_size:  # bound the (N, M) score matrix: queries in chunks
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + self.slice_size], k, v)
                             for i in range(0, N, self.slice_size)], dim=2)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.to(x.dtype).transpose(1, 2).reshape(B, N, C))


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus an optional time embedding (Ho et al. 2020, appendix B)."""

    def __init__(self, in_ch: int, out_ch: int, *, temb_ch: int | None, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch) if temb_ch else None
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, in_ch, H, W), temb: (B, temb_ch) -> (B, out_ch, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv. padding=0 pads one pixel right and bottom first (the VAE's convention)."""

    def __init__(self, ch: int, *, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.padding == 0 else x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x (or to `size`, for sizes the down path did not halve evenly), then 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
