"""`hires`: A1111's hires fix (a first pass, an upscale, an img2img pass) in Python, the CLI and the server."""

import numpy as np
import pytest
from PIL import Image

from sumie.errors import InputError
from sumie.hires import LATENT_MODES, Hires, run
from sumie.pipeline import StableDiffusionPipeline

KW = dict(prompt=["a red circle"], seed=3, guidance_scale=5.0, width=32, height=32, scheduler="euler")


@pytest.fixture(scope="module")
def pipe(sd1_folder):
    p = StableDiffusionPipeline.from_pretrained(sd1_folder)
    p.set_progress_bar_config(disable=True)
    return p


def test_at_strength_0_the_result_is_the_upscale_itself(pipe):
    first = pipe(**KW, num_inference_steps=3).images[0]
    plain = first.resize((64, 64), Image.LANCZOS)
    [none] = run(pipe, Hires(scale=2, upscaler="None", strength=0), steps=3, **KW)
    assert none.size == (64, 64) and np.array_equal(np.asarray(none), np.asarray(plain))
    [nearest] = run(pipe, Hires(scale=2, upscaler="Nearest", strength=0), steps=3, **KW)
    assert np.array_equal(np.asarray(nearest), np.asarray(first.resize((64, 64), Image.NEAREST)))
    [latent] = run(pipe, Hires(scale=2, upscaler="Latent (nearest)", strength=0), steps=3, **KW)
    assert latent.size == (64, 64) and not np.array_equal(np.asarray(latent), np.asarray(plain))


def test_the_second_pass_runs_exactly_its_steps_at_the_large_size(pipe):
    calls = []
    record = lambda p, i, t, d: calls.append(tuple(d["latents"].shape[-2:])) or d  # noqa: E731
    [image] = run(pipe, Hires(scale=1.5, steps=4, strength=0.5), steps=3, callback_on_step_end=record, **KW)
    f = pipe.vae_scale_factor
    assert image.size == (48, 48) and calls == [(32 // f, 32 // f)] * 3 + [(48 // f, 48 // f)] * 4
    plain = run(pipe, Hires(scale=1.5, steps=4, strength=0), steps=3, **KW)[0]
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(plain, dtype=int)).mean() > 2  # the pass did something


def test_sizes_and_bad_options():
    assert Hires(scale=2).size(512, 384) == (1024, 768)
    assert Hires(resize_x=1000).size(512, 384) == (1000, 744)  # the other side in proportion, down to 8
    assert Hires(resize_x=640, resize_y=480).size(512, 512) == (640, 480)
    with pytest.raises(InputError, match="at most|from 8 to"):
        Hires(scale=8).size(512, 512)
    with pytest.raises(InputError, match="unknown hires upscaler"):
        Hires(upscaler="R-ESRGAN 4x+").check()
    assert "Latent (bicubic antialiased)" in LATENT_MODES
    fields = Hires(scale=2, steps=10, upscaler="Latent").fields(64, 64)
    assert (fields["Hires_upscale"], fields["Hires_steps"], fields["Hires_upscaler"]) == (2, 10, "Latent")


def test_cli_hires_fix_and_params_from(sd1_folder, tmp_path):
    from test_cli import sumie

    from sumie.images import parse_parameters, read_parameters
    out = tmp_path / "out"
    common = ["--model", sd1_folder, "--steps", 3, "--outdir", out, "--quiet"]
    r = sumie("generate", "a red circle", "--width", 32, "--height", 32, "--seed", 2, "--hires-scale", 2,
              "--hires-steps", 2, "--hires-strength", 0.5, "--hires-upscaler", "Latent (bicubic)", *common)
    assert r.returncode == 0, r.stderr
    [first] = r.stdout.split()
    meta = parse_parameters(read_parameters(first))
    assert Image.open(first).size == (64, 64) and meta["Size"] == "32x32"
    assert (meta["Hires upscale"], meta["Hires steps"], meta["Hires upscaler"], meta["Denoising strength"]) == \
        ("2.0", "2", "Latent (bicubic)", "0.5")
    again = sumie("generate", "--params-from", first, *common)
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(again.stdout.split()[0])), np.asarray(Image.open(first)))
    bad = sumie("generate", "x", "--hires-scale", 200, *common)
    assert bad.returncode == 2 and "hires fix to" in bad.stderr
