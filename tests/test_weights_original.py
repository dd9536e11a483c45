"""`weights.original`: single-file checkpoints in the original layout: parity with what diffusers reads,
EMA weights, architecture detection from shapes, SD 2 base."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sumie.pipeline import StableDiffusionPipeline
from sumie.weights import load_model


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


def test_ema_weights_are_used(single_files, sd1_folder, tmp_path):
    state = load_file(single_files["sd1"])
    ema = {"model_ema." + "".join(k.split(".")[1:]): v + 1 for k, v in state.items()
           if k.startswith("model.diffusion_model.")}
    save_file({**state, **ema}, tmp_path / "ema.safetensors")
    loaded = load_model(tmp_path / "ema.safetensors", config=sd1_folder)
    assert torch.equal(loaded.unet.conv_in.weight, state["model.diffusion_model.input_blocks.0.0.weight"] + 1)


def save_unset(state: dict[str, torch.Tensor], path):
    """A safetensors file of `state`'s names, dtypes and shapes (meta tensors will do) whose data is never written:
    the file is extended to its size as a hole, which reads back as zeros (the format: an 8-byte little-endian
    header length, the JSON header, the data). A full-size checkpoint in well under a second."""
    import json
    header, offset = {}, 0
    for name, t in state.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": {torch.float16: "F16", torch.float32: "F32"}[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)


def full_size_single_file(version, path):
    """A full-size SD 1.5 / 2.1 single file in the original layout, with unset fp16 weights (`save_unset`),
    built from the presets (equal to the published configs: test_config.py); SD 2's file holds OpenCLIP's full
    24 layers and its unused projection."""
    from sumie.config import PRESETS, TextEncoderConfig
    from sumie.text_encoder import CLIPTextModel
    from sumie.unet import UNet2DConditionModel
    from sumie.vae import AutoencoderKL
    from sumie.weights import SINGLE_FILE_PREFIX, ours_to_open_clip, to_original

    ucfg, vcfg, tcfg = PRESETS[version].unet, PRESETS[version].vae, PRESETS[version].text_encoder  # the published
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(ucfg).half(), AutoencoderKL(vcfg).half()
        text = CLIPTextModel(tcfg if version == "sd15" else
                             TextEncoderConfig(**{**tcfg.__dict__, "num_hidden_layers": 24})).half()
        state = {SINGLE_FILE_PREFIX["unet"] + k: v for k, v in to_original("unet", ucfg, unet.state_dict()).items()}
        state.update({SINGLE_FILE_PREFIX["vae"] + k: v for k, v in to_original("vae", vcfg, vae.state_dict()).items()})
        if version == "sd15":
            state.update({"cond_stage_model.transformer.text_model." + k: v for k, v in text.state_dict().items()})
        else:
            oc = ours_to_open_clip(text.state_dict(), 24)
            oc.update({"text_projection": torch.empty(1024, 1024, dtype=torch.float16),
                       "logit_scale": torch.empty((), dtype=torch.float32)})
            state.update({SINGLE_FILE_PREFIX["open_clip"] + k: v for k, v in oc.items()})
    save_unset(state, path)
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


def test_sd2_base_pickle_is_epsilon(single_files, sd2_folder, tmp_path):
    torch.save({"state_dict": load_file(single_files["sd2"]), "global_step": 875000}, tmp_path / "base.ckpt")
    parts = load_model(tmp_path / "base.ckpt", allow_pickle=True, config=sd2_folder)
    assert parts.scheduler_config["prediction_type"] == "epsilon"
