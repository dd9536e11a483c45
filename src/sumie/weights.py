"""Reading weights: safetensors files (memory-mapped), diffusers folders, strict loading into models.

Models are built on the meta device and their parameters are then *assigned* tensors that view the
memory-mapped file, so loading never holds two copies of the weights (gpt-fast's recipe). A tensor is
copied only when it must change dtype or device. Every key in the file must be used and every
parameter filled; anything else is one WeightsError that lists the offending keys.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import TextEncoderConfig, UNetConfig, VAEConfig, read_json
from .errors import WeightsError

# safetensors dtype names (https://github.com/huggingface/safetensors, "Format") -> torch
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024
LFS_POINTER = b"version https://git-lfs"


def _read_header(path: Path) -> tuple[dict, int]:
    """-> (header dict, byte offset of the data section). Raises WeightsError on anything malformed."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(LFS_POINTER[:8]) and f.read(len(LFS_POINTER) - 8) == LFS_POINTER[8:]:
            raise WeightsError(f"{path} is a git-lfs pointer, not the weights: the real file was never "
                               f"downloaded (run `git lfs pull` in its repository)")
        if len(head) < 8:
            raise WeightsError(f"{path} is not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise WeightsError(f"{path} is not a valid safetensors file: its header claims {n} bytes but the "
                               f"file has {size}; it may be truncated or not a safetensors file at all")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightsError(f"{path} is not a valid safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a valid safetensors file (its header is not a JSON object)")
    data_start, data_len = 8 + n, size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype, shape = _DTYPES[info["dtype"]], info["shape"]
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: tensor {name!r} has a malformed or unsupported entry: {info!r}") from None
        expected = dtype.itemsize * _numel(shape)
        if not 0 <= begin <= end <= data_len or end - begin != expected:
            raise WeightsError(f"{path} is truncated or corrupt: tensor {name!r} lies at bytes {begin}..{end} "
                               f"of a {data_len}-byte data section (needs {expected} bytes)")
    return header, data_start


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Memory-map a .safetensors file -> {name: CPU tensor viewing the file}. Nothing is read until used."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist or is not a file")
    header, start = _read_header(path)
    size = path.stat().st_size
    storage = torch.UntypedStorage.from_file(os.fspath(path), shared=False, nbytes=size) if size else None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, (begin, end) = _DTYPES[info["dtype"]], info["data_offsets"]
        raw = torch.empty(0, dtype=torch.uint8)
        raw.set_(storage, start + begin, (end - begin,))
        if (start + begin) % dtype.itemsize:  # unaligned for this dtype: copy once
            raw = raw.clone()
        out[name] = raw.view(dtype).reshape(info["shape"])
    return out


def find_weight_files(folder: Path, stem: str, variant: str | None = None) -> list[Path]:
    """The safetensors file(s) of one component: `{stem}[.{variant}].safetensors`, or the shards named in
    `{stem}[.{variant}].safetensors.index.json`."""
    suffix = f".{variant}" if variant else ""
    single = folder / f"{stem}{suffix}.safetensors"
    index = folder / f"{stem}{suffix}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise WeightsError(f"{index} has no weight_map")
        return [folder / f for f in dict.fromkeys(weight_map.values())]
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.ckpt"))
    hint = (f"; it has only pickled weights ({', '.join(pickles)}), which sumie does not load because "
            f"unpickling can run code: convert them to safetensors" if pickles else "")
    want = f"{single.name} or {index.name}"
    if variant:
        want += f" (variant {variant!r}; leave variant unset to load the default weights)"
    raise WeightsError(f"no weights in {folder}: expected {want}{hint}")


def read_weight_files(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_safetensors(f))
    return state


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


def build(model_cls, config, state: dict[str, torch.Tensor], *, source: str, dtype=None, device="cpu"):
    """Construct `model_cls(config)` on the meta device and fill it from `state`."""
    with torch.device("meta"):
        model = model_cls(config)
    return load_into(model, state, source=source, dtype=dtype, device=device)


# Component subfolders of a diffusers model folder: config class, weight file stem, key rename.
def _strip_text_model(state):
    """transformers < 5.6 saved CLIPTextModel keys under `text_model.`; newer versions drop it."""
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def _identity(state):
    return state


COMPONENTS = {
    "text_encoder": (TextEncoderConfig, "model", _strip_text_model),
    "unet": (UNetConfig, "diffusion_pytorch_model", _identity),
    "vae": (VAEConfig, "diffusion_pytorch_model", _identity),
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
    """Load one component folder (config.json + weights) of `kind` text_encoder / unet / vae."""
    from .text_encoder import CLIPTextModel
    from .unet import UNet2DConditionModel
    from .vae import AutoencoderKL

    model_cls = model_cls or {"text_encoder": CLIPTextModel, "unet": UNet2DConditionModel, "vae": AutoencoderKL}[kind]
    config_cls, stem, rename = COMPONENTS[kind]
    if not sub.is_dir():
        raise WeightsError(f"{sub} is not a folder; expected a {kind} folder with config.json and weights")
    config = config_cls.from_dict(read_json(sub / "config.json"), source=str(sub / "config.json"))
    state = rename(read_weight_files(find_weight_files(sub, stem, variant)))
    return build(model_cls, config, state, source=str(sub), dtype=dtype, device=device)


@dataclass
class Components:
    """The parts of a Stable Diffusion model, as loaded from one diffusers folder."""

    tokenizer: "CLIPTokenizer"
    text_encoder: nn.Module
    unet: nn.Module
    vae: nn.Module
    scheduler_config: dict
    source: Path


def load_folder(folder: str | Path, *, dtype=None, device="cpu", variant: str | None = None) -> Components:
    """Load every component of a diffusers Stable Diffusion folder (the layout `save_pretrained` writes)."""
    from .tokenizer import CLIPTokenizer

    folder = Path(folder)
    if not folder.exists():
        raise WeightsError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise WeightsError(f"{folder} is a file; expected a diffusers model folder (with model_index.json)")
    if not (folder / "model_index.json").is_file():
        raise WeightsError(f"{folder} is not a diffusers model folder: it has no model_index.json")
    read_json(folder / "model_index.json")
    if not (folder / "scheduler").is_dir():
        raise WeightsError(f"{folder} has no scheduler/ subfolder")
    models = {name: load_component(folder, name, dtype=dtype, device=device, variant=variant)
              for name in ("text_encoder", "unet", "vae")}
    return Components(tokenizer=CLIPTokenizer.from_folder(folder / "tokenizer"),
                      scheduler_config=read_json(folder / "scheduler" / "scheduler_config.json"),
                      source=folder, **models)


def model_hash(folder: str | Path) -> str:
    """First 10 hex digits of the SHA-256 of the UNet weights, as AUTOMATIC1111's "Model hash" (its
    checkpoint hash covers the whole file; a diffusers folder has no single file, so we hash the UNet's)."""
    import hashlib
    digest = hashlib.sha256()
    for path in find_weight_files(Path(folder) / "unet", "diffusion_pytorch_model"):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:10]
