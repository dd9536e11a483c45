"""Single-file checkpoints, `sumie convert`, the hub cache, and the corpus of bad inputs."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sumie.errors import WeightsError
from sumie.pipeline import StableDiffusionPipeline
from sumie.weights import convert, load_model, read_checkpoint, resolve_folder


@pytest.fixture(scope="module")
def single_files(sd1_folder, sd2_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return {kind: convert(folder, out / f"{kind}.safetensors") for kind, folder in
            (("sd1", sd1_folder), ("sd2", sd2_folder))}


def images(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(11)]
    return pipe("a red square", num_inference_steps=3, generator=gens, output_type="np", **kw).images


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_round_trip_through_diffusers_single_file(kind, sd1_folder, sd2_folder, single_files):
    import diffusers
    folder, single = {"sd1": sd1_folder, "sd2": sd2_folder}[kind], single_files[kind]
    from_folder = images(diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None))
    from_single = images(diffusers.StableDiffusionPipeline.from_single_file(
        single, config=str(folder), safety_checker=None, local_files_only=True))
    assert np.abs(from_folder - from_single).max() * 255 <= 1  # our file holds the folder's weights
    ours = images(StableDiffusionPipeline.from_pretrained(single, config=folder))
    assert np.abs(ours - from_folder).max() * 255 <= 2


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_weights_equal_what_diffusers_reads(kind, sd1_folder, sd2_folder, single_files):
    import diffusers
    folder, single = {"sd1": sd1_folder, "sd2": sd2_folder}[kind], single_files[kind]
    ref = diffusers.StableDiffusionPipeline.from_single_file(single, config=str(folder), safety_checker=None,
                                                             local_files_only=True)
    ours = load_model(single, config=folder)
    for name in ("unet", "vae", "text_encoder"):
        a = getattr(ours, name).state_dict()
        b = {k.removeprefix("text_model."): v for k, v in getattr(ref, name).state_dict().items()
             if not k.endswith("position_ids")}
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_single_file_back_to_folder(single_files, sd2_folder, tmp_path):
    folder = convert(single_files["sd2"], tmp_path / "back", config=sd2_folder)
    a, b = load_model(folder), load_model(sd2_folder)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert a.tokenizer.pad_token == "!" and a.scheduler_config["prediction_type"] == "v_prediction"
    import diffusers  # the folder we write is a valid diffusers folder
    diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)


def test_ema_weights_are_used(single_files, sd1_folder, tmp_path):
    state = load_file(single_files["sd1"])
    ema = {"model_ema." + "".join(k.split(".")[1:]): v + 1 for k, v in state.items()
           if k.startswith("model.diffusion_model.")}
    save_file({**state, **ema}, tmp_path / "ema.safetensors")
    loaded = load_model(tmp_path / "ema.safetensors", config=sd1_folder)
    assert torch.equal(loaded.unet.conv_in.weight, state["model.diffusion_model.input_blocks.0.0.weight"] + 1)


def test_separate_vae(single_files, sd1_folder, tmp_path):
    state = load_file(single_files["sd1"])
    vae = {k.removeprefix("first_stage_model."): v * 2 for k, v in state.items() if k.startswith("first_stage_model.")}
    save_file(vae, tmp_path / "vae.safetensors")  # the layout of e.g. vae-ft-mse-840000-ema-pruned.safetensors
    parts = load_model(sd1_folder, vae=tmp_path / "vae.safetensors")
    base = load_model(sd1_folder)
    assert torch.equal(parts.vae.decoder.conv_out.weight, base.vae.decoder.conv_out.weight * 2)
    assert torch.equal(load_model(sd1_folder, vae=sd1_folder / "vae").vae.encoder.conv_in.weight,
                       base.vae.encoder.conv_in.weight)


def test_tensor_pickle_loads_only_when_allowed(single_files, tmp_path):
    state = load_file(single_files["sd1"])
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "model.ckpt")
    with pytest.raises(WeightsError, match="pickle, which can run arbitrary code"):
        read_checkpoint(tmp_path / "model.ckpt")
    loaded = read_checkpoint(tmp_path / "model.ckpt", allow_pickle=True)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_hub_cache_resolves_offline(sd1_folder, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--CompVis--tiny-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123\n")
    (repo / "refs" / "v2").write_text("def456")
    shutil.copytree(sd1_folder, repo / "snapshots" / "abc123")
    (repo / "snapshots" / "def456").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_folder("CompVis/tiny-sd") == repo / "snapshots" / "abc123"
    assert resolve_folder("CompVis/tiny-sd", revision="v2") == repo / "snapshots" / "def456"
    assert load_model("CompVis/tiny-sd").unet.config.cross_attention_dim == 32
    with pytest.raises(WeightsError, match="was not found offline: looked for .*models--CompVis--nope"):
        resolve_folder("CompVis/nope")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert resolve_folder("CompVis/tiny-sd") == repo / "snapshots" / "abc123"


class Payload:
    """Unpickling this would run code (touch a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_inputs(root, sd1_folder, sd2_folder):
    """name -> (path given as --model, expected words)."""
    root.mkdir()
    marker = root / "PWNED"
    cases = {}
    for suffix in (".ckpt", ".bin"):
        p = root / f"evil{suffix}"
        p.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
        cases[f"pickle{suffix}"] = (p, "pickle")
    (root / "empty.safetensors").write_bytes(b"")
    cases["zero bytes"] = (root / "empty.safetensors", "too short")
    (root / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 4\n")
    cases["lfs pointer"] = (root / "lfs.safetensors", "git-lfs pointer")
    (root / "random.safetensors").write_bytes(os.urandom(4096))
    cases["random bytes"] = (root / "random.safetensors", "not a valid safetensors")
    (root / "past.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    cases["header past EOF"] = (root / "past.safetensors", "header claims")
    whole = (sd1_folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(whole[: len(whole) // 3])
    cases["truncated"] = (root / "cut.safetensors", "truncated")
    (root / "no_index").mkdir()
    cases["no model_index"] = (root / "no_index", "no model_index.json")
    shutil.copytree(sd1_folder, root / "broken_config")
    (root / "broken_config" / "vae" / "config.json").write_text("{nope")
    cases["broken config"] = (root / "broken_config", "not valid JSON")
    shutil.copytree(sd1_folder, root / "other_arch")
    shutil.copy(sd2_folder / "unet" / "diffusion_pytorch_model.safetensors", root / "other_arch" / "unet")
    cases["other architecture"] = (root / "other_arch", "mis-shaped")
    cases["missing path"] = (root / "nope.safetensors", "does not exist")
    return cases, marker


def test_bad_inputs_are_refused_in_one_line(sd1_folder, sd2_folder, tmp_path):
    cases, marker = bad_inputs(tmp_path / "bad", sd1_folder, sd2_folder)
    for name, (path, words) in cases.items():
        for extra in ([], ["--allow-pickle"]) if name.startswith("pickle") else ([],):
            r = subprocess.run([sys.executable, "-m", "sumie.cli", "generate", "x", "--model", str(path), "--quiet",
                                *extra], capture_output=True, text=True, timeout=120)
            assert r.returncode == 2, (name, r.stderr)
            assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
            assert words in r.stderr or (extra and "refused" in r.stderr), (name, r.stderr)
    assert not marker.exists()  # no code ran
    r = subprocess.run([sys.executable, "-m", "sumie.cli", "info", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "is a folder" in r.stderr  # a directory where a file is expected


def full_size_single_file(version, path):
    """A full-size SD 1.5 / 2.1 single file in the original layout, with unset (random) fp16 weights, built
    from the published configs; SD 2's file holds OpenCLIP's full 24 layers and its unused projection."""
    from test_structure import config as published

    from sumie.config import TextEncoderConfig, UNetConfig, VAEConfig
    from sumie.text_encoder import CLIPTextModel
    from sumie.unet import UNet2DConditionModel
    from sumie.vae import AutoencoderKL
    from sumie.weights import SINGLE_FILE_PREFIX, ours_to_open_clip, to_original

    ucfg, vcfg = UNetConfig.from_dict(published(f"{version}_unet")), VAEConfig.from_dict(published(f"{version}_vae"))
    tcfg = TextEncoderConfig.from_dict(published(f"{version}_text_encoder"))
    empty = lambda module: {k: torch.empty(v.shape, dtype=torch.float16) for k, v in module.state_dict().items()}
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(ucfg), AutoencoderKL(vcfg)
        text = CLIPTextModel(tcfg if version == "sd15" else
                             TextEncoderConfig(**{**tcfg.__dict__, "num_hidden_layers": 24}))
    state = {SINGLE_FILE_PREFIX["unet"] + k: v for k, v in to_original("unet", ucfg, empty(unet)).items()}
    state.update({SINGLE_FILE_PREFIX["vae"] + k: v for k, v in to_original("vae", vcfg, empty(vae)).items()})
    if version == "sd15":
        state.update({"cond_stage_model.transformer.text_model." + k: v for k, v in empty(text).items()})
    else:
        oc = ours_to_open_clip(empty(text), 24)
        oc.update({"text_projection": torch.empty(1024, 1024, dtype=torch.float16), "logit_scale": torch.ones(())})
        state.update({SINGLE_FILE_PREFIX["open_clip"] + k: v for k, v in oc.items()})
    save_file(state, path)
    return ucfg, vcfg, tcfg


@pytest.mark.parametrize("version", ["sd15", "sd21"])
def test_full_size_single_files_are_detected(version, tmp_path):
    import dataclasses
    path = tmp_path / f"{version}.safetensors"
    ucfg, vcfg, tcfg = full_size_single_file(version, path)
    parts = load_model(path)  # no --config: the architecture comes from the tensor shapes
    assert parts.unet.config == ucfg
    assert dataclasses.replace(parts.vae.config, sample_size=vcfg.sample_size) == vcfg
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act"):
        assert getattr(parts.text_encoder.config, field) == getattr(tcfg, field), field
    assert parts.unet.conv_in.weight.dtype == torch.float16  # kept as stored, memory-mapped
    v2 = version == "sd21"
    assert parts.scheduler_config.get("prediction_type", "epsilon") == ("v_prediction" if v2 else "epsilon")
    assert parts.tokenizer.pad_token == ("!" if v2 else "<|endoftext|>")
    if v2:
        base = load_model(path, prediction_type="epsilon")
        assert base.scheduler_config["prediction_type"] == "epsilon" and base.unet.config.sample_size == 64


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


def test_sd2_base_pickle_is_epsilon(single_files, sd2_folder, tmp_path):
    torch.save({"state_dict": load_file(single_files["sd2"]), "global_step": 875000}, tmp_path / "base.ckpt")
    parts = load_model(tmp_path / "base.ckpt", allow_pickle=True, config=sd2_folder)
    assert parts.scheduler_config["prediction_type"] == "epsilon"


def test_model_hash_is_a1111s_and_cached(single_files, tmp_path, monkeypatch):
    import hashlib

    from sumie.weights import model_hash
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = single_files["sd1"]
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert model_hash(path) == expected
    cache = json.loads((tmp_path / "sumie" / "hashes.json").read_text())
    assert list(cache.values()) == [expected]
    (tmp_path / "sumie" / "hashes.json").write_text(json.dumps({k: "cachedvalu" for k in cache}))
    assert model_hash(path) == "cachedvalu"  # served from the cache, not re-read
