"""`speed.kernels`: the eager kernel choice picks by shape, and each algorithm equals the direct convolution."""

import pytest
import torch


@pytest.mark.parametrize("channels,size,batch,algorithm", [
    ((1280, 1280), 4, 2, "im2col"),  # the UNet's deepest level at 256^2: weights dwarf the input
    ((640, 1280), 8, 2, "im2col"),
    ((640, 640), 8, 2, "winograd"),
    ((320, 320), 9, 1, "winograd"),  # odd size
    ((1280, 1280), 16, 2, "direct"),  # neither: a Winograd weight this size costs more to make than it saves
    ((64, 64), 16, 2, "direct"),
])
def test_eager_convolution_picks_by_shape_and_equals_the_direct_one(monkeypatch, channels, size, batch, algorithm):
    """The models' Conv2d on CPU: im2col, Winograd (weights transformed per call) or F.conv2d, by shape,
    each within float rounding of a float64 convolution; with gradients on, always F.conv2d."""
    from sumie.speed import kernels, winograd
    taken = []
    for name, module in (("im2col", kernels), ("winograd", winograd)):
        fn = getattr(module, {"im2col": "im2col_conv3x3", "winograd": "conv3x3"}[name])
        monkeypatch.setattr(module, fn.__name__, lambda *a, _fn=fn, _name=name: taken.append(_name) or _fn(*a))
    torch.manual_seed(0)
    conv = kernels.by_shape(torch.nn.Conv2d(*channels, 3, padding=1))
    x = torch.randn(batch, channels[0], size, size)
    with torch.no_grad():
        exact = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        y = conv(x)
    assert taken == ([] if algorithm == "direct" else [algorithm])
    assert y.shape == exact.shape and (y.double() - exact).abs().max() < 2e-5
    taken.clear()
    conv(x.requires_grad_()).sum().backward()
    assert taken == [] and conv.weight.grad is not None


@pytest.mark.parametrize("padding", [(0, 1), (1, 0), (0, 0)])
def test_eager_convolution_with_other_paddings(padding):
    """VAE bands convolve with no vertical padding (their rows carry it): each algorithm, padding 0 or 1."""
    from sumie.speed import kernels, winograd
    torch.manual_seed(0)
    w, b = torch.randn(256, 256, 3, 3) * 0.05, torch.randn(256)
    x = torch.randn(1, 256, 11, 10)
    exact = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=padding)
    with torch.no_grad():
        for y in (kernels.im2col_conv3x3(x, w, b, padding),
                  winograd.conv3x3(x, winograd.transform_weight(w), b, padding),
                  kernels.conv2d(x, w, b, padding=padding)):
            assert y.shape == exact.shape and (y.double() - exact).abs().max() < 2e-5
