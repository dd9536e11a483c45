"""Writing models: a single original-layout .safetensors file, or a diffusers folder (`sumie convert`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import WeightsError
from ..tokenizer import write_vocab_files
from .load import Components, load_model
from .original import OPEN_CLIP_LAYERS_KEY, SINGLE_FILE_PREFIX, XL_PREFIX, ours_to_big_g, ours_to_open_clip, to_original


def to_single_file_state(parts: Components, dtype=None) -> dict[str, torch.Tensor]:
    """All weights under original single-file names (SD 2 text towers and SDXL's bigG in OpenCLIP layout)."""
    cast = (lambda t: t.to(dtype) if dtype is not None and t.is_floating_point() else t)
    state = {}
    for kind, model in (("unet", parts.unet), ("vae", parts.vae)):
        state.update({SINGLE_FILE_PREFIX[kind] + k: v for k, v in to_original(kind, model.config, model.state_dict()).items()})
    if parts.is_xl:  # the base: ViT-L at embedder 0, bigG at 1; the refiner: bigG at 0
        big_g = XL_PREFIX["big_g" if parts.text_encoder is not None else "refiner_big_g"]
        layers = parts.text_encoder_2.config.num_hidden_layers
        state.update({big_g + k: v for k, v in ours_to_big_g(parts.text_encoder_2.state_dict(), layers).items()})
        if parts.text_encoder is not None:
            state.update({XL_PREFIX["clip_l"] + k: v for k, v in parts.text_encoder.state_dict().items()})
        return {k: cast(v).contiguous() for k, v in state.items()}
    text = parts.text_encoder.state_dict()
    if parts.text_encoder.config.hidden_act == "gelu":  # OpenCLIP (SD 2.x)
        layers = parts.text_encoder.config.num_hidden_layers
        state.update({SINGLE_FILE_PREFIX["open_clip"] + k: v for k, v in ours_to_open_clip(text, layers).items()})
        state[SINGLE_FILE_PREFIX["open_clip"] + OPEN_CLIP_LAYERS_KEY] = torch.tensor(layers)
    else:
        state.update({SINGLE_FILE_PREFIX["text_encoder"] + k: v for k, v in text.items()})
    return {k: cast(v).contiguous() for k, v in state.items()}


def _config_json(config, **extra) -> str:
    return json.dumps({**extra, **dataclasses.asdict(config)}, indent=2)


def write_folder(parts: Components, out: Path, dtype=None) -> None:
    """A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/; SDXL's
    text_encoder_2/ and tokenizer_2/), with the text encoders under transformers 4.x names (`text_model.`),
    which every transformers reads."""
    cast = (lambda t: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous())
    texts = {name: (model, tok) for name, model, tok in (("text_encoder", parts.text_encoder, parts.tokenizer),
                                                         ("text_encoder_2", parts.text_encoder_2, parts.tokenizer_2))
             if model is not None}
    for name in ("unet", "vae", "scheduler", *texts):
        (out / name).mkdir(parents=True)
    for name in ("unet", "vae"):
        model = getattr(parts, name)
        save_file({k: cast(v) for k, v in model.state_dict().items()}, out / name / "diffusion_pytorch_model.safetensors")
    (out / "unet" / "config.json").write_text(_config_json(parts.unet.config, _class_name="UNet2DConditionModel"))
    (out / "vae" / "config.json").write_text(_config_json(parts.vae.config, _class_name="AutoencoderKL"))
    index = {"_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
             "safety_checker": [None, None], "requires_safety_checker": False}
    if parts.is_xl:
        index = {"_class_name": "StableDiffusionXLImg2ImgPipeline" if parts.text_encoder is None
                 else "StableDiffusionXLPipeline", **parts.options, "text_encoder": [None, None],
                 "tokenizer": [None, None]}
    for name, (model, tokenizer) in texts.items():
        cls = "CLIPTextModelWithProjection" if name == "text_encoder_2" else "CLIPTextModel"
        save_file({(k if k.startswith("text_projection.") else "text_model." + k): cast(v)
                   for k, v in model.state_dict().items()}, out / name / "model.safetensors")
        (out / name / "config.json").write_text(_config_json(model.config, architectures=[cls],
                                                             model_type="clip_text_model"))
        tok = name.replace("text_encoder", "tokenizer")
        write_vocab_files(out / tok, pad_token=tokenizer.pad_token)
        index.update({name: ["transformers", cls], tok: ["transformers", "CLIPTokenizer"]})
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(parts.scheduler_config, indent=2))
    index.update({"scheduler": ["diffusers", parts.scheduler_config.get("_class_name", "PNDMScheduler")],
                  "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def convert(src: str | Path, dst: str | Path, *, dtype=None, allow_pickle: bool = False, config=None,
            prediction_type: str | None = None) -> Path:
    """Between a diffusers folder and a single .safetensors file, whichever way `dst` names. Never overwrites;
    the result appears whole or not at all (written beside `dst`, then renamed)."""
    dst = Path(dst)
    if dst.exists():
        raise WeightsError(f"{dst} already exists; choose a new output path")
    if not dst.parent.is_dir():
        raise WeightsError(f"{dst.parent} is not a folder; create it first")
    parts = load_model(src, allow_pickle=allow_pickle, config=config, prediction_type=prediction_type)
    if dst.suffix == ".safetensors":
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=dst.parent)
        os.close(fd)
        try:
            save_file(to_single_file_state(parts, dtype), tmp)
            os.link(tmp, dst)
        finally:
            os.unlink(tmp)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dst.parent))
        try:
            write_folder(parts, tmp / "model", dtype)
            os.rename(tmp / "model", dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dst
