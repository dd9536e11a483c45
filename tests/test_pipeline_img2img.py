"""`pipeline`'s img2img and inpainting pipelines: images equal diffusers' StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline on small random SD 1 / SD 2 (v-prediction) folders, for 4-channel UNets and for
9-channel inpainting UNets, with a non-square image and a batch of two."""

import numpy as np
import pytest
import torch
from PIL import Image

from oracle import write_model_folder
from sumie.errors import InputError
from sumie.pipeline import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

INIT = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
_mask = np.zeros((40, 56), np.uint8)
_mask[8:30, 10:40] = 255
MASK = Image.fromarray(_mask)  # white: repaint
SAMPLERS = ["pndm", "ddim", "euler-a", "dpm++2m"]  # the four; the others at one strength below
STRENGTHS = [0.3, 0.75, 1.0]


def pair(ours_cls, theirs_name, folder):
    import diffusers
    ours = ours_cls.from_pretrained(folder)
    theirs = getattr(diffusers, theirs_name).from_pretrained(folder, safety_checker=None)
    for p in (ours, theirs):
        p.set_progress_bar_config(disable=True)
    return ours, theirs


def use_sampler(theirs, sampler_id: str) -> None:
    """diffusers' scheduler for `sampler_id`, from the folder's config (PNDM without its Runge-Kutta steps, which
    sumie does not implement and SD folders do not use)."""
    import diffusers
    from sumie.schedulers import SAMPLERS as ALL
    extra = {"algorithm_type": "sde-dpmsolver++"} if sampler_id == "dpm++2m-sde" else {}
    extra = {"skip_prk_steps": True} if sampler_id == "pndm" else extra
    config = getattr(theirs, "_sumie_config", None) or theirs.scheduler.config
    theirs._sumie_config = config
    theirs.scheduler = getattr(diffusers, ALL[sampler_id].diffusers).from_config(config, **extra)


def assert_equal(ours, theirs, sampler_id: str, **kw) -> np.ndarray:
    """Both pipelines' images for two prompts (a batch of two) from seeds 3 and 4, within 2 levels of 255."""
    use_sampler(theirs, sampler_id)
    kw = dict(prompt=["a red circle", "a blue square"], num_inference_steps=4, output_type="np", **kw)
    a = theirs(**kw, generator=[torch.Generator().manual_seed(3 + i) for i in range(2)]).images
    b = ours(**kw, seed=3, scheduler=sampler_id).images
    assert a.shape == b.shape == (2, 40, 56, 3)
    assert np.abs(a - b).max() * 255 <= 2, (sampler_id, kw.get("strength"), np.abs(a - b).max() * 255)
    return b


def cases(models: list[str], samplers: list[str]) -> list:
    """(model, sampler, strength), every combination (about 35 s in all on 2 cores)."""
    return [pytest.param(m, s, strength, id=f"{m}-{s}-{strength}")
            for m in models for s in samplers for strength in STRENGTHS]


@pytest.fixture(scope="module")
def pipes(sd1_folder, sd2_folder, tmp_path_factory):
    """pipes(kind, inpainting) -> (ours, theirs), each pair built once. kind: "sd1-4", "sd2-9", ..."""
    made = {}

    def get(kind: str, inpainting: bool):
        if (kind, inpainting) not in made:
            model, channels = kind.split("-")
            folder = {"sd1": sd1_folder, "sd2": sd2_folder}[model]
            if channels == "9":
                folder = write_model_folder(tmp_path_factory.mktemp(kind), model, seed=20, inpainting=True)
            names = ("StableDiffusionInpaintPipeline" if inpainting else "StableDiffusionImg2ImgPipeline")
            made[kind, inpainting] = pair(StableDiffusionInpaintPipeline if inpainting else
                                          StableDiffusionImg2ImgPipeline, names, folder)
        return made[kind, inpainting]
    return get


@pytest.mark.parametrize("kind,sampler_id,strength", cases(["sd1-4", "sd2-4"], SAMPLERS))
def test_img2img_equals_diffusers(pipes, kind, sampler_id, strength):
    """The last strength * steps steps, from the init image's latents noised there, the VAE's posterior drawing
    from each image's generator before the noise does. PLMS starts as diffusers' does (see from_strength)."""
    assert_equal(*pipes(kind, False), sampler_id, image=INIT, strength=strength)


@pytest.mark.parametrize("sampler_id", ["euler", "heun", "lms", "ddpm", "dpm++2m-sde", "unipc"])
def test_img2img_other_samplers_equal_diffusers(pipes, sampler_id):
    assert_equal(*pipes("sd1-4", False), sampler_id, image=INIT, strength=0.75)


@pytest.mark.parametrize("kind,sampler_id,strength", cases(["sd1-4", "sd1-9", "sd2-4", "sd2-9"], SAMPLERS))
def test_inpainting_equals_diffusers(pipes, kind, sampler_id, strength):
    """A 9-channel UNet sees the mask and the masked image's latents; a 4-channel one gets the image's own latents,
    noised to each next step's level, put back where the mask is black after every step."""
    assert_equal(*pipes(kind, True), sampler_id, image=INIT, mask_image=MASK, strength=strength, height=40, width=56)


