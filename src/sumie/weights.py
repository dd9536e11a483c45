"""Reading weights: safetensors files (memory-mapped), diffusers folders, strict loading into models.

Models are built on the meta device and their parameters are then *assigned* tensors that view the
memory-mapped file, so loading never holds two copies of the weights (gpt-fast's recipe). A tensor is
copied only when it must change dtype or device. Every key in the file must be used and every
parameter filled; anything else is one WeightsError that lists the offending keys.
"""

from __future__ import annotations

import dataclasses
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
    """First 10 hex digits of the SHA-256 of a single-file checkpoint, as AUTOMATIC1111's "Model hash";
    a diffusers folder has no single file, so for one we hash its UNet weights. Results are cached in
    $XDG_CACHE_HOME/sumie/hashes.json by (path, size, mtime), so a large file is read once."""
    import hashlib
    folder = Path(folder).resolve()
    files = [folder] if folder.is_file() else find_weight_files(folder / "unet", "diffusion_pytorch_model")
    key = "|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache_file = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "sumie" / "hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    cache[key] = digest.hexdigest()[:10]
    try:  # best effort: a read-only home only costs the next run a re-hash
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return cache[key]


# ---------------------------------------------------------------------------------------------------
# Original single-file checkpoints (CompVis / Stability layout, as A1111 and ComfyUI load them).
#
# The whole name conversion is this table: module pairs (diffusers prefix, original prefix) generated
# from the config, plus the leaf renames inside each module kind. Everything else has equal names.
# ---------------------------------------------------------------------------------------------------
SINGLE_FILE_PREFIX = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                      "text_encoder": "cond_stage_model.transformer.text_model.",
                      "open_clip": "cond_stage_model.model."}
