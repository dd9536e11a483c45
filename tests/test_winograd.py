"""`speed.winograd`: F(2x2, 3x3) and F(4x4, 3x3) equal a float64 convolution within rounding."""

import itertools

import pytest
import torch


@pytest.mark.parametrize("shape", [(2, 256, 8, 8), (1, 256, 9, 13)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("m, tolerance", [(2, 1e-5), (4, 2e-4)])
def test_winograd_convolution_equals_the_direct_one(shape, bias, m, tolerance):
    """F(2x2, 3x3) and F(4x4, 3x3) on even and odd sizes, channels-last or not, with the transformed weight as
    made (eager) and contiguous (packed), within float rounding of a float64 conv (F(4x4, 3x3)'s transforms
    multiply by up to 8: a looser bound)."""
    from sumie.speed import winograd
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], 384, 3, padding=1, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        exact = conv.double()(x.double())
        conv.float()
        U = winograd.transform_weight(conv.weight, m)
        assert U.shape == ((m + 2) ** 2, shape[1], 384) and U.transpose(1, 2).is_contiguous()
        for inp, kept in itertools.product((x, x.contiguous(memory_format=torch.channels_last)), (U, U.contiguous())):
            y = winograd.conv3x3(inp, kept, conv.bias)
            assert y.shape == exact.shape and (y.double() - exact).abs().max() < tolerance
