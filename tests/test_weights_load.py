"""`weights.load`: diffusers folders (variants, shards, dtypes), a separate VAE, the hub cache, and clear errors."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from sumie.errors import WeightsError
from sumie.weights import load_component, load_folder, load_model, resolve_folder


def test_separate_vae(single_files, sd1_folder, tmp_path):
    state = load_file(single_files["sd1"])
    vae = {k.removeprefix("first_stage_model."): v * 2 for k, v in state.items() if k.startswith("first_stage_model.")}
    save_file(vae, tmp_path / "vae.safetensors")  # the layout of e.g. vae-ft-mse-840000-ema-pruned.safetensors
    parts = load_model(sd1_folder, vae=tmp_path / "vae.safetensors")
    base = load_model(sd1_folder)
    assert torch.equal(parts.vae.decoder.conv_out.weight, base.vae.decoder.conv_out.weight * 2)
    assert torch.equal(load_model(sd1_folder, vae=sd1_folder / "vae").vae.encoder.conv_in.weight,
                       base.vae.encoder.conv_in.weight)


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


def test_load_whole_folder(sd1_folder):
    c = load_folder(sd1_folder)
    assert c.unet.config.cross_attention_dim == c.text_encoder.config.hidden_size
    assert c.tokenizer.pad_token_id == 49407 and c.scheduler_config["_class_name"] == "PNDMScheduler"
    assert not any(p.requires_grad for p in c.unet.parameters())


def test_loading_sets_no_random_init_and_imports_no_compiler(sd1_folder):
    """Models are built on the meta device without torch.nn.init (whose meta `normal_` imports torch._dynamo, a
    second and more at the start of each CLI or server process), and their init is unchanged outside."""
    code = ("import sys, torch; from sumie.weights import load_model; parts = load_model(sys.argv[1]); "
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'; "
            "torch.manual_seed(0); e = torch.nn.Embedding(4, 3); torch.manual_seed(0); "
            "assert torch.equal(e.weight, torch.randn(4, 3)), 'init changed'")
    r = subprocess.run([sys.executable, "-c", code, str(sd1_folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]


def test_fp16_variant_and_shards(copy):
    path = copy / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    save_file({k: v.half() for k, v in state.items()}, copy / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, copy / "unet" / "diffusion_pytorch_model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[half:]}, copy / "unet" / "diffusion_pytorch_model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {k: f"diffusion_pytorch_model-0000{1 + (i >= half)}-of-00002.safetensors"
                                            for i, k in enumerate(keys)}}
    (copy / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    fp16 = load_component(copy, "unet", variant="fp16")
    assert fp16.conv_in.weight.dtype == torch.float16  # file dtype kept when none is asked
    path.unlink()
    sharded = load_component(copy, "unet")
    assert torch.equal(sharded.conv_out.weight, state["conv_out.weight"])
    assert load_component(copy, "unet", variant="fp16", dtype=torch.float32).conv_in.weight.dtype == torch.float32


def test_bfloat16(sd1_folder):
    vae = load_component(sd1_folder, "vae", dtype=torch.bfloat16)
    out = vae.decode(torch.randn(1, 4, 4, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 8, 8)


def test_missing_subfolder(copy, error_of):
    shutil.rmtree(copy / "vae")
    assert "no vae/ subfolder" in error_of(lambda: load_folder(copy))


def test_missing_model_index(copy, error_of):
    (copy / "model_index.json").unlink()
    assert "no model_index.json" in error_of(lambda: load_folder(copy))


def test_not_a_folder(copy, tmp_path, error_of):
    assert "does not exist" in error_of(lambda: load_folder(tmp_path / "nope"))
    assert "is a file" in error_of(lambda: load_folder(copy / "model_index.json"))


def test_weights_of_another_architecture(copy, sd2_folder, error_of):
    shutil.copy(sd2_folder / "unet" / "diffusion_pytorch_model.safetensors", copy / "unet")
    message = error_of(lambda: load_component(copy, "unet"))
    assert "does not fit the architecture" in message and "mis-shaped" in message


def test_missing_and_unexpected_keys(copy, error_of):
    path = copy / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state.pop("decoder.conv_out.bias")
    state["decoder.extra.weight"] = torch.zeros(1)
    save_file(state, path)
    message = error_of(lambda: load_component(copy, "vae"))
    assert "missing 1 keys: decoder.conv_out.bias" in message and "unexpected 1 keys: decoder.extra.weight" in message


def test_pickle_only_folder_is_refused(copy):
    (copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (copy / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(WeightsError, match="only pickled weights"):
        load_component(copy, "vae")
