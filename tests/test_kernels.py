"""`speed.kernels`: each eager algorithm equals the direct convolution, and the pass takes the tuned one."""

import pytest
import torch

from sumie.speed.kernels import onednn_bfloat16


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd", "winograd4"])
@pytest.mark.parametrize("channels,size,batch", [((1280, 1280), 4, 2), ((640, 1280), 8, 2), ((320, 320), 9, 1),
                                                 ((64, 64), 16, 2)])
def test_each_eager_algorithm_equals_the_direct_convolution(force, monkeypatch, channels, size, batch, algorithm):
    """The models' Conv2d on CPU takes the algorithm tuning chose, within float rounding of a float64
    convolution; with gradients on, always F.conv2d."""
    from sumie.speed import kernels
    taken = []
    force(algorithm)
    for name, run in kernels.EAGER.items():
        monkeypatch.setitem(kernels.EAGER, name, lambda *a, _run=run, _name=name: taken.append(_name) or _run(*a))
    torch.manual_seed(0)
    conv = kernels.by_shape(torch.nn.Conv2d(*channels, 3, padding=1))
    x = torch.randn(batch, channels[0], size, size)
    with torch.no_grad():
        exact = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        y = conv(x)
    assert taken == [algorithm]
    assert y.shape == exact.shape and (y.double() - exact).abs().max() < (1e-4 if algorithm == "winograd4" else 2e-5)
    taken.clear()
    conv(x.requires_grad_()).sum().backward()
    assert taken == [] and conv.weight.grad is not None


@pytest.mark.parametrize("padding", [(0, 1), (1, 0), (0, 0)])
def test_eager_convolution_with_other_paddings(padding):
    """VAE bands convolve with no vertical padding (their rows carry it): each algorithm, padding 0 or 1,
    with a channels-last weight (a layout `.to(memory_format=...)` gives a model)."""
    from sumie.speed import kernels
    torch.manual_seed(0)
    w, b = (torch.randn(256, 256, 3, 3) * 0.05).contiguous(memory_format=torch.channels_last), torch.randn(256)
    x = torch.randn(1, 256, 11, 10)
    exact = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=padding)  # values up to ~5
    with torch.no_grad():
        for name, run in [*kernels.EAGER.items(), ("tuned", lambda *a: kernels.conv2d(*a[:3], padding=a[3]))]:
            y = run(x, w, b, padding)
            bound = 2e-4 if name == "winograd4" else 5e-5  # oneDNN's own: up to 3e-5; F(4x4, 3x3): 7e-5
            assert y.shape == exact.shape and (y.double() - exact).abs().max() < bound, name


@pytest.mark.skipif(not onednn_bfloat16(), reason="oneDNN computes no bfloat16 on this CPU")
@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd"])
def test_bfloat16_convolutions_are_tuned_apart_and_take_each_algorithm(force, monkeypatch, algorithm):
    """bfloat16 CPU inference takes the tuned algorithm too, under a key of its own, within bfloat16's
    rounding of a float64 convolution (the direct one's error is about 3e-3 of the largest value)."""
    from sumie.speed import kernels, tuning
    taken, keys = [], []
    force(algorithm)
    forced = tuning.choose
    monkeypatch.setattr(tuning, "choose", lambda key, *a: keys.append(key) or forced(key, *a))
    for name, run in kernels.EAGER.items():
        monkeypatch.setitem(kernels.EAGER, name, lambda *a, _run=run, _name=name: taken.append(_name) or _run(*a))
    torch.manual_seed(0)
    conv = kernels.by_shape(torch.nn.Conv2d(640, 640, 3, padding=1)).to(torch.bfloat16)
    x = torch.randn(2, 640, 8, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        exact = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        y = conv(x)
    assert taken == [algorithm] and keys == ["eager 3x3 640x8x8->640 pad 1,1 bfloat16"]
    assert y.dtype == torch.bfloat16 and (y.double() - exact).abs().max() < 1.5e-2 * exact.abs().max()


@pytest.mark.parametrize("algorithm", ["blas", "onednn"])
@pytest.mark.parametrize("x_shape,out,bias", [((2, 77, 768), 320, True), ((2, 16, 64), 32, False),
                                              ((3, 320), 1280, True), ((2, 8, 4, 96), 48, True)])
def test_each_linear_algorithm_equals_float64(force, monkeypatch, x_shape, out, bias, algorithm):
    """The models' Linear in float32 CPU inference takes the algorithm tuning chose, within float rounding of a
    float64 product, for inputs of 2 to 4 dimensions and a transposed (non-contiguous) one; with gradients on, or
    in bfloat16, always F.linear."""
    from sumie.speed import kernels
    if algorithm == "onednn" and not kernels.onednn_linear():
        pytest.skip("this torch has no oneDNN linear")
    taken = []
    force(algorithm)
    for name, run in kernels.LINEAR.items():
        monkeypatch.setitem(kernels.LINEAR, name, lambda *a, _run=run, _name=name: taken.append(_name) or _run(*a))
    torch.manual_seed(0)
    layer = kernels.by_shape(torch.nn.Sequential(torch.nn.Linear(x_shape[-1], out, bias=bias)))[0]
    x = torch.randn(x_shape)
    for x in (x, x.transpose(0, -2).contiguous().transpose(0, -2)):
        with torch.no_grad():
            exact = torch.nn.functional.linear(x.double(), layer.weight.double(),
                                               layer.bias.double() if bias else None)
            y = layer(x)
        assert y.shape == exact.shape and (y.double() - exact).abs().max() < 2e-5
    assert taken == [algorithm] * 2
    taken.clear()
    layer(x.requires_grad_()).sum().backward()
    with torch.no_grad():
        layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert taken == [] and layer.weight.grad is not None
