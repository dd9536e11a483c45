"""Loading models: strict assignment onto the meta device, diffusers folders, single files, the hub cache.

Models are built on the meta device and their parameters are then *assigned* tensors that view the
memory-mapped file, so loading never holds two copies of the weights (gpt-fast's recipe). A tensor is
copied only when it must change dtype or device. Every key in the file must be used and every
parameter filled; anything else is one WeightsError that lists the offending keys.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import tiny
from ..config import (SD15, SD21, SD21_BASE, SDXL, SDXL_REFINER, TextEncoderConfig, TinyVAEConfig, UNetConfig,
                      VAEConfig, read_json)
from ..errors import WeightsError
from ..taesd import TinyAutoencoder
from ..text_encoder import CLIPTextModel, CLIPTextModelWithProjection
from ..tokenizer import CLIPTokenizer
from ..unet import UNet2DConditionModel
from ..vae import AutoencoderKL
from .files import PICKLE_SUFFIXES, find_weight_files, read_checkpoint, read_weight_files
from .original import (IGNORED, SINGLE_FILE_PREFIX, big_g_to_ours, detect_big_g, detect_text_encoder, detect_unet,
                       detect_vae, from_original, open_clip_to_ours, split_components, with_ema)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str,
              dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """Strictly assign `state` to a (meta-device) `model`: every key used, every parameter filled, shapes equal.

    Tensors are converted to `dtype` (floating point ones only) and moved to `device`; one that already
    matches stays a view of the file.
    """
    expected = {k: v.shape for k, v in model.state_dict(keep_vars=True).items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} (file {tuple(state[k].shape)}, model {tuple(s)})"
                 for k, s in expected.items() if k in state and state[k].shape != s]
    if missing or unexpected or misshaped:
        raise WeightsError(f"{source} does not fit the architecture in its config: "
                           + "; ".join(f"{label} {len(keys)} keys: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                                       for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                           ("mis-shaped", misshaped)) if keys))
    converted = {}
    for k, t in state.items():
        target = dtype if dtype is not None and t.is_floating_point() else t.dtype
        converted[k] = t.to(device=device, dtype=target)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval().requires_grad_(False)


class _NoInit(TorchFunctionMode):
    """torch.nn.init's functions leave their tensor as it is: a meta tensor has no values to set, and torch's meta
    `normal_` (nn.Embedding's init) imports torch._dynamo, over a second at each process's first load."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta():
    """Modules made inside are built on the meta device, without their random init; `load_into` fills them."""
    with torch.device("meta"), _NoInit():
        yield


def build(model_cls, config, state: dict[str, torch.Tensor], *, source: str, dtype=None, device="cpu",
          original: str | None = None) -> nn.Module:
    """Construct `model_cls(config)` on the meta device and fill it from `state`, whose keys are ours, or
    with `original` = "unet" / "vae", that component's keys in the original single-file layout."""
    with on_meta():
        model = model_cls(config)
    if original is not None:
        state = from_original(original, config, model.state_dict().keys(), state)
    return load_into(model, state, source=source, dtype=dtype, device=device)


def strip_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers < 5.6 saved CLIPTextModel keys under `text_model.`; newer versions drop it."""
    return {k.removeprefix("text_model."): v for k, v in state.items()}


# Component subfolders of a diffusers model folder: model class, config class, weight file stem, key rename.
COMPONENTS = {
    "text_encoder": (CLIPTextModel, TextEncoderConfig, "model", strip_text_model),
    "text_encoder_2": (CLIPTextModelWithProjection, TextEncoderConfig, "model", strip_text_model),  # SDXL's bigG
    "unet": (UNet2DConditionModel, UNetConfig, "diffusion_pytorch_model", lambda state: state),
    "vae": (AutoencoderKL, VAEConfig, "diffusion_pytorch_model", lambda state: state),
}


def load_component(folder: str | Path, name: str, *, dtype=None, device="cpu", variant: str | None = None,
                   model_cls=None):
    """Load `folder/name` (e.g. `unet`) of a diffusers model folder into a sumie model."""
    sub = Path(folder) / name
    if not sub.is_dir():
        raise WeightsError(f"{folder} has no {name}/ subfolder; a diffusers Stable Diffusion folder has "
                           f"text_encoder/, tokenizer/, unet/, vae/ and scheduler/")
    return load_component_dir(sub, name, dtype=dtype, device=device, variant=variant, model_cls=model_cls)


def load_component_dir(sub: Path, kind: str, *, dtype=None, device="cpu", variant=None, model_cls=None):
    """Load one component folder (config.json + weights) of `kind` text_encoder(_2) / unet / vae."""
    default_cls, config_cls, stem, rename = COMPONENTS[kind]
    if not sub.is_dir():
        raise WeightsError(f"{sub} is not a folder; expected a {kind} folder with config.json and weights")
    config = config_cls.from_dict(read_json(sub / "config.json"), source=str(sub / "config.json"))
    state = rename(read_weight_files(find_weight_files(sub, stem, variant)))
    return build(model_cls or default_cls, config, state, source=str(sub), dtype=dtype, device=device)


@dataclass
class Components:
    """The parts of a Stable Diffusion model, as loaded from one folder or file. SDXL adds a second text encoder
    and tokenizer (its refiner has only those: `text_encoder` and `tokenizer` None) and `options`, the flags of
    its model_index.json (`force_zeros_for_empty_prompt`, `requires_aesthetics_score`)."""

    tokenizer: CLIPTokenizer | None
    text_encoder: nn.Module | None
    unet: nn.Module
    vae: nn.Module
    scheduler_config: dict
    source: Path
    text_encoder_2: nn.Module | None = None
    tokenizer_2: CLIPTokenizer | None = None
    options: dict = field(default_factory=dict)

    @property
    def is_xl(self) -> bool:
        return self.text_encoder_2 is not None


def load_folder(folder: str | Path, *, dtype=None, device="cpu", variant: str | None = None) -> Components:
    """Load every component of a diffusers Stable Diffusion folder (the layout `save_pretrained` writes)."""
    folder = Path(folder)
    if not folder.exists():
        raise WeightsError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise WeightsError(f"{folder} is a file; expected a diffusers model folder (with model_index.json)")
    if not (folder / "model_index.json").is_file():
        raise WeightsError(f"{folder} is not a diffusers model folder: it has no model_index.json")
    index = read_json(folder / "model_index.json")
    if not (folder / "scheduler").is_dir():
        raise WeightsError(f"{folder} has no scheduler/ subfolder")
    # SDXL names text_encoder_2 and tokenizer_2; its refiner lists text_encoder and tokenizer as [null, null]
    absent = lambda name: name not in index if name.endswith("_2") else index.get(name, [0])[0] is None
    load = lambda name: None if absent(name) else load_component(folder, name, dtype=dtype, device=device,
                                                                 variant=variant)
    tokenizer = lambda name: None if absent(name) else CLIPTokenizer.from_folder(folder / name)
    return Components(tokenizer=tokenizer("tokenizer"), text_encoder=load("text_encoder"), unet=load("unet"),
                      vae=load("vae"), text_encoder_2=load("text_encoder_2"), tokenizer_2=tokenizer("tokenizer_2"),
                      scheduler_config=read_json(folder / "scheduler" / "scheduler_config.json"), source=folder,
                      options={k: index[k] for k in ("force_zeros_for_empty_prompt", "requires_aesthetics_score")
                               if k in index})


def load_single_file(path: str | Path, *, dtype=None, device="cpu", allow_pickle: bool = False,
                     config: str | Path | None = None, prediction_type: str | None = None) -> Components:
    """An original single-file SD 1.x / 2.x checkpoint. Architecture is read from tensor shapes, or
    from the component configs of diffusers folder `config` (for non-standard variants)."""
    path = Path(path)
    state = with_ema(read_checkpoint(path, allow_pickle=allow_pickle))
    parts = split_components(state)
    if "big_g" in parts:
        return _load_single_file_xl(path, parts, dtype=dtype, device=device, config=config)
    missing = [k for k in ("unet", "vae") if k not in parts] + ([] if {"text_encoder", "open_clip"} & set(parts)
                                                                 else ["text encoder"])
    if missing:
        raise WeightsError(f"{path} is not a Stable Diffusion 1.x/2.x checkpoint: no {', '.join(missing)} weights "
                           f"(expected keys under model.diffusion_model., first_stage_model., cond_stage_model.)")
    v2 = "open_clip" in parts
    if v2 and prediction_type is None and int(state.get("global_step", -1)) == 875000:
        prediction_type = "epsilon"  # the SD 2.0/2.1 *base* checkpoints stop at this step (diffusers' rule)
    if config is not None:
        folder = resolve_folder(config)
        ucfg, vcfg, tcfg = (cls.from_dict(read_json(folder / name / "config.json"), source=str(folder / name))
                            for cls, name in ((UNetConfig, "unet"), (VAEConfig, "vae"), (TextEncoderConfig, "text_encoder")))
        tokenizer = CLIPTokenizer.from_folder(folder / "tokenizer")
        scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
    else:
        preset = SD15 if not v2 else SD21_BASE if prediction_type == "epsilon" else SD21
        try:
            ucfg, vcfg = detect_unet(parts["unet"], preset), detect_vae(parts["vae"], preset)
            tcfg = detect_text_encoder(parts, preset)
        except (KeyError, IndexError, ValueError, ZeroDivisionError):
            raise WeightsError(f"{path}: cannot read the architecture from the tensor shapes; pass --config with a "
                               f"diffusers folder whose configs match (API: config=)") from None
        tokenizer = CLIPTokenizer.standard(pad_token=preset.pad_token)
        scheduler = dict(preset.scheduler)
    if prediction_type is not None:
        scheduler["prediction_type"] = prediction_type
    text = open_clip_to_ours(parts["open_clip"], tcfg.num_hidden_layers) if v2 else strip_text_model(parts["text_encoder"])
    src = str(path)
    return Components(
        tokenizer=tokenizer, scheduler_config=scheduler, source=path,
        unet=build(UNet2DConditionModel, ucfg, parts["unet"], source=src, dtype=dtype, device=device, original="unet"),
        vae=build(AutoencoderKL, vcfg, parts["vae"], source=src, dtype=dtype, device=device, original="vae"),
        text_encoder=build(CLIPTextModel, tcfg, text, source=src, dtype=dtype, device=device))


def _load_single_file_xl(path: Path, parts: dict, *, dtype, device, config) -> Components:
    """An SDXL base or refiner single file (`conditioner.embedders.*`): the refiner has bigG alone. Architecture
    from the shapes, or from the diffusers folder `config`."""
    missing = [k for k in ("unet", "vae") if k not in parts]
    if missing:
        raise WeightsError(f"{path} is not a complete SDXL checkpoint: no {', '.join(missing)} weights (expected "
                           f"keys under model.diffusion_model. and first_stage_model.)")
    refiner = "clip_l" not in parts
    if config is not None:
        folder = resolve_folder(config)
        read = lambda cls, name: cls.from_dict(read_json(folder / name / "config.json"), source=str(folder / name))
        ucfg, vcfg, gcfg = read(UNetConfig, "unet"), read(VAEConfig, "vae"), read(TextEncoderConfig, "text_encoder_2")
        lcfg = None if refiner else read(TextEncoderConfig, "text_encoder")
        tokenizer = None if refiner else CLIPTokenizer.from_folder(folder / "tokenizer")
        tokenizer_2 = CLIPTokenizer.from_folder(folder / "tokenizer_2")
        scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
        index = read_json(folder / "model_index.json")
        options = {k: index[k] for k in ("force_zeros_for_empty_prompt", "requires_aesthetics_score") if k in index}
    else:
        preset = SDXL_REFINER if refiner else SDXL
        try:
            ucfg, vcfg, gcfg = detect_unet(parts["unet"], preset), detect_vae(parts["vae"], preset), \
                detect_big_g(parts["big_g"], preset)
            lcfg = None if refiner else detect_text_encoder(parts, preset)
        except (KeyError, IndexError, ValueError, ZeroDivisionError):
            raise WeightsError(f"{path}: cannot read the SDXL architecture from the tensor shapes; pass --config with "
                               f"a diffusers folder whose configs match (API: config=)") from None
        tokenizer = None if refiner else CLIPTokenizer.standard()
        tokenizer_2 = CLIPTokenizer.standard(pad_token="!")
        scheduler = dict(preset.scheduler)
        options = {"force_zeros_for_empty_prompt": not refiner, "requires_aesthetics_score": refiner}
    src = str(path)
    return Components(
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler_config=scheduler, source=path, options=options,
        unet=build(UNet2DConditionModel, ucfg, parts["unet"], source=src, dtype=dtype, device=device, original="unet"),
        vae=build(AutoencoderKL, vcfg, parts["vae"], source=src, dtype=dtype, device=device, original="vae"),
        text_encoder=None if refiner else build(CLIPTextModel, lcfg, parts["clip_l"], source=src, dtype=dtype,
                                                device=device),
        text_encoder_2=build(CLIPTextModelWithProjection, gcfg, big_g_to_ours(parts["big_g"]), source=src,
                             dtype=dtype, device=device))


def load_vae(path: str | Path, *, like: VAEConfig, dtype=None, device="cpu", allow_pickle: bool = False):
    """A separate VAE: a diffusers `vae` folder, or a single file in the original layout (with or without
    the `first_stage_model.` prefix) or in diffusers names. `like` is the model's own VAE config."""
    path = Path(path)
    if path.is_dir():
        return load_component_dir(path, "vae", dtype=dtype, device=device)
    state = read_checkpoint(path, allow_pickle=allow_pickle)
    state = {k.removeprefix(SINGLE_FILE_PREFIX["vae"]): v for k, v in state.items()
             if not k.removeprefix(SINGLE_FILE_PREFIX["vae"]).startswith(IGNORED["vae"])}
    diffusers_names = any(k.startswith("encoder.down_blocks.") for k in state)
    return build(AutoencoderKL, like, state, source=str(path), dtype=dtype, device=device,
                 original=None if diffusers_names else "vae")


def load_tiny_vae(path: str | Path, *, dtype=None, device="cpu", allow_pickle: bool = False) -> TinyAutoencoder:
    """TAESD (`taesd.TinyAutoencoder`): a diffusers AutoencoderTiny folder (config.json and weights), or the
    original release's files: a folder holding `taesd_decoder` and `taesd_encoder` weights (any prefix, such
    as `taesdxl_`), or one of those files. A decoder alone loads without its encoder (it can only decode);
    which part a file holds is read from its first convolution's shape."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        config = TinyVAEConfig.from_dict(read_json(path / "config.json"), source=str(path / "config.json"))
        state = read_weight_files(find_weight_files(path, "diffusion_pytorch_model"))
        return build(TinyAutoencoder, config, state, source=str(path), dtype=dtype, device=device)
    files = sorted(p for p in path.iterdir() if "_encoder." in p.name or "_decoder." in p.name) \
        if path.is_dir() else [path]
    state = {}
    for file in files:
        part = read_checkpoint(file, allow_pickle=allow_pickle)
        if part.get("0.weight") is not None and part["0.weight"].shape[1] == 3:  # conv(3, 64): an encoder
            state.update({f"encoder.layers.{k}": v for k, v in part.items()})
        elif part.get("1.weight") is not None:  # index 0 is the decoder's clamp, which has no weights
            name, rest = zip(*(k.split(".", 1) for k in part))
            state.update({f"decoder.layers.{int(i) - 1}.{r}": v for i, r, v in zip(name, rest, part.values())})
        else:
            raise WeightsError(f"{file} is not a TAESD encoder or decoder: its keys start "
                               f"{', '.join(list(part)[:3])}; expected 0.weight (encoder) or 1.weight (decoder)")
    if not any(k.startswith("decoder.") for k in state):
        raise WeightsError(f"{path} has no TAESD decoder (taesd_decoder.safetensors); sumie needs the decoder")
    config = TinyVAEConfig(latent_channels=state["decoder.layers.0.weight"].shape[1])
    with on_meta():
        model = TinyAutoencoder(config)
    if not any(k.startswith("encoder.") for k in state):
        model.encoder = None  # decode only
    return load_into(model, state, source=str(path), dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------
# Where a model comes from: a folder, a single file, or a model id in the local Hugging Face cache.
# ---------------------------------------------------------------------------------------------------
def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub (huggingface_hub's rules)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_folder(name: str | Path, revision: str | None = None) -> Path:
    """A local path, or a model id ("Org/Name") found offline in the Hugging Face hub cache
    (`models--Org--Name/snapshots/<commit>`, the commit read from `refs/<revision or main>`), or
    "sumie-tiny", the embedded model."""
    if str(name) == tiny.NAME:
        if not (tiny.MODEL_DIR / "model_index.json").is_file():
            raise WeightsError(f"the embedded model is missing from this install ({tiny.MODEL_DIR}); reinstall "
                               f"sumie, or train it with `sumie train-tiny --out DIR` and pass --model DIR/model")
        return tiny.MODEL_DIR
    path = Path(name).expanduser()
    if path.exists():
        return path
    text = str(name)
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or text.endswith((".safetensors",) + PICKLE_SUFFIXES):
        raise WeightsError(f"{name} does not exist")
    repo = hub_cache_dir() / ("models--" + text.replace("/", "--"))
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else (revision or "")
    snapshot = repo / "snapshots" / commit
    if commit and snapshot.is_dir():
        return snapshot
    raise WeightsError(f"model {text!r} was not found offline: looked for {snapshot if commit else ref} in the "
                       f"Hugging Face cache {hub_cache_dir()} (set HF_HOME or HF_HUB_CACHE), and for a local path "
                       f"{path}; download it on a connected machine with `huggingface-cli download {text}` "
                       f"and copy the cache, or pass a folder or .safetensors file")


def load_model(name: str | Path, *, dtype=None, device="cpu", variant: str | None = None, revision: str | None = None,
               allow_pickle: bool = False, config=None, prediction_type: str | None = None, vae=None) -> Components:
    """Any supported model source -> Components: a diffusers folder, a hub-cache id, or a single file."""
    path = resolve_folder(name, revision)
    if path.is_dir():
        parts = load_folder(path, dtype=dtype, device=device, variant=variant)
        if prediction_type is not None:
            parts.scheduler_config = {**parts.scheduler_config, "prediction_type": prediction_type}
    else:
        parts = load_single_file(path, dtype=dtype, device=device, allow_pickle=allow_pickle, config=config,
                                 prediction_type=prediction_type)
    if vae is not None:
        parts.vae = load_vae(vae, like=parts.vae.config, dtype=dtype, device=device, allow_pickle=allow_pickle)
    return parts
