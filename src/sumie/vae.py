"""AutoencoderKL (Rombach et al. 2022, sec. 3 and appendix G): images <-> latents, 8x smaller per side for SD.

The encoder returns a diagonal Gaussian over latents; the decoder maps latents back to pixels in
[-1, 1]. Parameter names are diffusers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import packing, winograd
from .config import VAEConfig
from .convolution import Conv2d, conv2d
from .layers import Attention, Downsample, ResnetBlock, Upsample

EPS = 1e-6  # GroupNorm epsilon throughout the VAE
BAND_BUDGET = 1 << 22  # elements of one band's input in decode_tiled/encode_tiled (16 MiB in float32)
BANDS_FROM = 512 * 512  # output pixels from which `decode` runs in bands: less memory, about 1.2x the time


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
        self.conv_in = Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            Level(chs[max(i - 1, 0)], ch, cfg.layers_per_block, g, down=i < len(chs) - 1) for i, ch in enumerate(chs))
        self.mid_block = MidBlock(chs[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, chs[-1], eps=EPS)
        self.conv_out = Conv2d(chs[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> (B, 2 * latent_channels, H/f, W/f)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def in_bands(self, x: torch.Tensor, budget: int) -> torch.Tensor:
        """forward(x), layer by layer in bands of rows (see "Tiling without seams" below)."""
        x = conv_rows(self.conv_in, lambda lo, hi: x[:, :, lo:hi], x.shape[-2], (1, 1), budget)
        for block in self.down_blocks:
            x = level_in_bands(block, x, budget)
        return out_in_bands(self.conv_norm_out, self.conv_out, mid_in_bands(self.mid_block, x, budget), budget)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs, g = cfg.block_out_channels[::-1], cfg.norm_num_groups
        self.conv_in = Conv2d(cfg.latent_channels, chs[0], 3, padding=1)
        self.mid_block = MidBlock(chs[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            Level(chs[max(i - 1, 0)], ch, cfg.layers_per_block + 1, g, up=i < len(chs) - 1) for i, ch in enumerate(chs))
        self.conv_norm_out = nn.GroupNorm(g, chs[-1], eps=EPS)
        self.conv_out = Conv2d(chs[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: (B, latent_channels, h, w) -> (B, 3, h*f, w*f)
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def in_bands(self, z: torch.Tensor, budget: int) -> torch.Tensor:
        """forward(z), layer by layer in bands of rows (see "Tiling without seams" below)."""
        x = mid_in_bands(self.mid_block, self.conv_in(z), budget)
        for block in self.up_blocks:
            x = level_in_bands(block, x, budget)
        return out_in_bands(self.conv_norm_out, self.conv_out, x, budget)


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
        """z: (B, latent_channels, h, w) unscaled latents -> (B, 3, h*f, w*f) images, nominally in [-1, 1].
        From BANDS_FROM pixels up, in bands of rows (`decode_tiled`): the same result in less memory."""
        if z.shape[-2] * z.shape[-1] * self.config.downscale ** 2 >= BANDS_FROM:
            return self.decode_tiled(z)
        return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))

    def decode_tiled(self, z: torch.Tensor, budget: int = BAND_BUDGET) -> torch.Tensor:
        """`decode`, one band of rows at a time at any size (see `in_bands`): same result, less memory."""
        return self.decoder.in_bands(z if self.post_quant_conv is None else self.post_quant_conv(z), budget)

    def encode_tiled(self, x: torch.Tensor, budget: int = BAND_BUDGET) -> DiagonalGaussian:
        """`encode`, one band of rows at a time (see `in_bands`)."""
        moments = self.encoder.in_bands(x, budget)
        return DiagonalGaussian(moments if self.quant_conv is None else self.quant_conv(moments))


# -- Tiling without seams ---------------------------------------------------------------------------------
# Decoding overlapping tiles and blending them (diffusers' `enable_vae_tiling`) changes the image: each
# tile normalises with its own GroupNorm statistics and sees zero padding at its edges, which shows as
# seams. Here every layer runs over horizontal bands of rows instead, each band with the rows its kernel
# reaches on either side, and every GroupNorm takes its statistics over the whole tensor first. The result
# equals the one-call `decode` up to float rounding. Peak memory is a layer's input and output plus one
# band's temporaries, instead of all the temporaries of the largest layer at full size; attention, at the
# latent resolution, still sees every position.


def norm_silu(norm: nn.GroupNorm, x: torch.Tensor):
    """SiLU(GroupNorm(x)) with statistics over all of x (B, C, H, W), as a function of any band of x's rows."""
    B, C = x.shape[:2]
    groups = x.unflatten(1, (norm.num_groups, -1))  # (B, groups, C/groups, H, W)
    # in float32 like GroupNorm itself (a half-precision variance overflows), one group at a time, two passes:
    # the mean, then the mean square about it (torch.var_mean's one-pass Welford runs ~5x slower on CPU)
    var, mean = [], []
    for g in range(norm.num_groups):
        xg = groups[:, g].float()  # (B, C/groups, H, W)
        mean.append(xg.mean(dim=(1, 2, 3)))
        var.append(torch.linalg.vector_norm(xg - mean[-1][:, None, None, None], dim=(1, 2, 3)).square()
                   / xg[0].numel())
    var, mean = torch.stack(var, 1), torch.stack(mean, 1)  # (B, groups)
    weight, bias = (p.to(x.device, torch.float32) for p in (norm.weight, norm.bias))  # see `conv_rows`
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(C // norm.num_groups, 1) * weight  # (B, C)
    shift = bias - mean.repeat_interleave(C // norm.num_groups, 1) * scale
    scale, shift = scale.to(x.dtype)[:, :, None, None], shift.to(x.dtype)[:, :, None, None]
    return lambda rows: F.silu(torch.addcmul(shift, rows, scale), inplace=True)


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
    packed = packing.winograd_weight(conv, first, height, first.shape[-1])  # after pipe.compile(), else None
    add = add and out is not None
    for a in range(0, out_h, band):
        b = min(a + band, out_h)
        lo, hi = a * s - pad[0], (b - 1) * s - pad[0] + k  # input rows this band reads, in X's numbering
        x = rows(max(lo, 0), min(hi, height))
        if lo < 0 or hi > height:  # the first and last bands: zero rows beyond X's edges
            x = F.pad(x, (0, 0, max(-lo, 0), max(hi - height, 0)))
        if packed is not None:
            y = winograd.conv3x3(x, packed, bias, (0, conv.padding[1]))
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


def level_in_bands(level: "Level", x: torch.Tensor, budget: int) -> torch.Tensor:
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
