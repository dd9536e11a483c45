"""3x3 convolution by Winograd's minimal filtering, F(2x2, 3x3): the CPU fast path's wide convolutions.

Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", sec. 4 and eq. 8. Each 2x2 block
of outputs is computed from the 4x4 input tile d around it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, per input/output channel pair)

and summing the elementwise products over input channels is 16 matrix multiplies, one per position of
the 4x4 tile. That is 16 multiplies per 4 outputs where a direct convolution does 36: 2.25x fewer. The
transforms B, G and A hold only 0, +-1 and +-1/2, so the result is as accurate as the direct sum: on SD's
layer shapes its max error against a float64 convolution is about 2e-6, oneDNN's 6e-6 to 1e-5.

What it buys depends on the shape. With 256 or more channels on both sides and at least 8x8 positions,
a 2-core AVX2 machine computes SD's 3x3 layers in 0.6-0.95x the time of oneDNN's packed convolution,
0.75x over those of a 256² UNet step (docs/benchmarks.md, "Winograd convolution"). With fewer channels
the transforms (memory traffic) outweigh the saved arithmetic, and at 4x4 positions the layer is bound
by reading its weights, which the transform makes 16/9 as large. `fits` encodes that rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])  # filter transform
TILE_ROWS = 128  # tiles per matrix multiply: the transformed tiles stay in cache


def same_3x3(conv: nn.Conv2d) -> bool:
    """A 3x3, stride 1, zero padding 1 convolution: output the size of the input."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def pays(in_channels: int, out_channels: int, height: int, width: int) -> bool:
    """Whether Winograd computes a 3x3 convolution of this shape faster (module docstring)."""
    return min(in_channels, out_channels) >= 256 and min(height, width) >= 8


def fits(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether `conv` on input x (B, C, H, W) is a 3x3 'same' convolution that Winograd computes faster."""
    return same_3x3(conv) and pays(conv.in_channels, conv.out_channels, *x.shape[-2:])


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """U = G g G^T for every channel pair: (O, C, 3, 3) -> (16, C, O), a transposed view of (16, O, C).

    U[4a + b] = sum over k, l of G[a, k] G[b, l] g[k, l]: one product with the Kronecker matrix G x G."""
    O, C = weight.shape[:2]
    GG = torch.kron(G, G).to(weight)  # (16, 9)
    return torch.mm(GG, weight.reshape(O * C, 9).t()).view(16, O, C).transpose(1, 2)


def _times_bt(d: list[torch.Tensor], out) -> None:
    """out[i] = sum over k of B^T[i, k] d[k], B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _input_transform(xp: torch.Tensor, V: torch.Tensor) -> None:
    """V = B^T d B for the 4x4 tiles d of xp at stride 2: (B, 2n+2, 2m+2, C) -> V (4, 4, B, n, m, C);
    B^T applied to rows, then columns."""
    n, m = V.shape[3:5]
    d = [xp[:, k:k + 2 * n:2] for k in range(4)]  # row k of every tile: (B, n, 2m+2, C)
    r = xp.new_empty(4, *d[0].shape)
    _times_bt(d, r)
    _times_bt([r[:, :, :, k:k + 2 * m:2] for k in range(4)], V.unbind(1))  # column k: (4, B, n, m, C)


def _output_transform(M: torch.Tensor, y: torch.Tensor) -> None:
    """y = A^T M A per tile: M (4, 4, B, n, m, O) -> y (B, n, 2, m, 2, O), the 2x2 outputs in place.

    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], applied to rows, then columns."""
    r = torch.stack([M[0] + M[1] + M[2], M[1] - M[2] - M[3]])  # (2, 4, B, n, m, O)
    s = r[:, 1] + r[:, 2]
    torch.add(r[:, 0], s, out=y[:, :, :, :, 0].permute(2, 0, 1, 3, 4))
    torch.sub(r[:, 1], r[:, 2], out=y[:, :, :, :, 1].permute(2, 0, 1, 3, 4)).sub_(r[:, 3])


def conv3x3(x: torch.Tensor, U: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int] = (1, 1)
            ) -> torch.Tensor:
    """F.conv2d(x, g, bias, padding=padding) with U = transform_weight(g), padding 0 or 1 on each axis:
    (B, C, H, W) -> (B, O, H + 2 * padding[0] - 2, W + 2 * padding[1] - 2).

    The result is channels-last in memory. Tiles go through in groups of TILE_ROWS."""
    B, C, H, W = x.shape
    O = U.shape[-1]
    (ph, pw), Ho, Wo = padding, H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    n, m = (Ho + 1) // 2, (Wo + 1) // 2  # tiles down and across
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, 2 * m + 2 - W - pw, ph, 2 * n + 2 - H - ph))  # (B, 2n+2, 2m+2, C)
    rows = max(1, TILE_ROWS // (B * m))  # tile rows per group
    y = x.new_empty(B, n, 2, m, 2, O)
    for i in range(0, n, rows):
        k = min(rows, n - i)
        V = x.new_empty(4, 4, B, k, m, C)
        _input_transform(xp[:, 2 * i:2 * (i + k) + 2], V)
        M = torch.bmm(V.view(16, -1, C), U).view(4, 4, B, k, m, O)
        if bias is not None:
            M[1, 1] += bias  # column 1 of A^T is (1, 1): this adds bias to all four outputs of a tile
        _output_transform(M, y[:, i:i + k])
    return y.view(B, 2 * n, 2 * m, O)[:, :Ho, :Wo].permute(0, 3, 1, 2)
