"""Speed and memory options give the plain path's images (issue 7)."""

import re

import numpy as np
import pytest
import torch

from sumie.pipeline import StableDiffusionPipeline

KW = dict(prompt="a cat", num_inference_steps=3, seed=1, output_type="np", height=64, width=64)


def plain_and(sd1_folder, enable):
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(**KW).images
    enable(pipe)
    return plain, pipe(**KW).images


def test_attention_slicing(sd1_folder):
    plain, sliced = plain_and(sd1_folder, lambda p: p.enable_attention_slicing(100))  # 1024 tokens in 11 chunks
    assert np.abs(plain - sliced).max() * 255 <= 0.01


def test_model_cpu_offload_runs_each_network_on_the_device(sd1_folder):
    plain, offloaded = plain_and(sd1_folder, lambda p: p.enable_model_cpu_offload("cpu"))
    assert np.array_equal(plain, offloaded)


def test_sequential_cpu_offload_moves_each_layer_for_its_forward(sd1_folder):
    pipe = []
    plain, offloaded = plain_and(sd1_folder, lambda p: (pipe.append(p), p.enable_sequential_cpu_offload("cpu")))
    assert np.array_equal(plain, offloaded)
    hooked = [m for m in pipe[0].unet.modules() if m._forward_pre_hooks]
    assert len(hooked) == sum(1 for m in pipe[0].unet.modules() if m._parameters or m._buffers) > 50
    assert all(p.device.type == "cpu" for p in pipe[0].unet.parameters())


def test_compile_matches_eager(sd1_folder):
    """On CPU, compile() packs every network's weights; the inductor backend compiles the UNet."""
    pipe = []
    plain, packed = plain_and(sd1_folder, lambda p: (pipe.append(p), p.compile()))
    assert np.abs(plain - packed).max() * 255 <= 0.05
    packed_layers = [m for m in pipe[0].unet.modules() if "_packed" in m.__dict__]
    assert len(packed_layers) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in pipe[0].unet.modules())
    plain, compiled = plain_and(sd1_folder, lambda p: p.compile(backend="inductor"))
    assert np.abs(plain - compiled).max() * 255 <= 0.05
    from sumie.errors import InputError
    for kwargs, needle in (({"backend": "jit"}, "unknown compile backend 'jit'"),
                           ({"mode": "max-autotune"}, "apply with pipe.compile(backend='inductor')")):
        with pytest.raises(InputError, match=re.escape(needle)):
            pipe[0].compile(**kwargs)


def test_packed_weights_follow_edits_and_step_aside_for_training():
    from sumie import packing
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Flatten(2), torch.nn.Linear(36, 5))
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        plain = model(x)
        packing.pack(model)
        assert torch.allclose(model(x), plain, atol=1e-5) and "_packed" in model[0].__dict__
        model[0].weight.mul_(2)  # an in-place edit: the packed copy is remade
        model[2].weight.zero_()
        assert torch.allclose(model(x), model[2].bias.expand(2, 16, 5), atol=1e-6)
        packing.unpack(model)
        assert "_packed" not in model[0].__dict__
    packing.pack(model)
    model(x).sum().backward()  # with gradients the ordinary forward runs, so training still works
    assert model[0].weight.grad is not None


def test_a_packed_linear_weight_serves_every_row_count():
    """One packed copy per Linear, made once: other row counts (another image size) reuse it."""
    from sumie import packing
    torch.manual_seed(0)
    linear = packing.pack(torch.nn.Linear(64, 48))
    with torch.no_grad():
        for rows in (2, 77, 1024):
            x = torch.randn(rows, 64)
            assert torch.allclose(linear(x), torch.nn.functional.linear(x, linear.weight, linear.bias), atol=1e-5)
            if rows == 2:
                first = linear.__dict__["_packed"][1]
            assert linear.__dict__["_packed"][1] is first


