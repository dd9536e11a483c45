"""SDXL (`xl`, and the SDXL options of `unet`, `text_encoder`, `config`): networks and images equal
diffusers' / transformers' on small random SDXL-shaped folders written by the oracles, the presets equal the
published configs, and the full-size architectures' parameters equal the oracles'."""

import json

import numpy as np
import pytest
import torch

from oracle import TOL, max_diff, published, shapes, write_xl_folder
from safetensors.torch import load_file, save_file
from sumie.config import PRESETS, SDXL, SDXL_REFINER, TextEncoderConfig, UNetConfig, VAEConfig
from sumie.errors import InputError
from sumie.pipeline import StableDiffusionPipeline
from sumie.xl import StableDiffusionXLPipeline


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory):
    return write_xl_folder(tmp_path_factory.mktemp("sdxl"), seed=20)


@pytest.fixture(scope="module")
def refiner_folder(tmp_path_factory):
    return write_xl_folder(tmp_path_factory.mktemp("sdxl-refiner"), seed=30, refiner=True)


@pytest.mark.parametrize("preset", [SDXL, SDXL_REFINER], ids=lambda p: p.name)
def test_the_sdxl_presets_are_the_published_configs(preset):
    for component, cls in (("unet", UNetConfig), ("vae", VAEConfig), ("text_encoder_2", TextEncoderConfig)):
        assert getattr(preset, component) == cls.from_dict(published(f"{preset.name}_{component}")), component
    if preset.text_encoder is not None:
        assert preset.text_encoder == TextEncoderConfig.from_dict(published("sdxl_text_encoder"))
    scheduler = published(f"{preset.name}_scheduler")
    assert {k: scheduler.get(k) for k in preset.scheduler} == dict(preset.scheduler)
    assert PRESETS[preset.name] is preset


@pytest.mark.parametrize("preset", [SDXL, SDXL_REFINER], ids=lambda p: p.name)
def test_full_size_parameters_equal_the_oracles(preset):
    import diffusers
    import transformers

    from sumie.text_encoder import CLIPTextModelWithProjection
    from sumie.unet import UNet2DConditionModel
    with torch.device("meta"):
        ours = UNet2DConditionModel(preset.unet)
        theirs = diffusers.UNet2DConditionModel.from_config(published(f"{preset.name}_unet"))
        assert shapes(ours) == shapes(theirs)
        ours = CLIPTextModelWithProjection(preset.text_encoder_2)
        theirs = transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig(**published(f"{preset.name}_text_encoder_2")))
        assert shapes(ours) == shapes(theirs)


def test_unet_equals_diffusers(xl_folder):
    from diffusers import UNet2DConditionModel as Theirs

    from sumie.weights import load_component
    ours, theirs = load_component(xl_folder, "unet"), Theirs.from_pretrained(xl_folder, subfolder="unet").eval()
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 12, 10, generator=g), torch.randn(2, 9, 80, generator=g)
    cond = {"text_embeds": torch.randn(2, 24, generator=g), "time_ids": torch.tensor([[64., 48, 0, 8, 96, 80]] * 2)}
    with torch.no_grad():
        a = ours(x, torch.tensor([10, 900]), ctx, added_cond_kwargs=cond)
        b = theirs(x, torch.tensor([10, 900]), ctx, added_cond_kwargs=cond).sample
        other = ours(x, torch.tensor([10, 900]), ctx, added_cond_kwargs={**cond, "time_ids": cond["time_ids"] + 16})
    assert max_diff(a, b) < TOL
    assert max_diff(a, other) > 100 * TOL  # the sizes reach the output
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        ours(x, 10, ctx)


