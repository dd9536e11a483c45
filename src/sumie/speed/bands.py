"""The VAE layer by layer in bands of rows: the same image in a fraction of the memory (a pass over a built VAE).

Decoding overlapping tiles and blending them (diffusers' `enable_vae_tiling`) changes the image: each tile
normalises with its own GroupNorm statistics and sees zero padding at its edges, which shows as seams. Here
every layer runs over horizontal bands of rows instead, each band with the rows its kernel reaches on either
side, and every GroupNorm takes its statistics over the whole tensor first. The result equals the one-call
decode up to float rounding. Peak memory is a layer's input and output plus one band's temporaries, instead
of all the temporaries of the largest layer at full size; attention, at the latent resolution, still sees
every position. What it costs in time is in docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ResnetBlock
from ..vae import AutoencoderKL, DiagonalGaussian, Level, MidBlock
from . import packing
from .kernels import conv2d

BAND_BUDGET = 1 << 22  # elements of one band's input (16 MiB in float32)
BANDS_FROM = 512 * 512  # output pixels from which the pipeline decodes in bands by default (less memory)


def decode(vae: AutoencoderKL, z: torch.Tensor, budget: int = BAND_BUDGET) -> torch.Tensor:
    """`vae.decode(z)`, one band of rows at a time: (B, latent_channels, h, w) -> (B, 3, h*f, w*f)."""
    d = vae.decoder
    z = z if vae.post_quant_conv is None else vae.post_quant_conv(z)
    x = mid_in_bands(d.mid_block, d.conv_in(z), budget)
    for block in d.up_blocks:
        x = level_in_bands(block, x, budget)
    return out_in_bands(d.conv_norm_out, d.conv_out, x, budget)


def encode(vae: AutoencoderKL, x: torch.Tensor, budget: int = BAND_BUDGET) -> DiagonalGaussian:
    """`vae.encode(x)`, one band of rows at a time: (B, 3, H, W) -> posterior over (B, C, H/f, W/f)."""
    e = vae.encoder
    h = conv_rows(e.conv_in, lambda lo, hi: x[:, :, lo:hi], x.shape[-2], (1, 1), budget)
    for block in e.down_blocks:
        h = level_in_bands(block, h, budget)
    moments = out_in_bands(e.conv_norm_out, e.conv_out, mid_in_bands(e.mid_block, h, budget), budget)
    return DiagonalGaussian(moments if vae.quant_conv is None else vae.quant_conv(moments))


def norm_silu(norm: nn.GroupNorm, x: torch.Tensor):
    """SiLU(GroupNorm(x)) with statistics over all of x (B, C, H, W), as a function of any band of x's rows."""
    B, C = x.shape[:2]
    groups = x.unflatten(1, (norm.num_groups, -1))  # (B, groups, C/groups, H, W)
    # in float32 like GroupNorm itself (a half-precision variance overflows), on a float32 copy of as many groups
    # as fit in BAND_BUDGET values at a time, two passes: the mean, then the mean square about it (torch.var_mean's
    # one-pass Welford is the slower on CPU)
    per = max(1, BAND_BUDGET // groups[:, 0].numel())
    var, mean = [], []
    for g in range(0, norm.num_groups, per):
        xg = groups[:, g:g + per].to(torch.float32, copy=True)  # (B, k, C/groups, H, W)
        mean.append(xg.mean(dim=(2, 3, 4)))
        var.append(torch.linalg.vector_norm(xg.sub_(mean[-1][:, :, None, None, None]), dim=(2, 3, 4)).square()
                   / xg[0, 0].numel())
    var, mean = torch.cat(var, 1), torch.cat(mean, 1)  # (B, groups)
    weight, bias = (p.to(x.device, torch.float32) for p in (norm.weight, norm.bias))  # see `conv_rows`
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(C // norm.num_groups, 1) * weight  # (B, C)
    shift = bias - mean.repeat_interleave(C // norm.num_groups, 1) * scale
    scale, shift = scale.to(x.dtype)[:, :, None, None], shift.to(x.dtype)[:, :, None, None]
    return lambda rows: F.silu((rows * scale).add_(shift), inplace=True)  # addcmul: 3x slower in bfloat16 NCHW


def conv_rows(conv: nn.Conv2d, rows, height: int, pad: tuple[int, int], budget: int,
              out: torch.Tensor | None = None, add: bool = True) -> torch.Tensor:
    """conv(X), a band of output rows at a time, for the input X of `height` rows whose rows [lo, hi) are
    `rows(lo, hi)` and which has `pad` = (top, bottom) zero rows around it (the conv's own vertical padding
    is not used). Adds into `out` when given (or writes into it, add=False)."""
    (k, _), (s, _) = conv.kernel_size, conv.stride
    out_h = (height + pad[0] + pad[1] - k) // s + 1
    first = rows(0, min(k, height))
    # The weights go to the input's device: no forward runs here, so sequential offload's hooks do not move them
    weight, bias = (None if p is None else p.to(first.device) for p in (conv.weight, conv.bias))
    band = max(1, budget // (first.shape[0] * max(first.shape[1], conv.out_channels) * first.shape[-1] * s))
    packed = packing.packed_3x3(conv, first)  # after pipe.compile()
    algorithm = None  # the packed algorithm of the first band, for every band
    add = add and out is not None
    for a in range(0, out_h, band):
        b = min(a + band, out_h)
        lo, hi = a * s - pad[0], (b - 1) * s - pad[0] + k  # input rows this band reads, in X's numbering
        x = rows(max(lo, 0), min(hi, height))
        if lo < 0 or hi > height:  # the first and last bands: zero rows beyond X's edges
            x = F.pad(x, (0, 0, max(-lo, 0), max(hi - height, 0)))
        if packed:
            algorithm = algorithm or packing.algorithm(conv, x, (0, conv.padding[1]))
            y = packing.conv3x3(conv, x, (0, conv.padding[1]), algorithm)
        else:
            y = conv2d(x, weight, bias, s, (0, conv.padding[1]), conv.dilation, conv.groups)  # by shape
        if out is None:
            out = y.new_empty(*y.shape[:2], out_h, y.shape[-1])
        if add:
            out[:, :, a:b] += y
        else:
            out[:, :, a:b] = y
    return out


def resnet_in_bands(block: ResnetBlock, x: torch.Tensor, budget: int) -> torch.Tensor:
    """block(x) for a VAE ResnetBlock (no time embedding). x may be overwritten: its memory can hold the output."""
    H = x.shape[-2]
    act = norm_silu(block.norm1, x)
    h = conv_rows(block.conv1, lambda lo, hi: act(x[:, :, lo:hi]), H, (1, 1), budget)
    skip, shortcut = x, block.conv_shortcut
    if shortcut is not None:  # 1x1: with fewer channels (decoder), each band's result fits where its input was
        into = x[:, :shortcut.out_channels] if shortcut.out_channels <= x.shape[1] else None
        skip = conv_rows(shortcut, lambda lo, hi: x[:, :, lo:hi], H, (0, 0), budget, out=into, add=False)
    act = norm_silu(block.norm2, h)
    return conv_rows(block.conv2, lambda lo, hi: act(h[:, :, lo:hi]), H, (1, 1), budget, out=skip)


def level_in_bands(level: Level, x: torch.Tensor, budget: int) -> torch.Tensor:
    for resnet in level.resnets:
        x = resnet_in_bands(resnet, x, budget)
    H = x.shape[-2]
    for up in level.upsamplers or ():  # nearest 2x then 3x3 conv: rows [lo, hi) of the 2H-row upsampled x
        x = conv_rows(up.conv, lambda lo, hi: F.interpolate(x[:, :, lo // 2:(hi + 1) // 2], scale_factor=2.0,
                                                            mode="nearest")[:, :, lo % 2:lo % 2 + hi - lo],
                      2 * H, (1, 1), budget)
    for down in level.downsamplers or ():  # pads one zero row and column at the bottom and right, stride 2
        x = conv_rows(down.conv, lambda lo, hi: F.pad(x[:, :, lo:hi], (0, 1)), H, (0, 1), budget)
    return x


def mid_in_bands(mid: MidBlock, x: torch.Tensor, budget: int) -> torch.Tensor:
    x = resnet_in_bands(mid.resnets[0], x, budget)
    if mid.attentions is not None:
        x = mid.attentions[0](x)
    return resnet_in_bands(mid.resnets[1], x, budget)


def out_in_bands(norm: nn.GroupNorm, conv: nn.Conv2d, x: torch.Tensor, budget: int) -> torch.Tensor:
    act = norm_silu(norm, x)
    return conv_rows(conv, lambda lo, hi: act(x[:, :, lo:hi]), x.shape[-2], (1, 1), budget)
