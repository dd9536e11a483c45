"""Pre-packed weights for CPU inference: the pass `pipe.compile()` applies on a CPU.

oneDNN, which runs torch's convolutions and matrix multiplies on x86 CPUs, computes on weights in a blocked
layout of its own. A plain `F.conv2d` / `F.linear` call converts the weight into that layout on every call;
for the UNet's 1280-channel layers at 8x8 or 16x16 positions the conversion costs about as much as the
arithmetic. `pack(model)` makes each Conv2d and Linear convert its weight once (a Conv2d for the input shape
it sees) and keep the converted copy. A 3x3 stride-1 convolution instead keeps the weight its algorithm
needs, the algorithm measured fastest for its shape on this machine (`tuning`, as in `kernels`), among
PACKED: oneDNN's packed weight, im2col on the weight as stored (no copy), Winograd F(2x2, 3x3) or
F(4x4, 3x3) on the transformed weight (16/9 or 4x the weight's size; F(4x4, 3x3) only in float32, and only
where that copy is small beside the layer's activations, `_fits`), and elsewhere F(4x4, 3x3) as eager
convolution runs it, its copy made on each call. Winograd's sums over input channels run either as one
oneDNN product per tile position, on packed matrices (faster where tiles are few: the UNet's small
images), or as one batched `torch.bmm` (faster on some of the VAE's many-tile layers); both are candidates.
The numbers are the same within the parity tests' tolerance. The process holds a second copy of most
weights, which is why this is an option and not the default; where the original is a view of the weights
file, its pages are given back once the copy is made (`pages.release`). Its speed and memory: docs/benchmarks.md.

Each layer keeps one copy, remade when the weight changes (in-place edits bump its version), when the
algorithm changes, or, for oneDNN's, when the input shape changes; a Linear's serves every number of rows.
The VAE's bands (`bands.conv_rows`) run every band of a layer by the algorithm tuned for its first band.
bfloat16 is packed as float32 is where oneDNN computes it (`kernels.onednn_bfloat16`). Anything else (training,
CUDA, float16, bfloat16 on other CPUs, torch.compile tracing) takes the layer's ordinary forward.
"""

from __future__ import annotations

import functools
import math
import types

import torch
from torch import nn

from . import allocator, pages, tuning, winograd
from . import kernels
from .kernels import cpu_inference, im2col_conv3x3, key


def _onednn(weight: torch.Tensor, shape, padding) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_convolution_weight(weight, list(padding), [1, 1], [1, 1], 1, list(shape))


def _onednn_conv(x, weight, bias, padding):
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(padding), [1, 1], [1, 1], 1, "none", [], "")


def _winograd_weights(m: int):
    """make() for F(m x m, 3x3): U = winograd.transform_weight(weight, m) as one oneDNN-packed (O, C) matrix per
    tile position, for `_winograd_conv`."""
    def make(weight, shape, padding) -> tuple:
        U = winograd.transform_weight(weight, m).transpose(1, 2)  # ((m+2)^2, O, C), contiguous
        return tuple(torch.ops.mkldnn._reorder_linear_weight(u, winograd.TILE_ROWS) for u in U)
    return make


def _batched_weights(m: int):
    """make() for F(m x m, 3x3) by one batched product (`winograd.conv3x3`): U contiguous, ((m+2)^2, C, O)."""
    return lambda weight, shape, padding: winograd.transform_weight(weight, m).contiguous()


def _winograd_conv(x, kept: tuple, bias, padding):
    # x: (B, C, H, W) -> (B, O, H', W'); kept: (m+2)^2 packed (O, C) matrices
    def product(V):  # ((m+2)^2, R, C) -> ((m+2)^2, R, O)
        return torch.stack([torch.ops.mkldnn._linear_pointwise(v, u, None, "none", [], "") for v, u in zip(V, kept)])
    return winograd.tiled(x, math.isqrt(len(kept)) - 2, kept[0].shape[0], product, bias, padding)


PACKED = {  # name -> (make(weight, input shape, padding) -> the weight kept, run(x, kept, bias, padding))
    "onednn": (_onednn, _onednn_conv),  # the reference
    "im2col": (lambda w, shape, padding: w, im2col_conv3x3),
    "winograd2": (_winograd_weights(2), _winograd_conv),
    "winograd4": (_winograd_weights(4), _winograd_conv),
    "winograd2 batched": (_batched_weights(2), winograd.conv3x3),
    "winograd4 batched": (_batched_weights(4), winograd.conv3x3),
    "winograd4 per call": (lambda w, shape, padding: w, kernels.EAGER["winograd4"]),  # eager's: nothing kept
}


def stamp(tensors) -> tuple[tuple, list]:
    """What something computed from `tensors` stays valid for: (their addresses and versions, which in-place
    edits bump; the tensors, detached). Whoever keeps the result holds the tensors too, so that their memory
    is not reused while it lives: a LoRA replaces a layer's weight by a new tensor (`lora.LoRAs.apply`), and
    one the allocator placed where the freed weight was, at version 0, would match addresses and versions."""
    held = [t.detach() for t in tensors]
    return tuple((t.data_ptr(), t._version) for t in held), held


