"""diffusers / transformers class names over sumie's models, for code written against those libraries.

    from sumie.compat import AutoencoderKL, CLIPTextModel, CLIPTokenizer, UNet2DConditionModel, PNDMScheduler

Each class has `from_pretrained(folder, subfolder=...)` and the reference's call conventions
(`unet(...).sample`, `vae.encode(x).latent_dist`, `vae.decode(z).sample`, `text_encoder(ids)[0]`).
The maths is sumie's own; only the wrapping of results differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import taesd as _taesd, text_encoder as _text, unet as _unet, vae as _vae
from .pipeline import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from .schedulers.adapter import Scheduler, SchedulerOutput
from .tokenizer import CLIPTokenizer as _Tokenizer
from .weights import load_component_dir, load_tiny_vae
from .xl import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline


def _load(cls, kind, path, subfolder, torch_dtype=None, variant=None, **_ignored):
    sub = Path(path) / subfolder if subfolder else Path(path)
    return load_component_dir(sub, kind, dtype=torch_dtype, variant=variant, model_cls=cls)


@dataclass
class UNet2DConditionOutput:
    sample: torch.Tensor


@dataclass
class DecoderOutput:
    sample: torch.Tensor


@dataclass
class AutoencoderKLOutput:
    latent_dist: _vae.DiagonalGaussian


class UNet2DConditionModel(_unet.UNet2DConditionModel):
    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **kwargs):
        return _load(cls, "unet", path, subfolder, **kwargs)

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs: dict | None = None,
                return_dict: bool = True, **_ignored):
        out = super().forward(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        return UNet2DConditionOutput(out) if return_dict else (out,)


class AutoencoderKL(_vae.AutoencoderKL):
    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **kwargs):
        return _load(cls, "vae", path, subfolder, **kwargs)

    def encode(self, x, return_dict: bool = True):
        posterior = super().encode(x)
        return AutoencoderKLOutput(posterior) if return_dict else (posterior,)

    def decode(self, z, return_dict: bool = True, **_ignored):
        image = super().decode(z)
        return DecoderOutput(image) if return_dict else (image,)


class AutoencoderTiny(_taesd.TinyAutoencoder):
    """diffusers' AutoencoderTiny (TAESD): a diffusers folder; for the original files, `weights.load_tiny_vae`."""

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, torch_dtype=None, **_ignored):
        model = load_tiny_vae(Path(path) / subfolder if subfolder else Path(path), dtype=torch_dtype)
        model.__class__ = cls
        return model

    def decode(self, z, return_dict: bool = True, **_ignored):
        image = super().decode(z)
        return DecoderOutput(image) if return_dict else (image,)


class CLIPTextModel(_text.CLIPTextModel):
    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **kwargs):
        return _load(cls, "text_encoder", path, subfolder, **kwargs)


class CLIPTextModelWithProjection(_text.CLIPTextModelWithProjection):
    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **kwargs):
        return _load(cls, "text_encoder_2", path, subfolder, **kwargs)


class CLIPTokenizer(_Tokenizer):
    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None, **_ignored):
        return cls.from_folder(Path(path) / subfolder if subfolder else Path(path))


def _scheduler(name: str, sampler_id: str):
    return type(name, (Scheduler,), {"sampler_id": sampler_id, "__doc__": f"diffusers' {name}: sumie's {sampler_id!r}."})


PNDMScheduler = _scheduler("PNDMScheduler", "pndm")
DDIMScheduler = _scheduler("DDIMScheduler", "ddim")
DDPMScheduler = _scheduler("DDPMScheduler", "ddpm")
LMSDiscreteScheduler = _scheduler("LMSDiscreteScheduler", "lms")
EulerDiscreteScheduler = _scheduler("EulerDiscreteScheduler", "euler")
EulerAncestralDiscreteScheduler = _scheduler("EulerAncestralDiscreteScheduler", "euler-a")
HeunDiscreteScheduler = _scheduler("HeunDiscreteScheduler", "heun")
UniPCMultistepScheduler = _scheduler("UniPCMultistepScheduler", "unipc")
LCMScheduler = _scheduler("LCMScheduler", "lcm")


class DPMSolverMultistepScheduler(Scheduler):
    """diffusers' DPMSolverMultistepScheduler: 'dpm++2m', or 'dpm++2m-sde' for algorithm_type='sde-dpmsolver++'."""

    sampler_id = "dpm++2m"

    def __init__(self, sampler_id: str | None = None, **config):
        sde = config.get("algorithm_type") == "sde-dpmsolver++"
        super().__init__(sampler_id or ("dpm++2m-sde" if sde else "dpm++2m"), **config)


__all__ = ["AutoencoderKL", "AutoencoderTiny", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer",
           "DDIMScheduler", "DDPMScheduler",
           "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
           "HeunDiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler", "PNDMScheduler", "SchedulerOutput",
           "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionPipeline",
           "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLPipeline", "UNet2DConditionModel",
           "UniPCMultistepScheduler"]