def test_text_encoder_with_projection_equals_transformers(xl_folder):
    from transformers import CLIPTextModelWithProjection as Theirs

    from sumie.weights import load_component
    ours = load_component(xl_folder, "text_encoder_2")
    theirs = Theirs.from_pretrained(xl_folder, subfolder="text_encoder_2").eval()
    ids = torch.tensor([[49406, 320, 1125, 49407] + [0] * 73, [49406, 2368, 49407] + [0] * 74])
    with torch.no_grad():
        a, b = ours(ids, output_hidden_states=True), theirs(ids, output_hidden_states=True)
    assert max_diff(a.text_embeds, b.text_embeds) < TOL and a.text_embeds.shape == (2, 24)
    assert max_diff(a[0], b[0]) < TOL  # transformers' order: text_embeds first
    assert max_diff(a.hidden_states[-2], b.hidden_states[-2]) < TOL


CASES = [
    ("euler", dict(prompt="a red circle", num_inference_steps=4, height=64, width=64)),
    ("dpm++2m", dict(prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"], num_inference_steps=4,
                     height=48, width=80, karras=True)),
    ("ddim", dict(prompt="sizes", prompt_2="another text for bigG", num_images_per_prompt=2, num_inference_steps=3,
                  height=64, width=48, original_size=(512, 384), crops_coords_top_left=(16, 32),
                  target_size=(256, 192), negative_original_size=(128, 128), negative_target_size=(64, 64),
                  negative_prompt="ugly", negative_prompt_2="bad")),
]


@pytest.mark.parametrize("sampler_id,kwargs", CASES, ids=[c[0] for c in CASES])
def test_images_equal_diffusers(xl_folder, sampler_id, kwargs):
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    pipe.set_progress_bar_config(disable=True)
    n = (1 if isinstance(kwargs["prompt"], str) else len(kwargs["prompt"])) * kwargs.get("num_images_per_prompt", 1)
    theirs_kw = {k: v for k, v in kwargs.items() if k != "karras"}
    sampler = sampler_id + (" karras" if kwargs.get("karras") else "")
    ours = pipe(**kwargs, seed=100, scheduler=sampler_id, output_type="latent").images
    theirs = _theirs(xl_folder, sampler, theirs_kw, n, "latent")
    assert ours.shape == theirs.shape
    assert max_diff(ours, theirs) < 1e-3, max_diff(ours, theirs)
    images = pipe.output(ours, "np")
    reference = pipe.output(theirs, "np")
    assert np.abs(np.round(images * 255) - np.round(reference * 255)).max() <= 2
    assert images.std() > 0.01


def _theirs(folder, sampler, kwargs, n, output_type):
    import diffusers

    from sumie.schedulers import SAMPLERS
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    sampler_id, karras = sampler.split(" ")[0], sampler.endswith("karras")
    cls = getattr(diffusers, SAMPLERS[sampler_id].diffusers)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **({"use_karras_sigmas": True} if karras else {}))
    pipe.set_progress_bar_config(disable=True)
    return pipe(**kwargs, generator=[torch.Generator().manual_seed(100 + i) for i in range(n)],
                output_type=output_type).images


def test_micro_conditioning_and_second_prompt_change_the_latents(xl_folder):
    """The end-to-end cases above could pass with an argument ignored if it barely moved the image: each does."""
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="x", num_inference_steps=2, height=32, width=32, seed=1, output_type="latent")
    base = pipe(**kw).images
    for extra in (dict(original_size=(64, 64)), dict(crops_coords_top_left=(8, 0)), dict(target_size=(16, 16)),
                  dict(prompt_2="y"), dict(negative_prompt=""),
                  dict(negative_original_size=(8, 8), negative_target_size=(8, 8))):
        assert max_diff(pipe(**kw, **extra).images, base) > 1e-3, extra


