"""`pipeline`: images equal diffusers' StableDiffusionPipeline on small random SD1 / SD2 (v-prediction) folders
(img2img and inpainting: test_pipeline_img2img.py)."""

import numpy as np
import pytest
import torch

from sumie.errors import InputError
from sumie.pipeline import StableDiffusionPipeline

CASES = [
    ("sd1", "pndm", dict(prompt="a red circle", num_inference_steps=4)),
    ("sd1", "euler", dict(prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"], num_inference_steps=3)),
    ("sd1", "ddim", dict(prompt="no guidance", guidance_scale=1.0, num_inference_steps=3, height=48, width=64)),
    ("sd1", "dpm++2m", dict(prompt="batch", num_images_per_prompt=2, num_inference_steps=3)),
    ("sd1", "lms", dict(prompt="word " * 90, num_inference_steps=3)),
    ("sd2", "ddim", dict(prompt="v prediction", num_inference_steps=4, height=40, width=56)),
    ("sd2", "heun", dict(prompt="heun", num_inference_steps=3)),
    ("sd2", "unipc", dict(prompt="unipc", negative_prompt="ugly", num_inference_steps=4)),
    ("sd1", "lcm", dict(prompt="lcm", num_images_per_prompt=2, num_inference_steps=4, guidance_scale=1.5)),
    ("sd2", "lcm", dict(prompt="lcm v", num_inference_steps=6, guidance_scale=1.0)),
]


def diffusers_images(folder, sampler_id, kwargs, seeds):
    import diffusers
    from sumie.schedulers import SAMPLERS
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    cls = getattr(diffusers, SAMPLERS[sampler_id].diffusers)
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(**kwargs, generator=gens, output_type="np").images


@pytest.mark.parametrize("kind,sampler_id,kwargs", CASES, ids=[f"{k}-{s}-{i}" for i, (k, s, _) in enumerate(CASES)])
def test_images_equal_diffusers(sd1_folder, sd2_folder, kind, sampler_id, kwargs):
    folder = {"sd1": sd1_folder, "sd2": sd2_folder}[kind]
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    n = (1 if isinstance(kwargs["prompt"], str) else len(kwargs["prompt"])) * kwargs.get("num_images_per_prompt", 1)
    ours = pipe(**kwargs, seed=100, scheduler=sampler_id, output_type="np").images
    theirs = diffusers_images(folder, sampler_id, kwargs, [100 + i for i in range(n)])
    assert ours.shape == theirs.shape
    diff = np.abs(np.round(ours * 255) - np.round(theirs * 255)).max()
    assert diff <= 2, diff
    assert ours.std() > 0.01  # not a flat image


def test_seed_reproduces_single_image(sd1_folder):
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    batch = pipe("x", num_images_per_prompt=3, num_inference_steps=2, seed=7, output_type="np").images
    single = pipe("x", num_inference_steps=2, seed=8, output_type="np").images
    assert np.allclose(batch[1], single[0], atol=1e-5)


@pytest.mark.parametrize("model", ["sd1", "sumie-tiny"])
def test_an_image_in_a_batch_has_exactly_its_numbers_alone(model, sd1_folder):
    """On a CPU, image i of a batch (mixed prompts, guided) equals the same image made alone, bit for bit, in
    the latents and the pixels: the networks see one image at a time, whose kernels then do not depend on the
    batch's size. (Batched, sumie-tiny's UNet differed by 1e-6 between a batch of 4 and of 2 on an AMD EPYC.)"""
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder if model == "sd1" else model)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a small red circle in the top left corner on a blue background", "a large green square"]
    kw = dict(num_inference_steps=4, guidance_scale=5.0, negative_prompt=["blurry", "dark"])
    for out in ("latent", "pt"):
        batch = pipe(prompts, num_images_per_prompt=2, seed=42, output_type=out, **kw).images
        for i in range(4):
            alone = pipe(prompts[i // 2], seed=42 + i, output_type=out, num_inference_steps=4, guidance_scale=5.0,
                         negative_prompt=kw["negative_prompt"][i // 2]).images
            assert torch.equal(batch[i:i + 1], alone), (out, i, (batch[i:i + 1] - alone).abs().max())


def test_diffusers_arguments_sumie_ignores_are_named_and_unknown_ones_refused(sd1_folder):
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder, safety_checker=None, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=1, seed=0, output_type="latent")
    with pytest.warns(UserWarning, match=r"eta=0\.5 is not implemented by sumie and is ignored"):
        pipe("x", eta=0.5, **kw)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # diffusers' defaults change nothing: no warning
        pipe("x", eta=0.0, return_dict=True, callback_on_step_end_tensor_inputs=["latents"], **kw)
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_inference_step'"):
        pipe("x", num_inference_step=3)
    with pytest.warns(UserWarning, match="device_map='auto' is not implemented"):
        StableDiffusionPipeline.from_pretrained(sd1_folder, device_map="auto")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(height=500), "height must be a multiple of 8 (got 500); try 496 or 504"),
    (dict(width=0), "width must be a positive integer"),
    (dict(width=8192), "at most 4096"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(num_images_per_prompt=65), "num_images_per_prompt must be from 1 to 64"),
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "negative_prompt has 3 entries"),
    (dict(scheduler="nope"), "unknown scheduler 'nope'"),
])
def test_validation(sd1_folder, kwargs, needle):
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    with pytest.raises(InputError) as info:
        pipe(**{"prompt": "x", "num_inference_steps": 2, **kwargs})
    assert needle in str(info.value)


