"""bfloat16 on the CPU (`torch_dtype=torch.bfloat16`): every sampler and every network runs and stays close to
float32, packed or not, and the NaN guard works in it. The networks compute in bfloat16; the sampler's latents,
noise and guidance stay float32 (pipeline.denoise).

The bounds are mean levels of 255 per image. On sumie-tiny, 6 steps, two prompts, an AMD EPYC (AVX-512 BF16)
gave at most 6.0 (Heun); a trajectory that forks to another shape moves single pixels by up to 200 levels, so
maxima are not bounded. An image that is wrong (guidance dropped, noise) is off by tens of levels."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sumie import (NumericalError, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                   StableDiffusionPipeline, StableDiffusionXLPipeline)
from sumie.schedulers.adapter import Scheduler
from sumie.schedulers.registry import SAMPLERS
from sumie.speed.kernels import onednn_bfloat16

BF16, F32 = torch.bfloat16, torch.float32
BOUND = 12  # mean levels, each image
PROMPTS = ["a red circle on a blue background", "a green square"]


def levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference of each image of (B, H, W, 3) arrays in [0, 1], in levels of 255."""
    return np.abs(a - b).reshape(len(a), -1).mean(1) * 255


def pair(cls, model, **kw):
    pipes = {dtype: cls.from_pretrained(model, torch_dtype=dtype, **kw) for dtype in (F32, BF16)}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


def close(pipes, **kw) -> np.ndarray:
    """Run both pipelines alike; the bfloat16 images are finite and near float32's. Returns bfloat16's."""
    full, half = (pipes[d](**kw, output_type="np").images for d in (F32, BF16))
    assert np.isfinite(half).all() and levels(half, full).max() < BOUND, levels(half, full)
    return half


@pytest.fixture(scope="module")
def tiny():
    return pair(StableDiffusionPipeline, "sumie-tiny")


@pytest.mark.parametrize("sampler_id", list(SAMPLERS))
def test_every_sampler_in_bfloat16_is_close_to_float32(tiny, sampler_id):
    for p in tiny.values():
        p.scheduler = Scheduler.from_config(p.scheduler.config, sampler_id)
    close(tiny, prompt=PROMPTS, num_inference_steps=6, seed=3)


def test_packed_bfloat16_is_close_to_eager(tiny):
    """compile() packs bfloat16 weights (speed.packing) where oneDNN computes bfloat16: near eager bfloat16."""
    kw = dict(prompt=PROMPTS, num_inference_steps=4, seed=4, output_type="np")
    half = tiny[BF16]
    half.scheduler = Scheduler.from_config(half.scheduler.config, "euler")
    eager = half(**kw).images
    packed = pair(StableDiffusionPipeline, "sumie-tiny")[BF16].compile()
    packed.scheduler = Scheduler.from_config(half.scheduler.config, "euler")
    images = packed(**kw).images
    kept = ["_packed" in m.__dict__ for m in (packed.unet.conv_in, packed.vae.decoder.conv_out)]
    assert kept == [onednn_bfloat16()] * 2  # elsewhere bfloat16 takes the ordinary forward
    assert np.isfinite(images).all() and levels(images, eager).max() < BOUND


def test_img2img_and_inpainting_in_bfloat16():
    """The VAE's encoder, and inpainting's masked blend, in bfloat16."""
    checks = (np.kron(np.eye(2), np.ones((32, 32))) * 200 + 30).astype(np.uint8)
    init = Image.fromarray(np.stack([checks, 255 - checks, checks], -1))
    close(pair(StableDiffusionImg2ImgPipeline, "sumie-tiny"), prompt=PROMPTS[0], image=init, strength=0.6,
          num_inference_steps=6, seed=5)
    mask = Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16))
    close(pair(StableDiffusionInpaintPipeline, "sumie-tiny"), prompt=PROMPTS[1], image=init, mask_image=mask,
          num_inference_steps=6, seed=6)


