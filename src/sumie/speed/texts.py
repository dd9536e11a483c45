"""Cross-attention's keys and values computed once per text, not at every step.

A cross-attention's keys and values, to_k(context) and to_v(context), depend only on the text encoding and
the layer's weights, and a sampler calls the UNet with the same text encoding at every step: for SD 1.5, 32
products of (2 x 77, 768) by (768, 320..1280) per guided step, recomputed by diffusers each time.

`remember(unet)` makes the UNet compare each call's `encoder_hidden_states` with the last new one, bit for
bit, and every cross-attention reuse the keys and values it computed for that text while its to_k and to_v
are unchanged: the same weight tensors at the same versions (an in-place edit or a LoRA's new tensor is
noticed) and the same forwards (`packing.pack` changes them: the keys are computed again, packed). One
text is remembered, so a CPU batch of different prompts, which runs image by image, gains nothing. What the
UNet computes is unchanged, bit for bit. Skipped with gradients (training) and while torch.compile traces.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from ..layers import Attention
from ..unet import TransformerBlock
from .packing import stamp


class _Text:
    """A UNet's text: the last new encoder_hidden_states (a copy), a count of new ones, and the tensor the
    running call got (None between calls)."""

    def __init__(self):
        self.seen: torch.Tensor | None = None
        self.count = 0
        self.current: torch.Tensor | None = None

    def see(self, context: torch.Tensor) -> None:
        if self.seen is None or not same_bits(self.seen, context):
            self.seen, self.count = context.detach().clone(), self.count + 1
        self.current = context


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b hold the same bits (0.0 and -0.0 differ; a NaN equals the same NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


def _inference() -> bool:
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _forward(self: nn.Module, *args, **kwargs):
    # the UNet's forward, with its text noted for the call: (sample, timestep, encoder_hidden_states, ...)
    context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
    text = self.__dict__["_text"]
    if not _inference() or not isinstance(context, torch.Tensor):
        return type(self).forward(self, *args, **kwargs)
    text.see(context)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        text.current = None


def _keys_values(self: Attention, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Attention.keys_values, reused while the text and the weights are the same
    text = self.__dict__["_text"]
    if context is not text.current or not _inference():
        return Attention.keys_values(self, context)
    marks, held = stamp(p for p in (self.to_k.weight, self.to_k.bias, self.to_v.weight, self.to_v.bias)
                        if p is not None)
    forwards = [getattr(m.__dict__.get("forward"), "__func__", None) for m in (self.to_k, self.to_v)]  # `packing`
    valid_for = (text.count, marks, forwards)
    kept = self.__dict__.get("_keys_values")
    if kept is None or kept[0] != valid_for:
        kept = self.__dict__["_keys_values"] = (valid_for, held, Attention.keys_values(self, context))
    return kept[2]


def remember(unet: nn.Module) -> nn.Module:
    """Give `unet` (sumie's UNet) and its cross-attentions the forwards that reuse keys and values, in place."""
    text = _Text()
    unet.__dict__["_text"] = text
    unet.forward = types.MethodType(_forward, unet)
    for m in unet.modules():
        if isinstance(m, TransformerBlock):
            m.attn2.__dict__["_text"] = text
            m.attn2.keys_values = types.MethodType(_keys_values, m.attn2)
    return unet