def _kept(module: nn.Module, name: str, shape_key, make) -> torch.Tensor:
    """module's weight as algorithm `name` keeps it, for inputs keyed by `shape_key`; only the latest is kept,
    with the weight it was made from (`stamp`)."""
    marks, held = stamp([module.weight])
    valid_for = (name, marks, shape_key)
    kept = module.__dict__.pop("_packed", None)
    if kept is None or kept[0] != valid_for:
        kept = None  # the old copy is freed before the new one is made
        with allocator.own_mappings():  # a copy remade for another size leaves no hole in the heap
            kept = (valid_for, make(), held)
        if kept[1] is not module.weight:
            pages.release(module.weight)  # the original's file pages, read again only if the weight is
    module.__dict__["_packed"] = kept
    return kept[1]


WINOGRAD4_MAX_GROWTH = 36  # F(4x4, 3x3)'s kept weight copy, at most this many times one image's output (_fits)


def _fits(name: str, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether PACKED algorithm `name` is a candidate for x (B, C, H, W), by memory: im2col where its columns fit;
    F(4x4, 3x3) on a kept copy in float32 where that copy (36 C O values), kept for as long as the model, is at
    most WINOGRAD4_MAX_GROWTH times the layer's output for one image (O H W values), so that it stays small
    beside the activations: 36 C <= WINOGRAD4_MAX_GROWTH H W, i.e. no more input channels than positions (the
    UNet's 640- and 960-channel layers at 32x32 qualify, 640 at 16x16 not); F(4x4, 3x3) with its copy made on
    each call where eager convolution offers it and a kept one is not offered (`kernels.fits`)."""
    if name in ("winograd4", "winograd4 batched"):
        return x.dtype == torch.float32 and 36 * x.shape[1] <= WINOGRAD4_MAX_GROWTH * x.shape[-2] * x.shape[-1]
    if name == "winograd4 per call":
        return kernels.fits("winograd4", x, weight) and not _fits("winograd4", x, weight)
    return kernels.fits(name, x, weight)


def algorithm(conv: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int]) -> str:
    """The PACKED algorithm `tuning` keeps for this 3x3 stride-1 `conv` of x (B, C, H, W), timed on
    `tuning.sample(x)`."""
    weight, bias = conv.weight, conv.bias

    def candidates():  # made only when the key has no choice yet: the sample is a copy
        some = tuning.sample(x)
        return {name: functools.partial(run, some, make(weight, some.shape, padding), bias, padding)
                for name, (make, run) in PACKED.items() if _fits(name, x, weight)}
    return tuning.choose(key("packed", x, conv.out_channels, padding), tuple(PACKED), candidates)


def conv3x3(conv: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int], name: str | None = None) -> torch.Tensor:
    """conv(x) for a 3x3 stride-1 `conv`, with `padding` (0 or 1 on each axis) in place of its own, by PACKED
    algorithm `name`, by default the one tuned for the shape: (B, C, H, W) -> (B, O, H', W')."""
    name = name or algorithm(conv, x, padding)
    make, run = PACKED[name]
    shape_key = (tuple(x.shape), tuple(padding)) if name == "onednn" else None
    return run(x, _kept(conv, name, shape_key, lambda: make(conv.weight, x.shape, padding)), conv.bias, padding)


def packed_3x3(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether `conv` is a packed 3x3 stride-1 convolution and x an input `conv3x3` runs (CPU inference)."""
    forward = conv.__dict__.get("forward")
    return (getattr(forward, "__func__", None) is _conv2d and winograd.plain_3x3(conv) and x.dim() == 4
            and cpu_inference(x, conv.weight))


def _conv2d(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    # x: (B, C_in, H, W) -> (B, C_out, H', W')
    if not cpu_inference(x, self.weight) or x.dim() != 4:
        return type(self).forward(self, x)  # nn.Conv2d's forward (this one is the instance's)
    if winograd.plain_3x3(self):
        return conv3x3(self, x, self.padding)
    args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
    weight = _kept(self, "onednn", tuple(x.shape),
                   lambda: torch.ops.mkldnn._reorder_convolution_weight(self.weight, *args, list(x.shape)))
    return torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *args, "none", [], "")


def _linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # x: (..., in) -> (..., out)
    if not cpu_inference(x, self.weight):
        return type(self).forward(self, x)
    rows = x.numel() // x.shape[-1]  # a hint for the layout; a weight packed for any count serves every count
    weight = _kept(self, "linear", None, lambda: torch.ops.mkldnn._reorder_linear_weight(self.weight, rows))
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
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        m.__dict__.pop("forward", None)
        m.__dict__.pop("_packed", None)
    return model