def test_taesd_and_lora_in_bfloat16(sd1_folder, tmp_path):
    """TAESD as the decoder, and a LoRA fused into bfloat16 weights."""
    from oracle import write_taesd

    from sumie.weights import load_tiny_vae
    write_taesd(tmp_path / "taesd")
    pipes = pair(StableDiffusionPipeline, sd1_folder)
    for dtype, p in pipes.items():
        p.vae = load_tiny_vae(tmp_path / "taesd", dtype=dtype)
    close(pipes, prompt="a cat", num_inference_steps=3, height=48, width=40, seed=5)
    tiny = pair(StableDiffusionPipeline, "sumie-tiny")
    plain = tiny[BF16](prompt="a diamond", num_inference_steps=6, seed=7, output_type="np").images
    for p in tiny.values():
        p.load_lora_weights(Path(__file__).parent / "data" / "tiny-diamond-lora.safetensors")
    half = close(tiny, prompt="a diamond", num_inference_steps=6, seed=7)
    assert levels(half, plain).max() > BOUND  # the LoRA acted


def test_sdxl_in_bfloat16(tmp_path):
    """SDXL's two text encoders, pooled text and size numbers in bfloat16: latents near float32's."""
    from oracle import write_xl_folder
    pipes = pair(StableDiffusionXLPipeline, write_xl_folder(tmp_path / "xl", seed=20))
    kw = dict(prompt="a cat", num_inference_steps=4, height=64, width=64, output_type="latent", seed=1)
    full, half = (pipes[d](**kw).images.float() for d in (F32, BF16))
    assert torch.isfinite(half).all() and (half - full).abs().mean() < 0.05 * full.abs().mean()


def test_a_bfloat16_decode_that_gives_nan_is_redone_in_float32(tiny):
    """The NaN guard: a bfloat16 VAE output with NaN is decoded again in float32 (bfloat16 keeps float32's
    range, so here the NaN is put in by a hook on the decoder's last layer whenever it runs in bfloat16)."""
    half = tiny[BF16]
    hook = half.vae.decoder.conv_out.register_forward_hook(
        lambda m, args, out: out.masked_fill(torch.ones_like(out, dtype=torch.bool), float("nan"))
        if out.dtype == BF16 else out)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    try:
        image = half.decode(z)
        assert half.vae.dtype == BF16 and torch.isfinite(image).all()
        half.vae.float()
        expected = half.decode(z)
    finally:
        half.vae.to(BF16)
        hook.remove()
    assert (image - expected).abs().max() < 1e-6


def test_nan_from_a_bfloat16_unet_is_a_clear_error(tiny):
    half = tiny[BF16]
    hook = half.unet.register_forward_hook(lambda m, args, out: out * float("nan"))
    try:
        with pytest.raises(NumericalError, match="NaN or Inf"):
            half(prompt="a cat", num_inference_steps=2, seed=0)
    finally:
        hook.remove()


def test_server_serves_in_bfloat16(tiny):
    """`sumie serve --dtype bfloat16`: A1111's txt2img answers with the bfloat16 pipeline's image, not float32's."""
    import base64
    import io

    import httpx
    from server_util import Server
    s = Server("--model", "sumie-tiny", "--dtype", "bfloat16")
    try:
        body = dict(prompt=PROMPTS[0], seed=3, steps=6, width=64, height=64, cfg_scale=5, sampler_name="Euler")
        r = httpx.post(s.url + "/sdapi/v1/txt2img", json=body, timeout=300)
        assert r.status_code == 200, r.text
    finally:
        s.stop()
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"), float)
    for p in tiny.values():
        p.scheduler = Scheduler.from_config(p.scheduler.config, "euler")
    full, half = (np.round(tiny[d](PROMPTS[0], seed=3, num_inference_steps=6, guidance_scale=5, output_type="np",
                                   prompt_syntax="a1111").images[0] * 255) for d in (F32, BF16))
    assert np.abs(served - half).max() <= 1 < np.abs(served - full).max()