LEAF_RENAMES = {
    "unet_resnet": {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"},
    "vae_resnet": {"conv_shortcut": "nin_shortcut"},
    "vae_attention": {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"},
    "same": {},
}
# OpenCLIP text tower (SD 2.x) -> transformers CLIP names; q/k/v are fused in `attn.in_proj_*`.
OPEN_CLIP_NAMES = {"token_embedding.weight": "embeddings.token_embedding.weight",
                   "positional_embedding": "embeddings.position_embedding.weight",
                   "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _unet_modules(cfg: UNetConfig) -> list[tuple[str, str, str]]:
    n, levels = cfg.layers_per_block, len(cfg.block_out_channels)
    pairs = [("time_embedding.linear_1", "time_embed.0", "same"), ("time_embedding.linear_2", "time_embed.2", "same"),
             ("conv_in", "input_blocks.0.0", "same"), ("conv_norm_out", "out.0", "same"), ("conv_out", "out.2", "same"),
             ("mid_block.resnets.0", "middle_block.0", "unet_resnet"), ("mid_block.attentions.0", "middle_block.1", "same"),
             ("mid_block.resnets.1", "middle_block.2", "unet_resnet")]
    for i in range(levels):
        for j in range(n):
            k = 1 + i * (n + 1) + j
            pairs += [(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0", "unet_resnet"),
                      (f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1", "same")]
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (n + 1)}.0.op", "same"))
        has_attention = cfg.up_block_types[i].startswith("CrossAttn")
        for j in range(n + 1):
            k = i * (n + 1) + j
            pairs += [(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0", "unet_resnet"),
                      (f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1", "same")]
        if i < levels - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.conv",
                          f"output_blocks.{i * (n + 1) + n}.{2 if has_attention else 1}.conv", "same"))
    return pairs


def _vae_modules(cfg: VAEConfig) -> list[tuple[str, str, str]]:
    n, levels = cfg.layers_per_block, len(cfg.block_out_channels)
    pairs = [("encoder.conv_norm_out", "encoder.norm_out", "same"), ("decoder.conv_norm_out", "decoder.norm_out", "same")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", "vae_resnet"),
                  (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", "vae_resnet"),
                  (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", "vae_attention")]
    for i in range(levels):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", "vae_resnet") for j in range(n)]
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", "same"))
        up = levels - 1 - i  # the original decoder numbers its levels from the lowest resolution's end
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{up}.block.{j}", "vae_resnet") for j in range(n + 1)]
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{up}.upsample.conv", "same"))
    return pairs


def original_names(kind: str, config, keys) -> dict[str, str]:
    """{diffusers key: original single-file key (without the component prefix)} for `keys` of a unet / vae."""
    modules = _unet_modules(config) if kind == "unet" else _vae_modules(config)
    modules.sort(key=lambda m: -len(m[0]))  # longest prefix first
    names = {}
    for key in keys:
        for ours, theirs, leaf in modules:
            if key.startswith(ours + "."):
                rest = key[len(ours) + 1:]
                for a, b in LEAF_RENAMES[leaf].items():
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        break
                names[key] = f"{theirs}.{rest}"
                break
        else:
            names[key] = key
    return names


def _is_vae_attention_1x1(key: str) -> bool:
    return ".mid.attn_1." in key and key.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out") and key.endswith("weight")


def from_original(kind: str, config, model_keys, original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-layout state dict (component prefix stripped) into our names; the VAE's
    attention 1x1 convs become linear weights. Keys that map to nothing keep their original names, so
    the strict loader reports them as unexpected."""
    names = original_names(kind, config, model_keys)
    state = {}
    for ours, theirs in names.items():
        if theirs in original:
            t = original[theirs]
            state[ours] = t.reshape(t.shape[:2]) if _is_vae_attention_1x1(theirs) and t.ndim == 4 else t
    used = set(names.values())
    state.update({k: v for k, v in original.items() if k not in used})
    return state


def to_original(kind: str, config, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = original_names(kind, config, state)
    return {names[k]: (v[:, :, None, None] if _is_vae_attention_1x1(names[k]) and v.ndim == 2 else v)
            for k, v in state.items()}


def open_clip_to_ours(original: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """SD 2's OpenCLIP text tower -> our CLIP names, keeping the first `layers` blocks (SD 2 uses the
    penultimate layer's output, so 23 of 24)."""
    state = {OPEN_CLIP_NAMES[k]: v for k, v in original.items() if k in OPEN_CLIP_NAMES}
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for a, b in OPEN_CLIP_LAYER.items():
            for leaf in ("weight", "bias"):
                if f"{src}{a}.{leaf}" in original:
                    state[f"{dst}{b}.{leaf}"] = original[f"{src}{a}.{leaf}"]
        for leaf in ("weight", "bias"):
            fused = original.get(f"{src}attn.in_proj_{leaf}")
            if fused is not None:
                for name, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0)):
                    state[f"{dst}self_attn.{name}.{leaf}"] = part
    return state


def ours_to_open_clip(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    inverse = {v: k for k, v in OPEN_CLIP_NAMES.items()}
    out = {inverse[k]: v for k, v in state.items() if k in inverse}
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in OPEN_CLIP_LAYER.items():
            for leaf in ("weight", "bias"):
                out[f"{dst}{a}.{leaf}"] = state[f"{src}{b}.{leaf}"]
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat([state[f"{src}self_attn.{p}.{leaf}"]
                                                         for p in ("q_proj", "k_proj", "v_proj")])
    return out


PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
# Original-checkpoint keys that hold no inference weights (training losses, buffers, projections we don't use).
IGNORED = {"vae": ("loss.",), "text_encoder": ("embeddings.position_ids",),
           "open_clip": ("text_projection", "logit_scale", "attn_mask")}  # and layers past the used ones


def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A single weights file -> {name: tensor}. safetensors are memory-mapped. Pickled files (.ckpt, .bin,
    .pt, .pth) are refused unless `allow_pickle`, and then read with torch.load(weights_only=True) only."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path} does not exist")
    if path.is_dir():
        raise WeightsError(f"{path} is a folder; expected a weights file (.safetensors)")
    with open(path, "rb") as f:
        if f.read(len(LFS_POINTER)) == LFS_POINTER:
            raise WeightsError(f"{path} is a git-lfs pointer, not the weights: the real file was never "
                               f"downloaded (run `git lfs pull` in its repository)")
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return read_safetensors(path)
    if not allow_pickle:
        raise WeightsError(f"{path} is a pickle, which can run arbitrary code when loaded; sumie does not open "
                           f"pickles by default. Convert it to .safetensors, or if you trust its source pass "
                           f"--allow-pickle (API: allow_pickle=True), which loads tensors only")
    import inspect
    import pickle
    if "weights_only" not in inspect.signature(torch.load).parameters:
        raise WeightsError(f"torch {torch.__version__} cannot load pickles safely (no weights_only); "
                           f"upgrade torch or convert {path.name} to .safetensors elsewhere")
    import re
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        found = re.search(r"Unsupported (?:global|operand)[^\n]*", str(e))
        reason = found.group(0) if found else (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise WeightsError(f"{path} was refused: it is not a plain tensor pickle ({reason}); nothing in it was run") \
            from None
    step = data.get("global_step") if isinstance(data, dict) else None
    data = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if isinstance(step, int):
        tensors["global_step"] = torch.tensor(step)  # tells SD 2 base (epsilon) from SD 2 768-v
    return tensors


def _with_ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Use the EMA UNet weights when the checkpoint has them (`model_ema.<key without dots>`)."""
    if sum(k.startswith("model_ema.") for k in state) <= 100:
        return state
    out = dict(state)
    for key in state:
        if key.startswith(SINGLE_FILE_PREFIX["unet"]):
            ema = "model_ema." + "".join(key.split(".")[1:])
            if ema in state:
                out[key] = state[ema]
    return out


def split_components(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{'unet' | 'vae' | 'text_encoder' | 'open_clip': {key without prefix: tensor}}, ignorable keys dropped."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("cond_stage_model.transformer."):  # SD 1.x, with or without `text_model.`
            kind, rest = "text_encoder", key[len("cond_stage_model.transformer."):].removeprefix("text_model.")
        else:
            hits = [(k, p) for k, p in SINGLE_FILE_PREFIX.items() if key.startswith(p) and k != "text_encoder"]
            if not hits:
                continue
            kind, rest = hits[0][0], key[len(hits[0][1]):]
        if not rest.startswith(IGNORED.get(kind, ())):
            parts.setdefault(kind, {})[rest] = value
    return parts


def _count(keys, pattern: str) -> int:
    import re
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def detect_unet(state: dict[str, torch.Tensor], *, v2: bool) -> UNetConfig:
    """A UNet config from the shapes of an original-layout UNet state dict (SD 1.x / 2.x families)."""
    keys = state.keys()
    levels = _count(keys, r"input_blocks\.(\d+)\.0\.op\.weight") + 1
    n = _count(keys, r"input_blocks\.(\d+)\.") // levels - 1
    chs = [state[f"input_blocks.{1 + i * (n + 1)}.0.out_layers.3.weight"].shape[0] for i in range(levels)]
    attention = [f"input_blocks.{1 + i * (n + 1)}.1.proj_in.weight" in state for i in range(levels)]
    proj = state[f"input_blocks.{1 + attention.index(True) * (n + 1)}.1.proj_in.weight"]
    context = state[f"input_blocks.{1 + attention.index(True) * (n + 1)}.1.transformer_blocks.0.attn2.to_k.weight"]
    return UNetConfig(
        in_channels=state["input_blocks.0.0.weight"].shape[1], out_channels=state["out.2.weight"].shape[0],
        block_out_channels=tuple(chs), layers_per_block=n, sample_size=96 if v2 else 64,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=tuple(c // 64 for c in chs) if v2 else 8, cross_attention_dim=context.shape[1],
        use_linear_projection=proj.ndim == 2, upcast_attention=v2)


def detect_vae(state: dict[str, torch.Tensor]) -> VAEConfig:
    keys = state.keys()
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    n = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    return VAEConfig(in_channels=state["encoder.conv_in.weight"].shape[1],
                     out_channels=state["decoder.conv_out.weight"].shape[0],
                     latent_channels=state["decoder.conv_in.weight"].shape[1], layers_per_block=n,
                     block_out_channels=tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]
                                              for i in range(levels)),
                     down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                     sample_size=512)


OPEN_CLIP_LAYERS_KEY = "sumie_layers_used"  # a scalar in files we write with only the layers SD 2 uses


def _open_clip_layers(s: dict[str, torch.Tensor]) -> int:
    """SD 2 uses the penultimate layer of OpenCLIP's text tower: all blocks but the last, unless the file
    says it already holds only the used ones (files written by `sumie convert`)."""
    if OPEN_CLIP_LAYERS_KEY in s:
        return int(s[OPEN_CLIP_LAYERS_KEY])
    return _count(s, r"transformer\.resblocks\.(\d+)\.") - 1


def detect_text_encoder(parts: dict[str, dict[str, torch.Tensor]]) -> TextEncoderConfig:
    if "open_clip" in parts:  # SD 2.x: OpenCLIP ViT-H/14 text tower, penultimate layer
        s = parts["open_clip"]
        width = s["token_embedding.weight"].shape[1]
        return TextEncoderConfig(vocab_size=s["token_embedding.weight"].shape[0], hidden_size=width,
                                 intermediate_size=s["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                                 num_hidden_layers=_open_clip_layers(s),
                                 num_attention_heads=width // 64, max_position_embeddings=s["positional_embedding"].shape[0],
                                 hidden_act="gelu")
    s = parts["text_encoder"]
    width = s["embeddings.token_embedding.weight"].shape[1]
    return TextEncoderConfig(vocab_size=s["embeddings.token_embedding.weight"].shape[0], hidden_size=width,
                             intermediate_size=s["encoder.layers.0.mlp.fc1.weight"].shape[0],
                             num_hidden_layers=_count(s, r"encoder\.layers\.(\d+)\."), num_attention_heads=width // 64,
                             max_position_embeddings=s["embeddings.position_embedding.weight"].shape[0])


# The scheduler configs of the published SD 1.5 and SD 2.1 folders, for single files (which carry none).
SD1_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
                 "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False}
SD2_SCHEDULER = {**SD1_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}


def _build_from_original(model_cls, kind, config, original, *, source, dtype, device):
    with torch.device("meta"):
        model = model_cls(config)
    state = from_original(kind, config, model.state_dict().keys(), original)
    return load_into(model, state, source=source, dtype=dtype, device=device)


def load_single_file(path: str | Path, *, dtype=None, device="cpu", allow_pickle: bool = False,
                     config: str | Path | None = None, prediction_type: str | None = None) -> Components:
    """An original single-file SD 1.x / 2.x checkpoint. Architecture is read from tensor shapes, or
    from the component configs of diffusers folder `config` (for non-standard variants)."""
    from .text_encoder import CLIPTextModel
    from .tokenizer import CLIPTokenizer
    from .unet import UNet2DConditionModel
    from .vae import AutoencoderKL

    path = Path(path)
    state = _with_ema(read_checkpoint(path, allow_pickle=allow_pickle))
    parts = split_components(state)
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
        try:
            ucfg, vcfg, tcfg = detect_unet(parts["unet"], v2=v2), detect_vae(parts["vae"]), detect_text_encoder(parts)
        except (KeyError, IndexError, ValueError, ZeroDivisionError):
            raise WeightsError(f"{path}: cannot read the architecture from the tensor shapes; pass --config with a "
                               f"diffusers folder whose configs match (API: config=)") from None
        tokenizer = CLIPTokenizer.standard(pad_token="!" if v2 else "<|endoftext|>")
        scheduler = dict(SD2_SCHEDULER if v2 else SD1_SCHEDULER)
    if prediction_type is not None:
        scheduler["prediction_type"] = prediction_type
        if config is None and v2 and prediction_type == "epsilon":  # SD 2 base: 512 px
            ucfg = dataclasses.replace(ucfg, sample_size=64)
    text = open_clip_to_ours(parts["open_clip"], tcfg.num_hidden_layers) if v2 else _strip_text_model(parts["text_encoder"])
    src = str(path)
    return Components(
        tokenizer=tokenizer, scheduler_config=scheduler, source=path,
        unet=_build_from_original(UNet2DConditionModel, "unet", ucfg, parts["unet"], source=src, dtype=dtype, device=device),
        vae=_build_from_original(AutoencoderKL, "vae", vcfg, parts["vae"], source=src, dtype=dtype, device=device),
        text_encoder=build(CLIPTextModel, tcfg, text, source=src, dtype=dtype, device=device))


def load_vae(path: str | Path, *, like: VAEConfig, dtype=None, device="cpu", allow_pickle: bool = False):
    """A separate VAE: a diffusers `vae` folder, or a single file in the original layout (with or without
    the `first_stage_model.` prefix) or in diffusers names. `like` is the model's own VAE config."""
    from .vae import AutoencoderKL
    path = Path(path)
    if path.is_dir():
        return load_component_dir(path, "vae", dtype=dtype, device=device)
    state = read_checkpoint(path, allow_pickle=allow_pickle)
    state = {k.removeprefix(SINGLE_FILE_PREFIX["vae"]): v for k, v in state.items()
             if not k.removeprefix(SINGLE_FILE_PREFIX["vae"]).startswith(IGNORED["vae"])}
    if any(k.startswith("encoder.down_blocks.") for k in state):
        return build(AutoencoderKL, like, state, source=str(path), dtype=dtype, device=device)
    return _build_from_original(AutoencoderKL, "vae", like, state, source=str(path), dtype=dtype, device=device)


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
    from . import tiny
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


# ---------------------------------------------------------------------------------------------------
# Writing: a single original-layout file, or a diffusers folder (`sumie convert`).
# ---------------------------------------------------------------------------------------------------
def to_single_file_state(parts: Components, dtype=None) -> dict[str, torch.Tensor]:
    """All weights under original single-file names (SD 2 text towers in OpenCLIP layout)."""
    cast = (lambda t: t.to(dtype) if dtype is not None and t.is_floating_point() else t)
    state = {}
    for kind, model in (("unet", parts.unet), ("vae", parts.vae)):
        state.update({SINGLE_FILE_PREFIX[kind] + k: v for k, v in to_original(kind, model.config, model.state_dict()).items()})
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
    """A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), with
    the text encoder under transformers 4.x names (`text_model.`), which every transformers reads."""
    from safetensors.torch import save_file

    from .tokenizer import write_vocab_files
    cast = (lambda t: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous())
    for name in ("unet", "vae", "text_encoder", "scheduler"):
        (out / name).mkdir(parents=True)
    save_file({k: cast(v) for k, v in parts.unet.state_dict().items()}, out / "unet" / "diffusion_pytorch_model.safetensors")
    save_file({k: cast(v) for k, v in parts.vae.state_dict().items()}, out / "vae" / "diffusion_pytorch_model.safetensors")
    save_file({"text_model." + k: cast(v) for k, v in parts.text_encoder.state_dict().items()},
              out / "text_encoder" / "model.safetensors")
    (out / "unet" / "config.json").write_text(_config_json(parts.unet.config, _class_name="UNet2DConditionModel"))
    (out / "vae" / "config.json").write_text(_config_json(parts.vae.config, _class_name="AutoencoderKL"))
    (out / "text_encoder" / "config.json").write_text(_config_json(
        parts.text_encoder.config, architectures=["CLIPTextModel"], model_type="clip_text_model"))
    write_vocab_files(out / "tokenizer", pad_token=parts.tokenizer.pad_token)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(parts.scheduler_config, indent=2))
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False, "scheduler": ["diffusers", parts.scheduler_config.get("_class_name", "PNDMScheduler")],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))


def convert(src: str | Path, dst: str | Path, *, dtype=None, allow_pickle: bool = False, config=None,
            prediction_type: str | None = None) -> Path:
    """Between a diffusers folder and a single .safetensors file, whichever way `dst` names. Never overwrites;
    the result appears whole or not at all (written beside `dst`, then renamed)."""
    import shutil
    import tempfile

    from safetensors.torch import save_file
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
