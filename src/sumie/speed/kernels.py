"""Kernel choice, a pass on a built model: on CPU inference, each 3x3 convolution and each float32 Linear runs
by the exact algorithm measured fastest for its shape on this machine (`tuning`).

oneDNN, which runs `F.conv2d` on x86 CPUs, converts the weight into its own blocked layout on every call.
Where the weights are large and the image small (the UNet's 1280-channel layers at 8x8 and 4x4 positions)
that conversion can cost more than the arithmetic. Four algorithms, all exact up to float rounding:

- direct: `F.conv2d`, the reference;
- im2col: the 3x3 neighbourhoods unfolded into columns, then one matrix product with the weight as it
  is stored (Chellapilla et al. 2006). It copies the input 9 times, so it is a candidate only where the
  copy of one image stays under IM2COL_MAX_BYTES (a bound on memory, not a rule about speed);
- Winograd F(2x2, 3x3) (`sumie.speed.winograd`) with the weight transformed on each call;
- Winograd F(4x4, 3x3) the same way, in float32, where its transformed weight (4x the weight's size) stays
  under WINOGRAD4_MAX_BYTES (a bound on memory, as for im2col).

A Linear has two, both on the weight as stored:

- blas: `F.linear`, the reference (in float32 torch calls a BLAS, MKL on x86);
- onednn: oneDNN's own matrix product, `torch.ops.mkldnn._linear_pointwise`, which `compile()` calls on a
  packed weight; it takes the plain one too.

`by_shape(model)` gives every zero-padded Conv2d and every Linear of a model a forward that takes the
algorithm `tuning` chose for its shape. Nothing is cached in the model, so memory stays that of the weights.
Anything but float32 CPU inference, or for convolutions bfloat16 where oneDNN computes it (`onednn_bfloat16`),
takes `F.conv2d` or `F.linear`; so does everything with SUMIE_TUNE=0. A bfloat16 convolution is tuned apart
from a float32 one (`key`).
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F
from torch import nn

from . import tuning, winograd

IM2COL_MAX_BYTES = 64 << 20  # im2col's columns for one image, at most
WINOGRAD4_MAX_BYTES = 64 << 20  # F(4x4, 3x3)'s transformed weight, made on each call, at most


@functools.cache
def onednn_bfloat16() -> bool:
    """Whether oneDNN computes bfloat16 on this CPU (it needs AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX), tried once
    on a small weight: an ISA cap (ONEDNN_MAX_CPU_ISA) can hide what the CPU lists."""
    try:
        torch.ops.mkldnn._reorder_convolution_weight(torch.zeros(1, 1, 3, 3, dtype=torch.bfloat16), [1, 1], [1, 1],
                                                     [1, 1], 1, [1, 1, 3, 3])
    except (RuntimeError, AttributeError):
        return False
    return True


def cpu_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Float32 (or, where oneDNN computes it, bfloat16) CPU inference outside torch.compile tracing: where the CPU
    algorithms apply."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype
            and (x.dtype == torch.float32 or x.dtype == torch.bfloat16 and onednn_bfloat16())
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.compiler.is_compiling())


def im2col_fits(x: torch.Tensor) -> bool:
    """Whether im2col's columns for one image of x (B, C, H, W) stay under IM2COL_MAX_BYTES."""
    return 9 * x[0].numel() * x.element_size() <= IM2COL_MAX_BYTES


