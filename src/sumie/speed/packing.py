"""Pre-packed weights for CPU inference: the pass `pipe.compile()` applies on a CPU.

oneDNN, which runs torch's convolutions and matrix multiplies on x86 CPUs, computes on weights in a blocked
layout of its own. A plain `F.conv2d` / `F.linear` call converts the weight into that layout on every call;
for the UNet's 1280-channel layers at 8x8 or 16x16 positions the conversion costs about as much as the
arithmetic. `pack(model)` makes each Conv2d and Linear convert its weight once (a Conv2d for the input shape
it sees) and keep the packed copy. Wide 3x3 convolutions instead keep their Winograd-transformed weights
(`winograd.fast_tile`: F(2x2, 3x3), or F(4x4, 3x3) where the image is large beside the weight). Where the
image is small beside the weight (the UNet's 1280-channel layers at 4x4 positions), im2col on the weight as
stored (`kernels.im2col_pays`) keeps no copy. The numbers are the same within the parity tests' tolerance;
the process holds a second, packed copy of most weights (16/9 or 4x the size for Winograd layers), which is
why this is an option and not the default. Its speed and memory: docs/benchmarks.md.

The VAE's bands (`bands.conv_rows`) run each wide convolution by the same transformed weight
(`winograd_weight`). The packed copy is remade when the weight changes (in-place edits bump its version) or
a convolution's input shape changes; a Linear's serves every number of rows. Anything but float32 CPU
inference (training, CUDA, half precision, torch.compile tracing) takes the layer's ordinary forward.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from . import winograd
from .kernels import cpu_inference, im2col_conv3x3, im2col_pays


def _packed(module: nn.Module, shape_key, make) -> torch.Tensor:
    """module's packed weight for inputs keyed by `shape_key`; only the latest one is kept."""
    key = (module.weight.data_ptr(), module.weight._version, shape_key)
    cached = module.__dict__.pop("_packed", None)
    if cached is None or cached[0] != key:
        cached = None  # the old copy is freed before the new one is made
        cached = (key, make())
    module.__dict__["_packed"] = cached
    return cached[1]


def winograd_weight(conv: nn.Conv2d, x: torch.Tensor, height: int, width: int) -> torch.Tensor | None:
    """The Winograd-transformed weight a packed `conv` keeps for inputs of `height` x `width` positions, of
    which x is all or a piece; None where the conv is not packed or takes another algorithm. For callers
    that convolve in pieces (the VAE's bands): the tiling follows the whole input, so it is made once."""
    m = winograd.fast_tile(conv, height, width)
    if "forward" not in conv.__dict__ or not cpu_inference(x, conv.weight) or x.dim() != 4 or m is None:
        return None
    return _packed(conv, ("winograd", m), lambda: winograd.transform_weight(conv.weight, m))


def _conv2d(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    # x: (B, C_in, H, W) -> (B, C_out, H', W')
    if not cpu_inference(x, self.weight) or x.dim() != 4:
        return type(self).forward(self, x)  # nn.Conv2d's forward (this one is the instance's)
    U = winograd_weight(self, x, *x.shape[-2:])
    if U is not None:
        return winograd.conv3x3(x, U, self.bias)
    if winograd.same_3x3(self) and im2col_pays(x, self.weight):  # 4x4 positions: faster than oneDNN's packing
        return im2col_conv3x3(x, self.weight, self.bias)
    args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
    weight = _packed(self, tuple(x.shape),
                     lambda: torch.ops.mkldnn._reorder_convolution_weight(self.weight, *args, list(x.shape)))
    return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *args, "none", [], "")


def _linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # x: (..., in) -> (..., out)
    if not cpu_inference(x, self.weight):
        return type(self).forward(self, x)
    rows = x.numel() // x.shape[-1]  # a hint for the layout; a weight packed for any count serves every count
    weight = _packed(self, "linear", lambda: torch.ops.mkldnn._reorder_linear_weight(self.weight, rows))
    return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def pack(model: nn.Module) -> nn.Module:
    """Give every Conv2d (zero padding, numeric) and Linear of `model` a packed-weight forward, in place."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.forward = types.MethodType(_conv2d, m)
        elif type(m) is nn.Linear:
            m.forward = types.MethodType(_linear, m)
    return model


def unpack(model: nn.Module) -> nn.Module:
    """Undo `pack` (and `kernels.by_shape`): nn's own forwards, packed copies freed."""
    for m in model.modules():
        m.__dict__.pop("forward", None)
        m.__dict__.pop("_packed", None)
    return model
