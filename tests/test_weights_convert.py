"""`weights.convert`: a single file back to a diffusers folder, and `sumie convert` both ways."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from sumie.weights import convert, load_model


def test_single_file_back_to_folder(single_files, sd2_folder, tmp_path):
    folder = convert(single_files["sd2"], tmp_path / "back", config=sd2_folder)
    a, b = load_model(folder), load_model(sd2_folder)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert a.tokenizer.pad_token == "!" and a.scheduler_config["prediction_type"] == "v_prediction"
    import diffusers  # the folder we write is a valid diffusers folder
    diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)


def test_cli_convert_both_ways(sd1_folder, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "sumie.cli", *map(str, a)], capture_output=True, text=True)
    r = run("convert", sd1_folder, tmp_path / "m.safetensors", "--dtype", "bf16")
    assert r.returncode == 0 and r.stdout.strip() == str(tmp_path / "m.safetensors"), r.stderr
    assert load_file(tmp_path / "m.safetensors")["model.diffusion_model.out.2.weight"].dtype == torch.bfloat16
    r = run("convert", tmp_path / "m.safetensors", tmp_path / "folder", "--config", sd1_folder)
    assert r.returncode == 0, r.stderr
    back = load_model(tmp_path / "folder")
    assert back.unet.conv_out.weight.dtype == torch.bfloat16
    again = run("convert", sd1_folder, tmp_path / "m.safetensors")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert sorted(os.listdir(tmp_path)) == ["folder", "m.safetensors"]  # no temp files left
