"""3x3 convolution by Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3): the CPU fast path's
wide convolutions.

Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", sec. 4 and eq. 8. Each m x m block
of outputs is computed from the (m+2) x (m+2) input tile d around it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, per input/output channel pair)

and summing the elementwise products over input channels is (m+2)^2 matrix multiplies, one per position of
the tile: 16 multiplies per 4 outputs for m = 2, 36 per 16 for m = 4, where a direct convolution does 9 per
output (2.25x and 4x fewer). Each transform is one matrix product too: on tiles flattened row by row,
B^T d B = (B^T x B^T) d with x the Kronecker product, so a group of tiles goes through B^T, G or A^T in one
product with a small (m+2)^2-wide matrix instead of a pass per coefficient.

- F(2x2, 3x3): B, G and A hold only 0, +-1 and +-1/2, so the result is as accurate as the direct sum.
  Eager convolution (`kernels`) and the fast path (`packing`) use it.
- F(4x4, 3x3) (interpolation points 0, +-1, +-2): its transforms multiply by up to 8, so its rounding error
  is several times the direct sum's (still under 1e-5 of the largest output in float32). It needs 1.78x
  fewer multiplies than F(2x2, 3x3) and moves fewer values per output through its transforms, but its
  transformed weight is 4x the weight's size, so both users offer it only in float32 and only where that
  copy is small (`kernels.fits`, `packing._fits`).

What it buys depends on the shape and the CPU: with few channels the transforms (memory traffic) outweigh
the saved arithmetic, and at 4x4 positions a layer is bound by reading its weights, which the transform
makes 16/9 as large. So it is one candidate among others, chosen where it is measured fastest (`tuning`).
Its errors against float64: docs/benchmarks.md ("Winograd convolution").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Tiling(NamedTuple):
    """The transforms of F(m x m, 3x3); rows of B^T and A^T as coefficient tuples (Lavin & Gray 2016, sec. 4)."""
    m: int  # outputs per tile side; tiles are (m + 2) x (m + 2) inputs
    BT: tuple  # (m+2, m+2): input transform
    G: tuple  # (m+2, 3): filter transform
    AT: tuple  # (m, m+2): output transform; its column 1 is all ones (see conv3x3's bias)


F2 = Tiling(2, BT=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
            G=((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
            AT=((1, 1, 1, 0), (0, 1, -1, -1)))
F4 = Tiling(4, BT=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
                   (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
            G=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
               (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
            AT=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)))
TILINGS = {2: F2, 4: F4}
TILE_ROWS = 128  # tiles per matrix multiply: the transformed tiles stay in cache


def plain_3x3(conv: nn.Conv2d) -> bool:
    """A 3x3, stride 1 convolution with zero padding 0 or 1 on each axis: what `conv3x3` computes."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and max(conv.padding) <= 1
            and not isinstance(conv.padding, str) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def transform_weight(weight: torch.Tensor, m: int = 2) -> torch.Tensor:
    """U = G g G^T of F(m x m, 3x3) for every channel pair: (O, C, 3, 3) -> ((m+2)^2, C, O), a view of a
    ((m+2)^2, O, C) tensor: the layout made without moving the weight, which eager convolution pays for on
    every call. Its `.contiguous()` (O varying fastest) is what the packed path keeps.

    U[t a + b] = sum over k, l of G[a, k] G[b, l] g[k, l] (t = m + 2): one product with the Kronecker matrix
    G x G. Computed in the weight's dtype: F(4x4, 3x3)'s G holds sixths, but a U computed in float64 and
    rounded once gave the convolution the same error (4.6e-5 against 4.7e-5 on a 512-channel layer)."""
    O, C = weight.shape[:2]
    GG = torch.kron(*[torch.tensor(TILINGS[m].G, dtype=weight.dtype, device=weight.device)] * 2)  # (t^2, 9)
    return torch.mm(GG, weight.reshape(O * C, 9).t()).view(-1, O, C).transpose(1, 2)


def _kron(rows: tuple, like: torch.Tensor) -> torch.Tensor:
    """M x M (Kronecker) for the coefficient rows M of a transform, as a tensor like `like`: on a tile
    flattened row by row, (M x M) vec(d) = vec(M d M^T), so one matrix product transforms every tile."""
    M = torch.tensor(rows, dtype=like.dtype, device=like.device)
    return torch.kron(M, M)


def conv3x3(x: torch.Tensor, U: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int] = (1, 1)
            ) -> torch.Tensor:
    """F.conv2d(x, g, bias, padding=padding) with U = transform_weight(g, m), padding 0 or 1 on each axis:
    (B, C, H, W) -> (B, O, H + 2 * padding[0] - 2, W + 2 * padding[1] - 2).

    m follows from U's size. The result is channels-last in memory. Tiles go through in groups of TILE_ROWS."""
    return tiled(x, math.isqrt(U.shape[0]) - 2, U.shape[-1], lambda V: torch.bmm(V, U), bias, padding)


def tiled(x: torch.Tensor, m: int, O: int, product, bias: torch.Tensor | None, padding: tuple[int, int] = (1, 1)
          ) -> torch.Tensor:
    """`conv3x3` by F(m x m, 3x3), O output channels, with the sums over input channels given: product(V), for V
    ((m+2)^2, R, C) the transformed input of R tiles, is ((m+2)^2, R, O), V[p] U[p] at each tile position p
    (one batched product in `conv3x3`; the packed path's runs one oneDNN product per position)."""
    T = TILINGS[m]
    t = m + 2
    B, C, H, W = x.shape
    (ph, pw), Ho, Wo = padding, H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    n, j = -(-Ho // m), -(-Wo // m)  # tiles down and across
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, m * j + 2 - W - pw, ph, m * n + 2 - H - ph))  # (B, mn+2, mj+2, C)
    BB, AA = _kron(T.BT, x), _kron(T.AT, x)  # (t^2, t^2), (m^2, t^2)
    rows = max(1, TILE_ROWS // (B * j))  # tile rows per group
    y = x.new_empty(B, n, m, j, m, O)
    for i in range(0, n, rows):
        k = min(rows, n - i)
        d = xp[:, m * i:m * (i + k) + 2].unfold(1, t, m).unfold(2, t, m)  # the tiles: (B, k, j, C, t, t), a view
        V = torch.mm(BB, d.permute(4, 5, 0, 1, 2, 3).reshape(t * t, -1))  # B^T d B: (t^2, B k j C)
        M = product(V.view(t * t, -1, C))  # (t^2, B k j, O)
        if bias is not None:
            M[t + 1] += bias  # column 1 of A^T is all ones: this adds bias to all m x m outputs of a tile
        Y = torch.mm(AA, M.view(t * t, -1)).view(m, m, B, k, j, O)  # A^T M A
        y[:, i:i + k] = Y.permute(2, 3, 0, 4, 1, 5)
    return y.view(B, m * n, m * j, O)[:, :Ho, :Wo].permute(0, 3, 1, 2)