@pytest.mark.parametrize("sampler_id", ["euler", "heun", "lms", "ddpm", "dpm++2m-sde", "unipc"])
def test_inpainting_other_samplers_equal_diffusers(pipes, sampler_id):
    assert_equal(*pipes("sd1-4", True), sampler_id, image=INIT, mask_image=MASK, strength=0.75, height=40, width=56)


def test_plms_exact_start_is_the_fix_on_top(sd1_folder):
    """exact_plms: PLMS starts at the kept steps, not one early with a step skipped: other numbers than diffusers',
    and at strength 1 (nothing cut) the same."""
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd1_folder)
    kw = dict(image=INIT, num_inference_steps=8, seed=1, scheduler="pndm", output_type="np")
    calls = []
    pipe.set_progress_bar_config(disable=True)
    as_diffusers = pipe("x", strength=0.5, **kw, callback_on_step_end=lambda p, i, t, d: calls.append(int(t)) or d)
    pipe.exact_plms = True
    exact = pipe("x", strength=0.5, **kw, callback_on_step_end=lambda p, i, t, d: calls.append(int(t)) or d).images
    # of 876, 751, ..., 1 the last 4: diffusers' warm-up begins one step early; the exact one repeats its second step
    assert calls == [501, 376, 251, 126, 1] + [376, 251, 251, 126, 1]
    assert np.abs(exact - as_diffusers.images).max() > 0.01
    full = [pipe("x", strength=1.0, **kw).images for pipe.exact_plms in (True, False)]
    assert np.array_equal(*full)


def test_img2img_keeps_more_of_the_image_at_a_lower_strength(pipes):
    ours, theirs = pipes("sd1-4", False)
    init = np.asarray(INIT, dtype=np.float32) / 255
    use_sampler(theirs, "euler")
    kw = dict(prompt="x", image=INIT, strength=0.6, num_inference_steps=10, output_type="np")
    one = theirs(**kw, generator=torch.Generator().manual_seed(1)).images  # one generator, not a list
    assert np.abs(ours(**kw, scheduler="euler", generator=torch.Generator().manual_seed(1)).images - one).max() * 255 <= 2
    far = [np.abs(ours("x", image=INIT, strength=s, num_inference_steps=10, seed=2, output_type="np").images[0]
                  - init).mean() for s in (0.2, 1.0)]
    assert far[0] < far[1]
    for bad, needle in (({"strength": 1.5}, "strength must be from 0 to 1"), ({"strength": 0.05}, "leaves no steps"),
                        ({"image": None}, "give an init image")):
        with pytest.raises(InputError, match=needle):
            ours("x", **{"image": INIT, "num_inference_steps": 10, **bad})


def test_inpainting_keeps_the_unmasked_latents_and_changes_the_masked(sd1_folder):
    """A 4-channel UNet: outside the mask the final latents are the image's own, exactly; inside they are not."""
    pipe = StableDiffusionInpaintPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    latents = pipe("x", image=INIT, mask_image=MASK, num_inference_steps=4, seed=1, output_type="latent").images
    from sumie.images import image_tensor
    x0 = pipe.vae.encode(image_tensor(INIT)).sample(torch.Generator().manual_seed(1)) * pipe.vae.config.scaling_factor
    keep = torch.ones(20, 28, dtype=torch.bool)  # this VAE halves: pixel rows 8-29 and columns 10-39 -> 4-14, 5-19
    keep[4:15, 5:20] = False
    assert torch.equal(latents[0][:, keep], x0[0][:, keep])
    assert (latents[0][:, ~keep] - x0[0][:, ~keep]).abs().mean() > 0.1


@pytest.mark.parametrize("kind", ["sd1-9", "sd2-9"])
def test_from_pipe_shares_the_networks_and_an_inpainting_unet_runs_text_to_image(pipes, kind):
    """from_pipe copies nothing. Text to image with a 9-channel UNet runs as A1111 runs it: the whole image masked,
    over a grey image's latents."""
    ours, _ = pipes(kind, True)
    plain = StableDiffusionPipeline.from_pipe(ours)
    assert plain.unet is ours.unet and plain.loras is ours.loras and type(plain) is StableDiffusionPipeline
    image = plain("x", num_inference_steps=3, seed=1, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and image.std() > 0.01
    with pytest.raises(InputError, match="give an image and a mask"):
        ours("x", image=INIT)
    with pytest.raises(InputError, match="strength must be from 0 to 1"):
        ours("x", image=INIT, mask_image=MASK, strength=-0.1)


def test_an_inpainting_single_file_is_detected_by_its_unet_input_channels(pipes, tmp_path):
    """A 9-channel checkpoint in the original layout: the shapes say 9 input channels, and the file gives the
    folder's inpainting images."""
    from safetensors.torch import load_file
    from sumie.config import SD15
    from sumie.weights import convert
    from sumie.weights.original import detect_unet, split_components
    ours, _ = pipes("sd1-9", True)
    single = convert(ours.source, tmp_path / "inpainting.safetensors")
    detected = detect_unet(split_components(load_file(single))["unet"], SD15)
    assert detected.in_channels == 9 and detected.block_out_channels == ours.unet.config.block_out_channels
    again = StableDiffusionInpaintPipeline.from_single_file(single, config=ours.source)
    assert again.unet.config.in_channels == 9
    kw = dict(image=INIT, mask_image=MASK, num_inference_steps=3, seed=5, output_type="np")
    assert np.array_equal(again("x", **kw).images, ours("x", **kw).images)
