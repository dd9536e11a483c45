"""UNet2DCondition as Stable Diffusion 1.x / 2.x and SDXL use it: predicts the noise (or v) in a latent.

Ronneberger et al. 2015 (U-Net), with the ResNet + cross-attention blocks of Rombach et al. 2022,
sec. 3.3 and appendix E. The versions differ only in data passed to the blocks: heads per block,
linear instead of 1x1-conv projections, attention upcast, and for SDXL (Podell et al. 2023, sec. 2.1-2.2)
transformer blocks per level and the pooled-text and size embedding added to the time embedding.
Parameter names are diffusers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .layers import Attention, Downsample, ResnetBlock, Upsample, timestep_embedding


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020, eq. 5): (B, N, dim) -> (B, N, inner)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(h)  # h * gelu(gate), into gelu's fresh output: one (B, N, inner) tensor fewer


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])  # [1]: dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text, feed-forward; each pre-norm with a residual."""

    def __init__(self, dim: int, *, heads: int, context_dim: int, upcast: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads=heads, context_dim=context_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: (B, HW, dim), context: (B, T, context_dim)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Runs `depth` TransformerBlocks over the H*W positions of a feature map (diffusers' Transformer2DModel).

    SD 1.x projects in and out with 1x1 convs, SD 2.x with linear layers (`linear_proj`).
    """

    def __init__(self, ch: int, *, heads: int, depth: int, cfg: UNetConfig):
        super().__init__()
        self.linear_proj = linear_proj = cfg.use_linear_projection
        self.norm = nn.GroupNorm(cfg.norm_num_groups, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, ch) if linear_proj else nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(ch, heads=heads, context_dim=cfg.cross_attention_dim, upcast=cfg.upcast_attention)
            for _ in range(depth))
        self.proj_out = nn.Linear(ch, ch) if linear_proj else nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if not self.linear_proj:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C)
        if self.linear_proj:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear_proj:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.linear_proj:
            h = self.proj_out(h)
        return x + h


class TimestepEmbedding(nn.Module):
    def __init__(self, ch: int, temb_ch: int):
        super().__init__()
        self.linear_1 = nn.Linear(ch, temb_ch)
        self.linear_2 = nn.Linear(temb_ch, temb_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Block(nn.Module):
    """One UNet level: ResNet blocks, each followed by a SpatialTransformer of `depth` blocks when `heads` is
    given, then an optional down- or upsampler. Up levels concatenate a skip connection before each ResNet."""

    def __init__(self, in_chs: list[int], out_ch: int, *, heads: int | None, depth: int,
                 resampler: nn.Module | None, cfg: UNetConfig, temb_ch: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(c, out_ch, temb_ch=temb_ch, groups=cfg.norm_num_groups, eps=cfg.norm_eps) for c in in_chs)
        if heads is not None:
            self.attentions = nn.ModuleList(
                SpatialTransformer(out_ch, heads=heads, depth=depth, cfg=cfg) for _ in in_chs)
        else:
            self.attentions = [None] * len(in_chs)
        self.downsamplers = nn.ModuleList([resampler]) if isinstance(resampler, Downsample) else None
        self.upsamplers = nn.ModuleList([resampler]) if isinstance(resampler, Upsample) else None

    def layers(self):
        return zip(self.resnets, self.attentions)


class MidBlock(nn.Module):
    def __init__(self, ch: int, *, heads: int, depth: int, cfg: UNetConfig, temb_ch: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(ch, ch, temb_ch=temb_ch, groups=cfg.norm_num_groups, eps=cfg.norm_eps) for _ in range(2))
        self.attentions = nn.ModuleList([SpatialTransformer(ch, heads=heads, depth=depth, cfg=cfg)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UNet2DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        chs, n = cfg.block_out_channels, cfg.layers_per_block
        temb_ch = 4 * chs[0]
        self.time_embedding = TimestepEmbedding(chs[0], temb_ch)
        self.add_embedding = None  # SDXL: [pooled text, size sinusoids] -> added to the time embedding
        if cfg.addition_embed_type == "text_time":
            self.add_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb_ch)
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)

        skips = [chs[0]]  # channels of each skip connection, in the order the down path makes them
        self.down_blocks = nn.ModuleList()
        for i, (kind, ch) in enumerate(zip(cfg.down_block_types, chs)):
            last = i == len(chs) - 1
            in_chs = [skips[-1]] + [ch] * (n - 1)
            self.down_blocks.append(Block(
                in_chs, ch, heads=cfg.heads[i] if kind.startswith("CrossAttn") else None, depth=cfg.depths[i],
                resampler=None if last else Downsample(ch, padding=1), cfg=cfg, temb_ch=temb_ch))
            skips += [ch] * (n if last else n + 1)

        self.mid_block = MidBlock(chs[-1], heads=cfg.heads[-1], depth=cfg.depths[-1], cfg=cfg, temb_ch=temb_ch)

        self.up_blocks = nn.ModuleList()
        prev = chs[-1]
        for i, (kind, ch) in enumerate(zip(cfg.up_block_types, reversed(chs))):
            in_chs = []
            for _ in range(n + 1):
                in_chs.append(prev + skips.pop())
                prev = ch
            self.up_blocks.append(Block(
                in_chs, ch, heads=cfg.heads[::-1][i] if kind.startswith("CrossAttn") else None,
                depth=cfg.depths[::-1][i], resampler=Upsample(ch) if i < len(chs) - 1 else None, cfg=cfg,
                temb_ch=temb_ch))

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chs[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict | None = None) -> torch.Tensor:
        # sample: (B, C, h, w) latents, timestep: scalar or (B,), encoder_hidden_states: (B, T, D) -> (B, C, h, w);
        # SDXL: added_cond_kwargs {"text_embeds": (B, P) pooled text, "time_ids": (B, 6 or 5) sizes (and score)}
        cfg = self.config
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(sample.shape[0]) if t.numel() == 1 else t
        temb = timestep_embedding(t, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
                                  freq_shift=cfg.freq_shift)
        temb = self.time_embedding(temb.to(sample.dtype))  # (B, 4 * C0)
        if self.add_embedding is not None:
            if not added_cond_kwargs or {"text_embeds", "time_ids"} - set(added_cond_kwargs):
                raise ValueError("an SDXL UNet needs added_cond_kwargs={'text_embeds': ..., 'time_ids': ...}")
            ids = added_cond_kwargs["time_ids"]  # (B, n)
            sizes = timestep_embedding(ids.flatten(), cfg.addition_time_embed_dim, flip_sin_to_cos=cfg.flip_sin_to_cos,
                                       freq_shift=cfg.freq_shift).reshape(len(ids), -1)  # (B, n * that dim)
            temb = temb + self.add_embedding(torch.cat([added_cond_kwargs["text_embeds"], sizes], -1).to(temb.dtype))
        context = encoder_hidden_states

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            for resnet, attn in block.layers():
                x = resnet(x, temb)
                x = x if attn is None else attn(x, context)
                skips.append(x)
            if block.downsamplers is not None:
                x = block.downsamplers[0](x)
                skips.append(x)

        x = self.mid_block(x, temb, context)

        for block in self.up_blocks:
            for resnet, attn in block.layers():
                x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
                x = x if attn is None else attn(x, context)
            if block.upsamplers is not None:
                x = block.upsamplers[0](x, size=skips[-1].shape[-2:])  # odd sizes: match the skip, not 2x

        return self.conv_out(F.silu(self.conv_norm_out(x)))