def test_encode_prompt_equals_diffusers(xl_folder):
    import diffusers
    ours = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(xl_folder)
    for kw in (dict(prompt="a cat", negative_prompt="a dog", prompt_2="a bird"), dict(prompt="zeros")):
        a = ours.encode_prompt(**kw)
        b = theirs.encode_prompt(**kw, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
        for x, y in zip(a, b):
            assert x.shape == y.shape and max_diff(x, y) < TOL
    assert a[1].abs().max() == 0 and a[3].abs().max() == 0  # no negative prompt: zeros


def test_wrong_pipeline_class_and_refiner_text_to_image_are_clear_errors(xl_folder, refiner_folder, sd1_folder):
    with pytest.raises(InputError, match="is an SDXL model; load it with sumie.StableDiffusionXLPipeline"):
        StableDiffusionPipeline.from_pretrained(xl_folder)
    with pytest.raises(InputError, match="is not an SDXL model"):
        StableDiffusionXLPipeline.from_pretrained(sd1_folder)
    refiner = StableDiffusionXLPipeline.from_pretrained(refiner_folder)
    assert refiner.text_encoder is None and refiner.requires_aesthetics_score
    with pytest.raises(InputError, match="is an SDXL refiner, which only refines an image"):
        refiner("x", num_inference_steps=1, height=32, width=32)
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    with pytest.raises(InputError, match="original_size must be two numbers"):
        pipe("x", num_inference_steps=1, height=32, width=32, original_size=512)


def test_paired_negative_sizes_fix_diffusers_batch_layout(xl_folder):
    """diffusers gives alternate rows of a guided batch the other branch's sizes (see xl._unet_inputs): image 2
    of a batch then differs from the same image made alone. paired_negative_sizes gives each branch its own."""
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="latent", negative_original_size=(8, 8),
              negative_target_size=(8, 8))
    alone = torch.cat([pipe("x", seed=seed, **kw).images for seed in (5, 6)])  # one image: its rows are right
    batch = pipe("x", num_images_per_prompt=2, seed=5, **kw).images
    assert max_diff(batch[0], alone[0]) > 1e-3 and max_diff(batch[1], alone[1]) > 1e-3  # diffusers' numbers
    pipe.paired_negative_sizes = True
    assert torch.equal(pipe("x", num_images_per_prompt=2, seed=5, **kw).images, alone)


def _diffusers_pipe(cls, folder, sampler_id):
    import diffusers

    from sumie.schedulers import SAMPLERS
    pipe = getattr(diffusers, cls).from_pretrained(folder)
    pipe.scheduler = getattr(diffusers, SAMPLERS[sampler_id].diffusers).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("sampler_id", ["euler", "dpm++2m"])
def test_base_and_refiner_ensemble_equals_diffusers(xl_folder, refiner_folder, sampler_id):
    from sumie.xl import StableDiffusionXLImg2ImgPipeline
    kw = dict(prompt=["a castle", "a ship"], num_inference_steps=10, height=48, width=64)
    base, refiner = (StableDiffusionXLPipeline.from_pretrained(xl_folder),
                     StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_folder))
    for p in (base, refiner):
        p.set_progress_bar_config(disable=True)
    latents = base(**kw, seed=3, scheduler=sampler_id, denoising_end=0.7, output_type="latent").images
    ours = refiner(**kw, image=latents, seed=3, scheduler=sampler_id, denoising_start=0.7, output_type="latent",
                   aesthetic_score=7.0).images
    theirs_base = _diffusers_pipe("StableDiffusionXLPipeline", xl_folder, sampler_id)
    theirs_refiner = _diffusers_pipe("StableDiffusionXLImg2ImgPipeline", refiner_folder, sampler_id)
    gens = lambda: [torch.Generator().manual_seed(3 + i) for i in range(2)]
    their_latents = theirs_base(**kw, generator=gens(), denoising_end=0.7, output_type="latent").images
    assert max_diff(latents, their_latents) < 1e-3
    theirs = theirs_refiner(**kw, image=their_latents, generator=gens(), denoising_start=0.7, output_type="latent",
                            aesthetic_score=7.0).images
    assert max_diff(ours, theirs) < 1e-3 * theirs.abs().max()  # float32 rounding: the refiner's latents reach 40
    assert max_diff(ours, latents) > 0.1  # the refiner did something
    a, b = refiner.output(ours, "np"), refiner.output(theirs, "np")
    assert np.abs(np.round(a * 255) - np.round(b * 255)).max() <= 2