def fits(name: str, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether EAGER algorithm `name` is a candidate for x (B, C, H, W) and weight (O, C, 3, 3), by memory: im2col
    where its columns fit, F(4x4, 3x3) in float32 where its transformed weight (36 C O values) stays under
    WINOGRAD4_MAX_BYTES. Not F(4x4, 3x3) in bfloat16: its transforms' large coefficients (Lavin and Gray 2016)
    take its error to about 30x the direct convolution's there."""
    if name == "im2col":
        return im2col_fits(x)
    if name == "winograd4":
        return x.dtype == torch.float32 and 36 * weight.shape[0] * weight.shape[1] * 4 <= WINOGRAD4_MAX_BYTES
    return True


def key(mode: str, x: torch.Tensor, out_channels: int, padding) -> str:
    """The name of a 3x3 convolution's shape and dtype for `tuning`: everything but the batch."""
    C, H, W = x.shape[1:]
    dtype = "" if x.dtype == torch.float32 else f" {str(x.dtype).removeprefix('torch.')}"
    return f"{mode} 3x3 {C}x{H}x{W}->{out_channels} pad {padding[0]},{padding[1]}{dtype}"


def im2col_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   padding: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=padding) as a matrix product: (B, C, H, W) -> (B, O, H', W')."""
    B, C, H, W = x.shape
    O = weight.shape[0]
    columns = F.unfold(x, 3, padding=padding)  # (B, 9C, H'W'): row 9c + 3i + j is x[c] at offset (i, j) of a window
    weight = weight.reshape(O, 9 * C)  # a copy if weight is channels-last
    if x.dtype == torch.float32:
        y = torch.matmul(weight, columns)  # (B, O, H'W')
    else:  # torch's batched bfloat16 product with a shared weight is slow: a product per image
        y = columns.new_empty(B, O, columns.shape[-1])
        for i in range(B):
            torch.mm(weight, columns[i], out=y[i])
    if bias is not None:
        y += bias[:, None]
    return y.view(B, O, H + 2 * padding[0] - 2, W + 2 * padding[1] - 2)


EAGER = {  # name -> (x, weight, bias, padding) -> F.conv2d(x, weight, bias, padding=padding); the reference first
    "direct": lambda x, w, b, p: F.conv2d(x, w, b, padding=p),
    "im2col": im2col_conv3x3,
    "winograd": lambda x, w, b, p: winograd.conv3x3(x, winograd.transform_weight(w), b, p),
    "winograd4": lambda x, w, b, p: winograd.conv3x3(x, winograd.transform_weight(w, 4), b, p),
}


def algorithm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding) -> str:
    """The EAGER algorithm `tuning` keeps for this 3x3 convolution of x (B, C, H, W), timed on `tuning.sample(x)`."""
    def candidates():  # made only when the key has no choice yet: the sample is a copy
        some = tuning.sample(x)
        return {name: (lambda run=run: run(some, weight, bias, padding)) for name, run in EAGER.items()
                if fits(name, x, weight)}
    return tuning.choose(key("eager", x, weight.shape[0], padding), tuple(EAGER), candidates)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride=1, padding=(0, 0),
           dilation=1, groups=1) -> torch.Tensor:
    """F.conv2d with the same arguments (padding as a pair); a 3x3 stride-1 convolution with padding 0 or 1
    on each axis runs by the algorithm measured fastest for its shape (above): (B, C, H, W) -> (B, O, H', W')."""
    plain_3x3 = (weight.shape[-2:] == (3, 3) and stride in (1, (1, 1)) and dilation in (1, (1, 1))
                 and groups == 1 and max(padding) <= 1)
    if plain_3x3 and x.dim() == 4 and cpu_inference(x, weight):
        return EAGER[algorithm(x, weight, bias, padding)](x, weight, bias, tuple(padding))
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


@functools.cache
def onednn_linear() -> bool:
    """Whether this torch has oneDNN's linear (built with oneDNN, as x86 and aarch64 Linux wheels are)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


LINEAR = {  # name -> (x, weight, bias) -> F.linear(x, weight, bias); the reference first
    "blas": F.linear,
    "onednn": lambda x, w, b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
}


def linear_algorithm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """The LINEAR algorithm `tuning` keeps for x (B, ..., in) times weight (out, in), timed on
    `tuning.images(x)`; its key names the rows of one image, not the batch."""
    def candidates():  # made only when the key has no choice yet: the images are a copy
        some = tuning.images(x)
        return {name: (lambda run=run: run(some, weight, bias)) for name, run in LINEAR.items()}
    rows = x[0].numel() // x.shape[-1]
    return tuning.choose(f"eager linear {weight.shape[1]}->{weight.shape[0]} rows {rows}", tuple(LINEAR), candidates)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias), in float32 CPU inference by the LINEAR algorithm measured fastest for its
    shape: (B, ..., in) -> (B, ..., out). bfloat16 takes F.linear, which calls oneDNN already."""
    if x.dtype == torch.float32 and x.dim() >= 2 and cpu_inference(x, weight) and onednn_linear():
        return LINEAR[linear_algorithm(x, weight, bias)](x, weight, bias)
    return F.linear(x, weight, bias)


def _forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    # x: (B, C_in, H, W) -> (B, C_out, H', W')
    return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # x: (..., in) -> (..., out)
    return linear(x, self.weight, self.bias)


def by_shape(model: nn.Module) -> nn.Module:
    """Give every zero-padded Conv2d of `model` the forward `conv2d`, and every Linear the forward `linear`, in
    place (undone by `packing.unpack`)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.forward = types.MethodType(_forward, m)
        elif type(m) is nn.Linear:
            m.forward = types.MethodType(_linear_forward, m)
    return model
