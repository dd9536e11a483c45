"""The `sumie` CLI through a real subprocess (later calls of a test in process): files, metadata, --params-from,
errors, Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_util import cli_in_process
from PIL import Image

from sumie.images import parse_parameters, read_parameters


def sumie(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sumie.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def sumie_here(*args):
    """As `sumie`, by sumie.cli.main in this process (no interpreter start); for the calls after a test's first."""
    return subprocess.CompletedProcess(args, *cli_in_process(*args))


def test_generate_files_metadata_and_params_from(sd1_folder, tmp_path):
    out = tmp_path / "out"
    common = ["--model", sd1_folder, "--steps", 2, "--height", 32, "--width", 48, "--outdir", out, "--quiet"]
    r = sumie("generate", "a red circle, top left", "--negative-prompt", "blurry", "--seed", 5, "--n", 2, "--grid",
              *common)
    assert r.returncode == 0, r.stderr
    paths = r.stdout.strip().splitlines()
    assert [os.path.basename(p) for p in paths] == ["00000-5.png", "00001-6.png", "00002-grid.png"]
    meta = parse_parameters(read_parameters(paths[1]))
    assert meta["Prompt"] == "a red circle, top left" and meta["Negative prompt"] == "blurry"
    assert (meta["Steps"], meta["Sampler"], meta["Seed"], meta["Size"]) == ("2", "PLMS", "6", "48x32")
    assert meta["CFG scale"] == "7.5" and meta["Version"].startswith("sumie ") and len(meta["Model hash"]) == 10
    assert Image.open(paths[2]).size == (96, 32)

    info = sumie("info", paths[1])
    assert info.returncode == 0 and info.stdout.startswith("a red circle, top left\nNegative prompt: blurry\nSteps: 2")

    again = sumie("generate", "--params-from", paths[1], "--model", sd1_folder, "--outdir", out, "--quiet")
    assert again.returncode == 0, again.stderr
    [path] = again.stdout.strip().splitlines()
    assert os.path.basename(path) == "00003-6.png"  # numbering continues; nothing is overwritten
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(paths[1])))
    override = sumie("generate", "--params-from", paths[1], "--steps", 3, "--scheduler", "euler", "--karras",
                     "--model", sd1_folder, "--outdir", out, "--quiet")
    meta = parse_parameters(read_parameters(override.stdout.strip()))
    assert (meta["Steps"], meta["Sampler"], meta["Schedule type"], meta["Seed"]) == ("3", "Euler", "Karras", "6")
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


