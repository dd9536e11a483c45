"""TAESD (`sumie.taesd`): equal to diffusers' AutoencoderTiny on random weights, from its folder and from the
original release's files, and usable as the pipeline's decoder (Python and CLI)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sumie.errors import InputError, WeightsError
from sumie.weights import load_tiny_vae


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    from oracle import write_taesd
    folder = tmp_path_factory.mktemp("taesd") / "diffusers"
    return write_taesd(folder), folder


def original_files(model, folder):
    """The release's layout: taesd_encoder / taesd_decoder, each an nn.Sequential's keys (decoder one later)."""
    folder.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({k.removeprefix("encoder.layers."): v for k, v in state.items() if k.startswith("encoder.")},
              folder / "taesd_encoder.safetensors")
    decoder = {}
    for k, v in state.items():
        if k.startswith("decoder.layers."):
            index, rest = k.removeprefix("decoder.layers.").split(".", 1)
            decoder[f"{int(index) + 1}.{rest}"] = v
    save_file(decoder, folder / "taesd_decoder.safetensors")
    return folder


def test_taesd_equals_autoencoder_tiny_from_both_layouts(theirs, tmp_path):
    model, folder = theirs
    g = torch.Generator().manual_seed(1)
    image, z = torch.rand(2, 3, 48, 40, generator=g) * 2 - 1, torch.randn(2, 4, 6, 5, generator=g) * 2
    with torch.no_grad():
        want_z, want_image = model.encode(image).latents, model.decode(z).sample
        assert want_image.std() > 0.1 and want_z.std() > 0.05  # not blind
        for ours in (load_tiny_vae(folder), load_tiny_vae(original_files(model, tmp_path / "release"))):
            assert (ours.encode(image).sample() - want_z).abs().max() < 1e-4
            assert (ours.decode(z) - want_image).abs().max() < 1e-4
        decoder_only = load_tiny_vae(tmp_path / "release" / "taesd_decoder.safetensors")
        assert (decoder_only.decode(z) - want_image).abs().max() < 1e-4
    with pytest.raises(InputError, match="cannot encode"):
        decoder_only.encode(image)


def test_a_file_that_is_not_taesd_is_refused(tmp_path):
    save_file({"weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="not a TAESD encoder or decoder"):
        load_tiny_vae(tmp_path / "other.safetensors")


def test_taesd_decodes_the_pipeline_as_diffusers_does(theirs, sd1_folder):
    """pipe.vae = TAESD (the SD VAE's latent space, scaling factor 1) against diffusers' pipeline with
    vae=AutoencoderTiny: the same pixels within 2/255, and not the full VAE's."""
    import diffusers

    from sumie import StableDiffusionPipeline
    model, folder = theirs
    kw = dict(prompt="a cat", num_inference_steps=3, height=48, width=40, output_type="np")
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    full = pipe(**kw, seed=5).images
    pipe.vae = load_tiny_vae(folder)
    ours = pipe(**kw, seed=5).images
    ref = diffusers.StableDiffusionPipeline.from_pretrained(sd1_folder, vae=model, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    want = ref(**kw, generator=torch.Generator().manual_seed(5)).images
    assert ours.shape == want.shape == full.shape
    assert np.abs(np.round(ours * 255) - np.round(want * 255)).max() <= 2
    assert np.abs(ours - full).max() > 0.1  # TAESD really decoded


def test_cli_decodes_with_vae_tiny(theirs, sd1_folder, tmp_path):
    from PIL import Image

    from sumie.cli import main
    _, folder = theirs
    for name, extra in (("full", []), ("tiny", ["--vae-tiny", str(folder)])):
        assert main(["generate", "a cat", "--model", str(sd1_folder), "--steps", "2", "--seed", "3",
                     "--height", "32", "--width", "32", "--outdir", str(tmp_path / name), "--quiet", *extra]) == 0
    full, tiny = (Image.open(next((tmp_path / n).glob("*.png"))) for n in ("full", "tiny"))
    assert "VAE Decoder: TAESD" in tiny.info["parameters"] and "VAE Decoder" not in full.info["parameters"]
    assert np.abs(np.asarray(full, float) - np.asarray(tiny, float)).max() > 20
