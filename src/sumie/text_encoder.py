"""CLIP text transformer (Radford et al. 2021, sec. 2.4): token ids -> per-token embeddings.

SD 1.x uses OpenAI's ViT-L/14 text tower (12 layers, width 768, quick_gelu); SD 2.x uses
OpenCLIP ViT-H/14's (23 of 24 layers kept, width 1024, gelu); SDXL uses ViT-L beside OpenCLIP
ViT-bigG/14's (32 layers, width 1280, gelu), whose pooled output is projected
(`CLIPTextModelWithProjection`). Parameter names are those of transformers' classes, so
`text_encoder/` and `text_encoder_2/` folders load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextEncoderConfig


@dataclass
class TextEncoderOutput:
    last_hidden_state: torch.Tensor  # (B, T, D), after the final layer norm
    pooler_output: torch.Tensor  # (B, D), at each sequence's EOS token
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings, then each layer's output (before final norm)
    text_embeds: torch.Tensor | None = None  # (B, projection_dim): the pooled output projected (WithProjection)

    def __getitem__(self, i):  # `text_encoder(ids)[0]`, as with transformers (text_embeds first when projected)
        if self.text_embeds is not None:
            return (self.text_embeds, self.last_hidden_state, self.hidden_states)[i]
        return (self.last_hidden_state, self.pooler_output, self.hidden_states)[i]


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with (Hendrycks & Gimpel 2016, sec. 2)."""
    return x * torch.sigmoid(1.702 * x)


class Embeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        # ids: (B, T) -> (B, T, D); inputs_embeds (B, T, D) in place of the token embeddings (textual inversion)
        positions = torch.arange(ids.shape[1], device=ids.device)
        tokens = self.token_embedding(ids) if inputs_embeds is None else inputs_embeds
        return tokens + self.position_embedding(positions)[None]


class SelfAttention(nn.Module):
    """Causal multi-head self-attention (each token sees itself and those before it)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        d, self.heads = cfg.hidden_size, cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (p(x).view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, T, hd)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = quick_gelu if cfg.hidden_act == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SelfAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class CLIPTextModel(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False,
                inputs_embeds: torch.Tensor | None = None) -> TextEncoderOutput:
        # input_ids: (B, T) -> last_hidden_state (B, T, D); inputs_embeds: (B, T, D) token embeddings to use instead
        x = self.embeddings(input_ids, inputs_embeds)
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            states.append(x)
        last = self.final_layer_norm(x)
        return TextEncoderOutput(last, last[torch.arange(len(last)), self.eos_positions(input_ids)],
                                 tuple(states) if output_hidden_states else None)

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) index of each sequence's first EOS token. Configs with the old eos_token_id=2 pool at
        argmax(ids), as transformers does for them (EOS is the largest id in the CLIP vocabulary)."""
        if self.config.eos_token_id == 2:
            return ids.argmax(dim=-1)
        return (ids == self.config.eos_token_id).int().argmax(dim=-1)


class CLIPTextModelWithProjection(CLIPTextModel):
    """The text tower with CLIP's final projection of the pooled output (Radford et al. 2021, fig. 3's W_t):
    SDXL's second encoder, whose `text_embeds` (B, projection_dim) condition the UNet beside the tokens."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False,
                inputs_embeds: torch.Tensor | None = None) -> TextEncoderOutput:
        out = super().forward(input_ids, output_hidden_states, inputs_embeds)
        # in float64: a one-row product's float32 bits depend on the weight's memory layout and alignment (a
        # folder's and a single file's, stored transposed, differ); its float64 result rounded back does not
        w = self.text_projection.weight
        wide = torch.float32 if w.device.type == "mps" else torch.float64  # MPS has no float64
        out.text_embeds = (out.pooler_output.to(wide) @ w.to(wide).T).to(w.dtype)
        return out