def test_clip_skip_and_prompt_syntax_are_written_and_read_back(sd1_folder, tmp_path):
    """--clip-skip counts as A1111 does ("Clip skip: 2" is diffusers' clip_skip=1); the plain syntax is marked
    in the metadata; --params-from re-creates both images."""
    from sumie.pipeline import StableDiffusionPipeline
    out = tmp_path / "out"
    common = ["--model", sd1_folder, "--steps", 2, "--height", 32, "--width", 32, "--outdir", out, "--quiet"]
    prompt = "a (red:1.4) circle"
    skipped = sumie("generate", prompt, "--seed", 4, "--clip-skip", 2, *common).stdout.strip()
    plain = sumie("generate", prompt, "--seed", 4, "--prompt-syntax", "plain", *common).stdout.strip()
    meta = parse_parameters(read_parameters(skipped))
    assert meta["Clip skip"] == "2" and "Prompt syntax" not in meta
    assert parse_parameters(read_parameters(plain))["Prompt syntax"] == "plain"
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, height=32, width=32, seed=4)
    for path, syntax, skip in ((skipped, "a1111", 1), (plain, "plain", None)):
        expected = pipe(prompt, prompt_syntax=syntax, clip_skip=skip, **kw).images[0]
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(expected)), syntax
        again = sumie_here("generate", "--params-from", path, "--model", sd1_folder, "--outdir", out, "--quiet")
        assert np.array_equal(np.asarray(Image.open(again.stdout.strip())), np.asarray(Image.open(path))), syntax
    assert not np.array_equal(np.asarray(Image.open(skipped)), np.asarray(Image.open(plain)))
    r = sumie_here("generate", prompt, "--clip-skip", 0, *common)
    assert r.returncode == 2 and "--clip-skip must be from 1" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["x", "--height", 500], "height must be a multiple of 8 (got 500); try 496 or 504"),
    (["x", "--steps", 0], "num_inference_steps must be an integer >= 1"),
    (["x", "--scheduler", "nope"], "unknown scheduler 'nope'"),
    (["x", "--guidance", "nan"], "guidance_scale must be a finite number"),
    (["x", "--n", 65], "--n must be from 1 to 64"),
    (["x", "--steps", "many"], "expected an integer"),
    (["x", "--device", "cuda"], "no CUDA GPU"),
    ([], "give a prompt"),
])
def test_generate_errors_are_one_line(sd1_folder, tmp_path, args, needle):
    r = sumie("generate", *args, "--model", sd1_folder, "--outdir", tmp_path, "--quiet")
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("args,needle", [
    (["generate", "x", "--model", "/no/such/model"], "does not exist"),
    (["info", "/no/such.png"], "does not exist"),
    (["serve", "--port", "70000"], "--port must be"),
    (["serve", "--api-auth", "nocolon"], "user:password"),
    (["serve", "--model", "/no/such/model"], "does not exist"),
    (["train-tiny"], "--out"),
    (["eval-tiny", "--model", "/no/such/model"], "does not exist"),
])
def test_other_errors(tmp_path, args, needle):
    r = sumie(*args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_info_without_parameters(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    r = sumie("info", tmp_path / "plain.png")
    assert r.returncode == 2 and "no generation parameters" in r.stderr


def test_ctrl_c_keeps_finished_files_and_leaves_no_partial(sd1_folder, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sumie.cli", "generate", "x", "--model", str(sd1_folder),
                             "--steps", "40", "--height", "64", "--width", "64", "--n", "5", "--seed", "1",
                             "--outdir", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # ^ a shell starts background jobs with SIGINT ignored, and the child would inherit that
    first = proc.stdout.readline().strip()  # blocks until the first image is written
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    written = [first] + rest.split()
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in written)
    assert len(written) < 5
    for p in written:
        Image.open(p).verify()


def test_compile_flag_gives_the_same_image(sd1_folder, tmp_path):
    """--compile (packed weights on CPU) writes the image the plain path writes, to within one level."""
    images = []
    for flags in ([], ["--compile"]):
        r = sumie("generate", "a cat", "--model", sd1_folder, "--steps", 2, "--height", 32, "--width", 32,
                  "--seed", 3, "--outdir", tmp_path / str(len(images)), "--quiet", *flags)
        assert r.returncode == 0, r.stderr
        images.append(np.asarray(Image.open(r.stdout.strip()), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() <= 1


def test_img2img_and_inpainting_from_the_cli(sd1_folder, tmp_path):
    """--init-image sizes the output by default and records Denoising strength; --params-from with the same init
    image gives the same pixels; a mask repaints only under it; bad input is one line, exit 2, nothing written."""
    out = tmp_path / "out"
    init = tmp_path / "init.png"
    scene = Image.new("RGB", (44, 36), (255, 255, 255))  # 44x36: the output is 40x32
    scene.paste((220, 30, 30), (10, 6, 30, 26))
    scene.save(init)
    common = ["--model", sd1_folder, "--steps", 6, "--outdir", out, "--quiet", "--scheduler", "euler"]
    r = sumie("generate", "a blue circle", "--init-image", init, "--strength", 0.5, "--seed", 4, *common)
    assert r.returncode == 0, r.stderr
    [first] = r.stdout.split()
    meta = parse_parameters(read_parameters(first))
    assert meta["Denoising strength"] == "0.5" and meta["Size"] == "40x32" and Image.open(first).size == (40, 32)
    again = sumie("generate", "--params-from", first, "--init-image", init, *common)
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(again.stdout.split()[0])), np.asarray(Image.open(first)))

    mask = tmp_path / "mask.png"
    m = Image.new("L", (44, 36))
    m.paste(255, (14, 10, 26, 22))
    m.save(mask)
    r = sumie("generate", "a blue circle", "--init-image", init, "--mask", mask, "--mask-blur", 0, "--strength", 1,
              "--inpaint-fill", "latent-noise", "--width", 48, "--height", 40, "--seed", 4, *common)
    assert r.returncode == 0, r.stderr
    image = np.asarray(Image.open(r.stdout.split()[0]), dtype=int)
    src = np.asarray(scene.resize((48, 40), Image.LANCZOS), dtype=int)
    inside = np.zeros((40, 48), bool)
    inside[7:29, 11:33] = True  # the mask, scaled by 48/44 and 40/36, with Lanczos' ringing (3 source pixels)
    assert np.array_equal(image[~inside], src[~inside])
    assert np.abs(image[11:24, 16:27] - src[11:24, 16:27]).mean() > 10
    meta = parse_parameters(read_parameters(r.stdout.split()[0]))
    assert meta["Mask blur"] == "0" and meta["Masked content"] == "latent noise"

    before = sorted(p.name for p in out.iterdir())
    for args, needle in ((["--init-image", tmp_path / "missing.png"], "no such file"),
                         (["--init-image", init, "--strength", 1.5], "from 0 to 1"),
                         (["--mask", mask], "--mask needs --init-image")):
        r = sumie_here("generate", "x", *args, *common)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "bad.png").write_bytes(b"not an image")
    r = sumie_here("generate", "x", "--init-image", tmp_path / "bad.png", *common)
    assert r.returncode == 2 and "not a readable image" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == before
