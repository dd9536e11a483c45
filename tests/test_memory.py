"""`speed.memory`: attention slicing, offloading and VAE bands give the plain path's images; offloading moves
each network (or layer) to the device only while it runs."""

import numpy as np
import pytest
import torch

from sumie.pipeline import StableDiffusionPipeline

KW = dict(prompt="a cat", num_inference_steps=3, seed=1, output_type="np", height=64, width=64)


def test_attention_slicing(plain_and):
    plain, sliced = plain_and(lambda p: p.enable_attention_slicing(100))  # 1024 tokens in 11 chunks
    assert np.abs(plain - sliced).max() * 255 <= 0.01


def test_model_cpu_offload_runs_each_network_on_the_device(plain_and):
    plain, offloaded = plain_and(lambda p: p.enable_model_cpu_offload("cpu"))
    assert np.array_equal(plain, offloaded)


def test_sequential_cpu_offload_moves_each_layer_for_its_forward(plain_and):
    pipe = []
    plain, offloaded = plain_and(lambda p: (pipe.append(p), p.enable_sequential_cpu_offload("cpu")))
    assert np.array_equal(plain, offloaded)
    hooked = [m for m in pipe[0].unet.modules() if m._forward_pre_hooks]
    assert len(hooked) == sum(1 for m in pipe[0].unet.modules() if m._parameters or m._buffers) > 50
    assert all(p.device.type == "cpu" for p in pipe[0].unet.parameters())


@pytest.mark.parametrize("sequential", [False, True])
def test_offloading_moves_weights_to_the_device_only_while_they_run(sd1_folder, monkeypatch, sequential):
    """"cpu:0" stands in for an accelerator: the same memory, but each move names it. Whole-network offload
    moves a network there for its forward only, with the others away; sequential offload does the same for
    every layer that has weights. Nothing stays on the device afterwards. Fails when nothing moves."""
    from sumie.speed import memory
    device = torch.device("cpu:0")
    where = {}  # id(module) -> the device it was last moved to
    real_to, real_move = torch.nn.Module.to, memory.move

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)):
            where[id(self)] = torch.device(target)
        return real_to(self, *args, **kwargs)

    def move(module, target):
        where[id(module)] = torch.device(target)
        real_move(module, target)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    monkeypatch.setattr(memory, "move", move)
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    (pipe.enable_sequential_cpu_offload if sequential else pipe.enable_model_cpu_offload)(device)
    networks = [pipe.text_encoder, pipe.unet, pipe.vae]
    runs = [m for net in networks for m in net.modules() if m._parameters] if sequential else networks
    seen = []

    def on_device(module, args):
        others = [n for n in networks if n is not module] if not sequential else []
        seen.append(where.get(id(module)) == device and all(where.get(id(n)) != device for n in others))

    for m in runs:
        m.register_forward_pre_hook(on_device)  # after offload's own hooks: sees the weights placed
    pipe(**KW)
    assert len(seen) >= len(networks) and all(seen)
    assert all(where.get(id(m)) != device for m in runs)


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
