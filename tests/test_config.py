"""`config`: configs read from config.json files with clear errors, and the named presets, each equal to the
published folder's config files as read."""

import dataclasses
import json
from pathlib import Path

import pytest

from sumie import tiny
from sumie.config import PRESETS, SD15, SD21, SD21_BASE, TINY, TextEncoderConfig, UNetConfig, VAEConfig
from sumie.errors import ConfigError
from sumie.weights import load_component, load_folder

DATA = Path(__file__).parent / "data"
CLASSES = {"unet": UNetConfig, "vae": VAEConfig, "text_encoder": TextEncoderConfig}


def published(name):
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("preset", [SD15, SD21], ids=lambda p: p.name)
def test_the_sd_presets_are_the_published_configs(preset):
    version = preset.name
    for component, cls in CLASSES.items():
        assert getattr(preset, component) == cls.from_dict(published(f"{version}_{component}")), component
    scheduler = published(f"{version}_scheduler")
    assert {k: scheduler.get(k) for k in preset.scheduler} == dict(preset.scheduler)


def test_sd21_base_differs_from_sd21_in_size_and_prediction_only():
    assert SD21_BASE.unet == dataclasses.replace(SD21.unet, sample_size=64)
    assert SD21_BASE.text_encoder == SD21.text_encoder
    assert dict(SD21_BASE.scheduler) == {**SD21.scheduler, "prediction_type": "epsilon"}


def test_the_tiny_preset_is_the_shipped_model():
    folder = tiny.MODEL_DIR
    for component, cls in CLASSES.items():
        shipped = cls.from_dict(json.loads((folder / component / "config.json").read_text()))
        if component == "vae":  # set after training: 1 / the latents' std, and no fp16 upcast
            shipped = dataclasses.replace(shipped, scaling_factor=TINY.vae.scaling_factor, force_upcast=True)
        assert getattr(TINY, component) == shipped, component
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert {k: scheduler[k] for k in TINY.scheduler} == dict(TINY.scheduler)
    assert set(PRESETS) == {"sd15", "sd21", "sd21-base", "sumie-tiny", "sdxl", "sdxl-refiner"}


def test_broken_config(copy, error_of):
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