def test_refiner_img2img_from_an_image_equals_diffusers(refiner_folder):
    from PIL import Image

    from sumie.xl import StableDiffusionXLImg2ImgPipeline
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    kw = dict(prompt="a photo", image=image, strength=0.5, num_inference_steps=6, negative_prompt="bad",
              original_size=(96, 80), negative_original_size=(40, 40), negative_aesthetic_score=1.0)
    ours = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_folder)
    ours.set_progress_bar_config(disable=True)
    a = ours(**kw, seed=9, scheduler="euler", output_type="np").images
    theirs = _diffusers_pipe("StableDiffusionXLImg2ImgPipeline", refiner_folder, "euler")
    b = theirs(**kw, generator=[torch.Generator().manual_seed(9)], output_type="np").images
    assert a.shape == b.shape == (1, 48, 40, 3)
    assert np.abs(np.round(a * 255) - np.round(b * 255)).max() <= 2


def test_cli_generates_and_refines_with_sdxl(xl_folder, refiner_folder, tmp_path):
    """`sumie generate` picks the SDXL pipelines from the folder: text to image (a real process), img2img on the
    base and on the refiner, and refuses text to image on the refiner in one line."""
    import subprocess
    import sys

    from cli_util import cli_in_process
    from PIL import Image

    from sumie.images import parse_parameters, read_parameters
    out = tmp_path / "out"
    args = ["generate", "a (red:1.3) circle", "--model", xl_folder, "--steps", 3, "--height", 32, "--width", 48,
            "--seed", 4, "--guidance", 6, "--outdir", out, "--quiet"]
    done = subprocess.run([sys.executable, "-m", "sumie.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip()
    meta = parse_parameters(read_parameters(path))
    assert (meta["Size"], meta["Seed"], meta["Steps"], meta["CFG scale"], meta["Sampler"]) == \
        ("48x32", "4", "3", "6.0", "Euler")
    pipe = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a (red:1.3) circle", seed=4, num_inference_steps=3, guidance_scale=6, height=32, width=48,
                    prompt_syntax="a1111", output_type="np").images[0]
    assert np.array_equal(np.asarray(Image.open(path)), np.round(expected * 255).astype(np.uint8))

    code, stdout, stderr = cli_in_process(*args, "--vae", xl_folder / "vae")  # a separate VAE: here the same one
    assert code == 0, stderr
    assert np.array_equal(np.asarray(Image.open(stdout.strip())), np.asarray(Image.open(path)))
    for model in (xl_folder, refiner_folder):
        code, stdout, stderr = cli_in_process("generate", "a ship", "--model", model, "--init-image", path,
                                              "--strength", 0.6, "--steps", 4, "--seed", 1, "--outdir", out, "--quiet")
        assert code == 0, stderr
        assert Image.open(stdout.strip()).size == (48, 32)
    code, _, stderr = cli_in_process("generate", "x", "--model", refiner_folder, "--steps", 1, "--outdir", out)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "is an SDXL refiner" in stderr


@pytest.fixture(scope="module")
def xl_files(xl_folder, refiner_folder, tmp_path_factory):
    """The small base and refiner folders as original-layout single files, written by `sumie convert`."""
    from sumie.weights import convert
    out = tmp_path_factory.mktemp("xl-single")
    return {"base": convert(xl_folder, out / "base.safetensors"),
            "refiner": convert(refiner_folder, out / "refiner.safetensors")}


def _states(parts) -> dict:
    return {name: getattr(parts, name).state_dict() for name in ("unet", "vae", "text_encoder", "text_encoder_2")
            if getattr(parts, name) is not None}


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_single_file_holds_the_folders_weights_as_diffusers_reads_them(kind, xl_folder, refiner_folder, xl_files):
    """Our single file, read by diffusers' from_single_file, gives the folder's weights: its key names are the
    published layout (label_emb, conditioner.embedders.N, bigG's transposed text_projection). Read by sumie, it
    gives the folder's weights and images exactly."""
    import diffusers

    from sumie.weights import load_model
    folder, single = {"base": xl_folder, "refiner": refiner_folder}[kind], xl_files[kind]
    cls = "StableDiffusionXLPipeline" if kind == "base" else "StableDiffusionXLImg2ImgPipeline"
    theirs = getattr(diffusers, cls).from_single_file(single, config=str(folder), local_files_only=True)
    ours, from_folder = load_model(single, config=folder), load_model(folder)
    assert ours.options == from_folder.options and ours.is_xl
    for name, state in _states(from_folder).items():
        reference = {k.removeprefix("text_model."): v for k, v in getattr(theirs, name).state_dict().items()
                     if not k.endswith("position_ids")}
        assert state.keys() == reference.keys() == _states(ours)[name].keys(), name
        assert all(torch.equal(state[k], reference[k]) and torch.equal(state[k], _states(ours)[name][k])
                   for k in state), name


def test_single_file_images_and_round_trip(xl_folder, xl_files, tmp_path):
    from sumie.weights import convert
    kw = dict(prompt="a tree", num_inference_steps=2, height=32, width=32, seed=2, output_type="np")
    images = [StableDiffusionXLPipeline.from_pretrained(src, **extra)(**kw).images
              for src, extra in ((xl_folder, {}), (xl_files["base"], {"config": xl_folder}))]
    assert np.array_equal(*images)
    back = convert(xl_files["base"], tmp_path / "back", config=xl_folder)  # the file to a folder again
    index = json.loads((back / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    assert np.array_equal(StableDiffusionXLPipeline.from_pretrained(back)(**kw).images, images[0])


@pytest.mark.parametrize("preset", [SDXL, SDXL_REFINER], ids=lambda p: p.name)
def test_full_size_architecture_is_read_from_a_single_files_shapes(preset):
    """The published architectures, written as single-file keys on the meta device, are detected back."""
    from sumie.text_encoder import CLIPTextModel, CLIPTextModelWithProjection
    from sumie.unet import UNet2DConditionModel
    from sumie.vae import AutoencoderKL
    from sumie.weights import Components, to_single_file_state
    from sumie.weights.original import detect_big_g, detect_text_encoder, detect_unet, split_components
    with torch.device("meta"):
        parts = Components(tokenizer=None, scheduler_config={}, source=None, unet=UNet2DConditionModel(preset.unet),
                           vae=AutoencoderKL(preset.vae), text_encoder_2=CLIPTextModelWithProjection(preset.text_encoder_2),
                           text_encoder=preset.text_encoder and CLIPTextModel(preset.text_encoder))
        split = split_components(to_single_file_state(parts))
    assert ("clip_l" in split) == (preset.text_encoder is not None)
    assert detect_unet(split["unet"], preset) == preset.unet
    assert detect_big_g(split["big_g"], preset) == preset.text_encoder_2
    if preset.text_encoder is not None:
        assert detect_text_encoder(split, preset) == preset.text_encoder


XL_LAYERS = [("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
             ("unet", "mid_block.attentions.0.transformer_blocks.2.ff.net.2"),
             ("unet", "up_blocks.0.resnets.1.conv1"),
             ("text_encoder", "encoder.layers.1.self_attn.v_proj"),
             ("text_encoder_2", "encoder.layers.3.mlp.fc1")]


def write_xl_lora(pipe, path, fmt, layers, alpha=2.0):
    """An SDXL LoRA, rank 4: Kohya's names (lora_unet_ in the original layout, lora_te1_, lora_te2_; with
    `alpha`) or diffusers/PEFT's (unet., text_encoder., text_encoder_2.)."""
    from test_lora import write_lora
    kohya = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    return write_lora(pipe, path, fmt, layers, kohya=kohya, alpha=alpha, original_layout=True)


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_an_sdxl_lora_changes_the_weights_as_diffusers_does(xl_folder, fmt, tmp_path):
    """Kohya's names for the UNet (original layout: input_blocks, middle_block, output_blocks), diffusers/PEFT's
    for the UNet and the first text encoder, against diffusers. Under transformers 5, diffusers 0.42 converts neither
    Kohya text-encoder LoRAs nor PEFT ones for bigG ("Could not automatically infer state dict type"): bigG's update
    is checked against the definition, and lora_te1_ / lora_te2_ to name the same layers as PEFT's names."""
    import diffusers
    ours = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    ours.set_progress_bar_config(disable=True)
    layers = [l for l in XL_LAYERS if (fmt == "peft" and l[0] == "text_encoder") or l[0] == "unet"]
    path = write_xl_lora(ours, tmp_path / f"{fmt}.safetensors", fmt, layers)
    names = ("unet", "text_encoder", "text_encoder_2")
    base = {n: {k: v.clone() for k, v in getattr(ours, n).state_dict().items()} for n in names}
    ours.load_lora_weights(path)
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(xl_folder)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_lora_weights(str(path))
    theirs.fuse_lora()
    theirs.unload_lora_weights()
    for n in names:
        mine = getattr(ours, n).state_dict()
        ref = {k.removeprefix("text_model."): v for k, v in getattr(theirs, n).state_dict().items()}
        changed = sorted(k for k in mine if not torch.equal(mine[k], base[n][k]))
        assert changed == sorted(f"{m}.weight" for c, m in layers if c == n), n
        assert all(torch.allclose(mine[k], ref[k], atol=1e-6) for k in mine), n
    kw = dict(prompt="a red circle", num_inference_steps=3, height=32, width=32, output_type="np")
    a = theirs(**kw, generator=torch.Generator().manual_seed(1)).images
    b = ours(**kw, generator=torch.Generator().manual_seed(1)).images
    assert np.abs(a - b).max() * 255 <= 2
    if fmt == "peft":  # bigG: W + B A; then Kohya's names (alpha = rank: the same scale) give the same weights
        ours.unload_lora_weights()
        state = load_file(write_xl_lora(ours, tmp_path / "all.safetensors", "peft", XL_LAYERS))
        ours.load_lora_weights(tmp_path / "all.safetensors")
        key = "text_encoder_2.text_model.encoder.layers.3.mlp.fc1"
        expected = base["text_encoder_2"]["encoder.layers.3.mlp.fc1.weight"] + \
            state[f"{key}.lora_B.weight"] @ state[f"{key}.lora_A.weight"]
        assert torch.allclose(ours.text_encoder_2.encoder.layers[3].mlp.fc1.weight, expected, atol=1e-6)
        peft = {n: {k: v.clone() for k, v in getattr(ours, n).state_dict().items()} for n in names}
        ours.unload_lora_weights()
        ours.load_lora_weights(write_xl_lora(ours, tmp_path / "k.safetensors", "kohya", XL_LAYERS, alpha=4.0))
        assert all(torch.equal(v, peft[n][k]) for n in names for k, v in getattr(ours, n).state_dict().items())


def test_lora_made_for_the_other_family_is_one_clear_error(xl_folder, sd1_folder, tmp_path):
    from sumie.pipeline import StableDiffusionPipeline as SD
    xl = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    sd = SD.from_pretrained(sd1_folder)
    xl_lora = write_xl_lora(xl, tmp_path / "xl.safetensors", "kohya", XL_LAYERS)
    sd_lora = write_xl_lora(sd, tmp_path / "sd.safetensors", "kohya",
                            [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")])
    with pytest.raises(InputError, match="keys that name no layer of this model") as e:
        sd.load_lora_weights(xl_lora)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="keys that name no layer of this model|made for another model"):
        xl.load_lora_weights(sd_lora)


@pytest.mark.parametrize("n", [1, 2])
def test_an_sdxl_embedding_equals_diffusers(xl_folder, tmp_path, n):
    """clip_l / clip_g vectors, loaded by diffusers into each encoder with its tokenizer, as its docs show. The
    pooled text differs on purpose: diffusers' added tokens get ids above CLIP's end-of-text id, and bigG's
    published config (eos_token_id 2) pools at the largest id, so diffusers pools at the embedding's last token;
    sumie pools at the end-of-text token, as CLIP and A1111 do. That is checked against bigG's output there."""
    import diffusers
    g = torch.Generator().manual_seed(n)
    path = tmp_path / "emb.safetensors"
    save_file({"clip_l": torch.randn(n, 32, generator=g) * 3, "clip_g": torch.randn(n, 48, generator=g) * 3}, path)
    ours = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    without = ours.encode_prompt("a photo of <emb>", negative_prompt="blurry")
    ours.load_textual_inversion(path, token="<emb>")
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(xl_folder)
    state = load_file(path)
    theirs.load_textual_inversion(state["clip_l"], token="<emb>", text_encoder=theirs.text_encoder,
                                  tokenizer=theirs.tokenizer)
    theirs.load_textual_inversion(state["clip_g"], token="<emb>", text_encoder=theirs.text_encoder_2,
                                  tokenizer=theirs.tokenizer_2)
    ref = theirs.encode_prompt("a photo of <emb>", device="cpu", num_images_per_prompt=1,
                               do_classifier_free_guidance=True, negative_prompt="blurry")
    mine = ours.encode_prompt("a photo of <emb>", negative_prompt="blurry")
    text = theirs.maybe_convert_prompt("a photo of <emb>", theirs.tokenizer_2)  # "<emb> <emb>_1" for 2 vectors
    ids = theirs.tokenizer_2(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = theirs.text_encoder_2(ids).last_hidden_state[0, ids[0].tolist().index(49407)]
        at_eos = theirs.text_encoder_2.text_projection(states)[None]
    for a, b in zip(mine, [ref[0], ref[1], at_eos, ref[3]]):
        assert a.shape == b.shape and max_diff(a, b) < 1e-5
    assert max_diff(mine[0], without[0]) > 1e-2 and max_diff(mine[2], without[2]) > 1e-2  # both encoders changed


def test_embeddings_of_the_other_family_are_clear_errors(xl_folder, sd1_folder, tmp_path):
    from sumie.pipeline import StableDiffusionPipeline as SD
    save_file({"emb_params": torch.zeros(1, 32)}, tmp_path / "sd.safetensors")
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 48)}, tmp_path / "xl.safetensors")
    with pytest.raises(InputError, match="width 32, but this model's text encoder is 80 wide"):
        StableDiffusionXLPipeline.from_pretrained(xl_folder).load_textual_inversion(tmp_path / "sd.safetensors")
    with pytest.raises(InputError, match="is an SDXL embedding"):
        SD.from_pretrained(sd1_folder).load_textual_inversion(tmp_path / "xl.safetensors")


def test_server_runs_sdxl_text_to_image_and_img2img(xl_folder, tmp_path):
    """`sumie serve --model SDXL`: A1111's txt2img and img2img answer with the pipeline's image and infotext."""
    import base64
    import io

    import httpx
    from PIL import Image
    from server_util import Server
    s = Server("--model", xl_folder, "--outdir", tmp_path / "out")
    try:
        models = httpx.get(s.url + "/sdapi/v1/sd-models", timeout=30).json()
        assert [m["model_name"] for m in models] == [xl_folder.name]
        body = dict(prompt="a red circle", seed=3, steps=3, width=48, height=32, cfg_scale=6, sampler_name="Euler")
        r = httpx.post(s.url + "/sdapi/v1/txt2img", json=body, timeout=300)
        assert r.status_code == 200, r.text
        image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert json.loads(r.json()["info"])["infotexts"][0].startswith("a red circle\nSteps: 3, Sampler: Euler")
        pipe = StableDiffusionXLPipeline.from_pretrained(xl_folder)
        pipe.set_progress_bar_config(disable=True)
        expected = pipe("a red circle", seed=3, num_inference_steps=3, guidance_scale=6, height=32, width=48,
                        scheduler="euler", prompt_syntax="a1111", output_type="np").images[0]
        assert np.array_equal(np.asarray(image.convert("RGB")), np.round(expected * 255).astype(np.uint8))
        init = r.json()["images"][0]
        r = httpx.post(s.url + "/sdapi/v1/img2img", json={**body, "init_images": [init], "denoising_strength": 0.5},
                       timeout=300)
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (48, 32)
    finally:
        s.stop()
