"""The full-size SD 1.5 / 2.1 architectures, built on the meta device from their published configs,
have exactly the reference's parameter names and shapes. No weights needed."""

import json
from pathlib import Path

import pytest
import torch

from sumie.config import TextEncoderConfig, UNetConfig, VAEConfig
from sumie.text_encoder import CLIPTextModel
from sumie.unet import UNet2DConditionModel
from sumie.vae import AutoencoderKL

DATA = Path(__file__).parent / "data"


def shapes(module):
    return {k.removeprefix("text_model."): tuple(v.shape) for k, v in module.state_dict().items()
            if not k.endswith("position_ids")}


def config(name):
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("version", ["sd15", "sd21"])
def test_full_size_structure(version):
    import diffusers
    import transformers

    with torch.device("meta"):
        pairs = {
            "unet": (UNet2DConditionModel(UNetConfig.from_dict(config(f"{version}_unet"))),
                     diffusers.UNet2DConditionModel.from_config(config(f"{version}_unet"))),
            "vae": (AutoencoderKL(VAEConfig.from_dict(config(f"{version}_vae"))),
                    diffusers.AutoencoderKL.from_config(config(f"{version}_vae"))),
            "text_encoder": (CLIPTextModel(TextEncoderConfig.from_dict(config(f"{version}_text_encoder"))),
                             transformers.CLIPTextModel(
                                 transformers.CLIPTextConfig(**config(f"{version}_text_encoder")))),
        }
    for name, (ours, theirs) in pairs.items():
        assert shapes(ours) == shapes(theirs), name
    if version == "sd15":
        millions = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, (m, _) in pairs.items()}
        assert round(millions["unet"]) == 860 and round(millions["text_encoder"]) == 123
        assert round(millions["vae"]) == 84
