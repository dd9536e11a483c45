"""Loading diffusers folders: variants, shards, dtypes, and clear errors for broken inputs."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sumie.errors import ConfigError, SumieError, WeightsError
from sumie.weights import load_component, load_folder, read_safetensors


@pytest.fixture
def copy(sd1_folder, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(sd1_folder, dst)
    return dst


def test_load_whole_folder(sd1_folder):
    c = load_folder(sd1_folder)
    assert c.unet.config.cross_attention_dim == c.text_encoder.config.hidden_size
    assert c.tokenizer.pad_token_id == 49407 and c.scheduler_config["_class_name"] == "PNDMScheduler"
    assert not any(p.requires_grad for p in c.unet.parameters())


def mapped_ranges(path):
    """Address ranges where `path` is memory-mapped into this process (Linux /proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_weights_are_memory_mapped(sd1_folder):
    """float32 on CPU: the parameters are views of the mapped file, not copies."""
    path = (sd1_folder / "unet" / "diffusion_pytorch_model.safetensors").resolve()
    unet = load_component(sd1_folder, "unet")
    ranges = mapped_ranges(path)
    assert ranges
    assert all(any(lo <= p.data_ptr() < hi for lo, hi in ranges) for p in unet.parameters())
    half = load_component(sd1_folder, "unet", dtype=torch.float16)  # a dtype change must copy
    assert not any(lo <= half.conv_in.weight.data_ptr() < hi for lo, hi in mapped_ranges(path))


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


def error_of(fn):
    with pytest.raises(SumieError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    return message


def test_truncated_safetensors(copy):
    path = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in error_of(lambda: load_folder(copy))


@pytest.mark.parametrize("content,needle", [
    (b"", "too short"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-lfs pointer"),
    (bytes(range(256)) * 4, "header claims"),
    ((10 ** 9).to_bytes(8, "little") + b"{}", "header claims"),
    ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    ((4).to_bytes(8, "little") + b"nope", "not JSON"),
])
def test_broken_weight_files(copy, content, needle):
    (copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(content)
    assert needle in error_of(lambda: load_component(copy, "vae"))


def test_missing_subfolder(copy):
    shutil.rmtree(copy / "vae")
    assert "no vae/ subfolder" in error_of(lambda: load_folder(copy))


def test_missing_model_index(copy):
    (copy / "model_index.json").unlink()
    assert "no model_index.json" in error_of(lambda: load_folder(copy))


def test_not_a_folder(copy, tmp_path):
    assert "does not exist" in error_of(lambda: load_folder(tmp_path / "nope"))
    assert "is a file" in error_of(lambda: load_folder(copy / "model_index.json"))


def test_broken_config(copy):
    (copy / "unet" / "config.json").write_text('{"in_channels": 4,')
    message = error_of(lambda: load_folder(copy))
    assert "config.json is not valid JSON" in message and "line 1" in message


def test_unsupported_config_value(copy):
    cfg = json.loads((copy / "unet" / "config.json").read_text())
    cfg["class_embed_type"] = "timestep"
    (copy / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="class_embed_type='timestep' is not supported"):
        load_component(copy, "unet")


def test_missing_fields_take_reference_defaults(copy):
    """The SD 1.4 VAE config predates `scaling_factor`: it is 0.18215."""
    cfg = json.loads((copy / "vae" / "config.json").read_text())
    for k in ("scaling_factor", "force_upcast", "use_quant_conv", "mid_block_add_attention", "latents_mean"):
        cfg.pop(k)
    (copy / "vae" / "config.json").write_text(json.dumps(cfg))
    assert load_component(copy, "vae").config.scaling_factor == 0.18215


def test_weights_of_another_architecture(copy, sd2_folder):
    shutil.copy(sd2_folder / "unet" / "diffusion_pytorch_model.safetensors", copy / "unet")
    message = error_of(lambda: load_component(copy, "unet"))
    assert "does not fit the architecture" in message and "mis-shaped" in message


def test_missing_and_unexpected_keys(copy):
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
