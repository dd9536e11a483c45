"""Speed and memory options give the plain path's images (issue 7)."""

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
    plain, compiled = plain_and(sd1_folder, lambda p: p.compile())
    assert np.abs(plain - compiled).max() * 255 <= 0.05


def test_vae_tiling_covers_the_image(sd1_folder):
    """Tiles are blended where they overlap; with one tile covering the latent the result is the plain one."""
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    z = torch.randn(1, 4, 40, 36, generator=torch.Generator().manual_seed(0))
    plain = pipe.decode(z)
    pipe.enable_vae_tiling(tile=64, overlap=16)
    assert torch.equal(pipe.decode(z), plain)
    pipe.enable_vae_tiling(tile=16, overlap=8)
    tiled = pipe.decode(z)
    assert tiled.shape == plain.shape and torch.isfinite(tiled).all()


def test_tiled_blend_is_exact_for_local_functions():
    """The blend itself adds no seams: for a pointwise function tiled == untiled."""
    from sumie.vae import tiled
    x = torch.randn(1, 3, 50, 70)
    fn = lambda t: torch.nn.functional.interpolate(t.tanh(), scale_factor=2, mode="nearest")
    assert torch.allclose(tiled(fn, x, 16, 6, 2), fn(x), atol=1e-6)