def test_nan_latents_raise_clear_error(sd1_folder):
    from sumie.errors import NumericalError
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    with pytest.raises(NumericalError):
        pipe.decode(torch.full((1, 4, 4, 4), float("nan")))


def test_half_precision_decode_that_overflows_is_redone_in_float32(sd1_folder):
    """diffusers returns NaN (black) images when the float16 VAE overflows; sumie decodes again in float32."""
    half = StableDiffusionPipeline.from_pretrained(sd1_folder, torch_dtype=torch.float16)
    full = StableDiffusionPipeline.from_pretrained(sd1_folder, torch_dtype=torch.float16).to(torch.float32)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3000  # overflows float16 only
    with torch.no_grad():
        assert not torch.isfinite(half.vae.decode((z / half.vae.config.scaling_factor).half())).all()
    image = half.decode(z)
    assert half.vae.dtype == torch.float16 and torch.isfinite(image).all()
    assert (image - full.decode(z)).abs().max() < 1e-5


def test_image_grid(sd1_folder):
    from sumie import image_grid
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("x", num_images_per_prompt=3, num_inference_steps=1, seed=1, height=32, width=48).images
    grid = image_grid(images, rows=1, cols=3)
    assert grid.size == (144, 32)
    assert grid.crop((48, 0, 96, 32)).tobytes() == images[1].tobytes()
    with pytest.raises(InputError, match="rows \\* cols = 4"):
        image_grid(images, rows=2, cols=2)


def test_callback_interrupt_and_scheduler_swap(sd1_folder):
    from sumie.compat import EulerDiscreteScheduler
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, float(t), kwargs["latents"].shape))
        if i == 1:
            p._interrupt = True
        return kwargs

    stopped = pipe("x", num_inference_steps=5, seed=3, output_type="latent", callback_on_step_end=callback).images
    assert [s[0] for s in seen] == [0, 1] and seen[0][2] == (1, 4, 16, 16)
    full = pipe("x", num_inference_steps=5, seed=3, output_type="latent").images
    assert not torch.allclose(stopped, full)

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    swapped = pipe("x", num_inference_steps=3, seed=3, output_type="np").images
    named = pipe("x", num_inference_steps=3, seed=3, scheduler="euler", output_type="np").images
    assert np.array_equal(swapped, named)


def test_long_prompt_warns_with_dropped_words(sd1_folder):
    from sumie.tokenizer import TruncationWarning
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(TruncationWarning, match="purple elephant"):
        pipe("a " * 75 + "purple elephant", num_inference_steps=1, height=16, width=16)


def test_single_generator_equals_diffusers(sd1_folder):
    """One generator for a whole batch draws all latents at once, as diffusers does."""
    import diffusers
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    ref = diffusers.StableDiffusionPipeline.from_pretrained(sd1_folder, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", num_images_per_prompt=2, num_inference_steps=3, output_type="np")
    ours = pipe(**kw, generator=torch.Generator().manual_seed(7)).images
    theirs = ref(**kw, generator=torch.Generator().manual_seed(7)).images
    assert np.abs(np.round(ours * 255) - np.round(theirs * 255)).max() <= 2
    assert not np.allclose(ours[0], ours[1])


@pytest.mark.parametrize("dtype,mean_levels", [(torch.float16, 1.0), (torch.bfloat16, 4.0)])
def test_half_precision_pipeline_close_to_float32(sd1_folder, dtype, mean_levels):
    """Same seed, same image up to precision: the noise is drawn in float32 on the CPU whatever the dtype."""
    half = StableDiffusionPipeline.from_pretrained(sd1_folder, torch_dtype=dtype)
    full = StableDiffusionPipeline.from_pretrained(sd1_folder)
    for p in (half, full):
        p.set_progress_bar_config(disable=True)
    a = half("a cat", num_inference_steps=3, seed=1, output_type="np").images
    b = full("a cat", num_inference_steps=3, seed=1, output_type="np").images
    assert np.isfinite(a).all() and np.abs(a - b).mean() * 255 < mean_levels