@pytest.mark.parametrize("shape", [(2, 256, 8, 8), (1, 256, 9, 13)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("m, tolerance", [(2, 1e-5), (4, 2e-4)])
def test_winograd_convolution_equals_the_direct_one(shape, bias, m, tolerance):
    """F(2x2, 3x3) and F(4x4, 3x3) on even and odd sizes, channels-last or not, within float rounding of a
    float64 conv (F(4x4, 3x3)'s transforms multiply by up to 8: a looser bound)."""
    from sumie import winograd
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], 384, 3, padding=1, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        exact = conv.double()(x.double())
        conv.float()
        U = winograd.transform_weight(conv.weight, m)
        assert U.shape == ((m + 2) ** 2, shape[1], 384) and U.is_contiguous()
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            y = winograd.conv3x3(inp, U, conv.bias)
            assert y.shape == exact.shape and (y.double() - exact).abs().max() < tolerance


def test_packed_convolutions_take_winograd_where_it_is_faster():
    """Winograd's transformed weight at 8x8 and up from 256 channels (F(4x4, 3x3) from 32x32, there from 128
    channels), nothing kept where im2col pays, else oneDNN's packing."""
    from sumie import packing
    torch.manual_seed(0)
    wide, narrow = torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.Conv2d(192, 192, 3, padding=1)
    wider = torch.nn.Conv2d(512, 512, 3, padding=1)  # 512 * 512 >= 6400 * 16: im2col at 4x4, batch 1
    with torch.no_grad():
        for conv, batch, size, kind in ((wide, 2, 8, ("winograd", 2)), (wide, 1, 16, ("winograd", 2)),
                                        (wide, 1, 32, ("winograd", 4)), (wide, 2, 4, (2, 256, 4, 4)),
                                        (narrow, 2, 8, (2, 192, 8, 8)), (narrow, 1, 32, ("winograd", 4)),
                                        (wider, 1, 4, None)):
            x = torch.randn(batch, conv.in_channels, size, size)
            plain = conv(x)
            packing.pack(conv)
            assert torch.allclose(conv(x), plain, atol=1e-4 if kind == ("winograd", 4) else 1e-5)
            assert (conv.__dict__["_packed"][0][2] if kind else conv.__dict__.get("_packed")) == kind
            conv.weight[0].zero_()  # an in-place edit: the transformed copy is remade
            assert conv(x)[:, 0].sub(conv.bias[0]).abs().max() < 1e-6
            packing.unpack(conv)


def test_vae_tiling_gives_the_plain_image(sd1_folder):
    """Bands of one row each (the smallest budget) at odd sizes, and a 512^2 image (64^2 latent), which
    `decode` already runs in bands: the one-call decoder's image, far within the issue's mean <= 1 level."""
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    for shape, band_mib in (((2, 4, 13, 9), 0), ((1, 4, 64, 64), 16)):
        z = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 5
        vae = pipe.vae
        with torch.no_grad():
            one_call = (vae.decoder(vae.post_quant_conv(z / vae.config.scaling_factor)) / 2 + 0.5).clamp(0, 1)
        pipe.disable_vae_tiling()
        default = pipe.decode(z)
        pipe.enable_vae_tiling(band_mib)
        tiled = pipe.decode(z)
        pipe.compile()  # packed convolutions may hand back channels-last tensors
        packed = pipe.decode(z)
        pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
        for image in (default, tiled, packed):
            assert image.shape == one_call.shape and (image - one_call).abs().max() * 255 < 0.01, shape


def test_packed_convolutions_keep_their_winograd_weight_in_bands():
    """After compile(), the VAE's bands run a wide conv by the transformed weight packing keeps, with the
    tiling of the whole input (F(4x4, 3x3) at 40x36 even for bands of a few rows), and give the plain result."""
    from sumie import packing, vae
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    x = torch.randn(1, 256, 40, 36)
    with torch.no_grad():
        plain = conv(x)
        packing.pack(conv)
        for budget in (1, 256 * 36 * 7):  # bands of one row, and of seven
            conv.__dict__.pop("_packed", None)
            bands = vae.conv_rows(conv, lambda lo, hi: x[:, :, lo:hi], 40, (1, 1), budget)
            assert conv.__dict__["_packed"][0][2] == ("winograd", 4)
            assert bands.shape == plain.shape and torch.allclose(bands, plain, atol=1e-4)


def test_vae_bands_are_exact_for_every_layer_kind(sd1_folder):
    """decode_tiled/encode_tiled with 1-row bands against decode/encode: upsampling, stride-2 downsampling
    with its one-sided padding, shortcut convs and whole-tensor GroupNorm statistics all line up."""
    from sumie.weights import load_model
    vae = load_model(sd1_folder).vae
    g = torch.Generator().manual_seed(1)
    x, z = torch.rand(1, 3, 40, 24, generator=g) * 2 - 1, torch.randn(1, 4, 7, 5, generator=g)
    with torch.no_grad():
        for a, b in ((vae.encode(x).mean, vae.encode_tiled(x, budget=1).mean),
                     (vae.decode(z), vae.decode_tiled(z, budget=1))):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_vae_bands_take_group_statistics_in_float32(sd1_folder):
    """In half precision the bands' GroupNorm statistics are float32, as in GroupNorm itself: activations
    whose variance overflows float16 (here 300^2 > 65504) still decode like the one-call path."""
    from sumie.weights import load_model
    vae = load_model(sd1_folder).vae.to(torch.bfloat16)
    z = torch.randn(1, 4, 9, 7, generator=torch.Generator().manual_seed(2)) * 300
    from sumie.vae import norm_silu
    norm = torch.nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 6, 5, generator=torch.Generator().manual_seed(3)) * 300
    with torch.no_grad():
        expected = torch.nn.functional.silu(norm(x))
        half = norm_silu(norm.half(), x.half())(x.half())
        assert torch.isfinite(half).all() and torch.allclose(half.float(), expected, atol=2e-2)
        one_call = vae.decoder(vae.post_quant_conv(z.bfloat16())).float()
        bands = vae.decode_tiled(z.bfloat16(), budget=1).float()
    assert (bands - one_call).abs().mean() < 0.02 * one_call.abs().mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_options_give_the_cpu_image(sd1_folder):
    """A seed gives the CPU's image on the GPU; so do banded decode, sequential offload (whose banded
    decode runs no forward hooks, so the weights must follow the input) and compile() (CUDA graphs)."""
    torch.backends.cudnn.allow_tf32 = False  # exact mode
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    cpu = pipe(**KW).images
    results = {"cuda": pipe.to("cuda")(**KW).images}
    pipe.enable_vae_tiling(0)
    results["banded"] = pipe(**KW).images
    results["compiled"] = pipe.compile()(**KW).images
    assert pipe._compiled is not None
    offloaded = StableDiffusionPipeline.from_pretrained(sd1_folder)
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_sequential_cpu_offload("cuda")
    offloaded.enable_vae_tiling(0)
    results["sequential offload"] = offloaded(**KW).images
    assert all(p.device.type == "cpu" for p in offloaded.vae.parameters())
    for name, images in results.items():
        assert np.abs(images - cpu).max() * 255 <= 0.05, name


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
    from sumie import convolution, winograd
    taken = []
    for name, module in (("im2col", convolution), ("winograd", winograd)):
        fn = getattr(module, {"im2col": "im2col_conv3x3", "winograd": "conv3x3"}[name])
        monkeypatch.setattr(module, fn.__name__, lambda *a, _fn=fn, _name=name: taken.append(_name) or _fn(*a))
    torch.manual_seed(0)
    conv = convolution.Conv2d(*channels, 3, padding=1)
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
    from sumie import convolution, winograd
    torch.manual_seed(0)
    w, b = torch.randn(256, 256, 3, 3) * 0.05, torch.randn(256)
    x = torch.randn(1, 256, 11, 10)
    exact = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=padding)
    with torch.no_grad():
        for y in (convolution.im2col_conv3x3(x, w, b, padding),
                  winograd.conv3x3(x, winograd.transform_weight(w), b, padding),
                  convolution.conv2d(x, w, b, padding=padding)):
            assert y.shape == exact.shape and (y.double() - exact).abs().max() < 2e-5


FAULTS = r"""
import resource, sys
import torch
from sumie.pipeline import StableDiffusionPipeline
StableDiffusionPipeline.from_pretrained(sys.argv[1])
counts = []
for i in range(9):  # 64 MiB, made and freed: over glibc's largest mmap threshold; faults of each
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
print(sorted(counts)[4])  # the median: now and then a small block lands in the freed one and a new one is made
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc settings")
def test_a_pipeline_keeps_freed_memory_for_reuse(sd1_folder):
    """Making a pipeline sets glibc's malloc to reuse freed blocks (sumie.allocator): 64 MiB made and
    freed again and again takes no page faults (median over the calls); SUMIE_KEEP_FREED_MEMORY=0 leaves
    glibc as it is: a fault per page, every call."""
    import os
    import subprocess
    import sys
    faults = {}
    for setting in ("1", "0"):
        env = dict(os.environ, SUMIE_KEEP_FREED_MEMORY=setting)
        done = subprocess.run([sys.executable, "-c", FAULTS, str(sd1_folder)], capture_output=True, text=True,
                              env=env, check=True)
        faults[setting] = int(done.stdout.split()[-1])
    pages = 16 * 2**20 * 4 // 4096
    assert faults["1"] < 0.1 * pages < 0.9 * pages <= faults["0"], faults
