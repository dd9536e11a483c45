"""LoRA and LyCORIS: low-rank updates to a model's linear and convolution weights, loaded as people share them.

A layer's weight W becomes W + m * s * dW (Hu et al. 2021, eq. 3), with m the user's multiplier and s the
file's alpha / rank. dW, by the keys a layer has (A1111's extensions-builtin/Lora network_lora.py,
network_hada.py and network_lokr.py, and LyCORIS, give the same rules):

- LoRA (`lora_down`, `lora_up`; diffusers/PEFT `lora_A`, `lora_B`): dW = up @ down, rank = down's rows; for a
  convolution, down is (r, C, k, k) and up (O, r, 1, 1); with LoCon's `lora_mid` (r, r, k, k) between them
  (a Tucker core), dW[o, c] = sum_ij up[o, i] mid[i, j] down[j, c];
- LoHa (`hada_w1_a/b`, `hada_w2_a/b`; Hyeon-Woo et al. 2022): dW = (w1_a @ w1_b) * (w2_a @ w2_b), rank = w1_b's rows;
- LoKr (`lokr_w1` or `lokr_w1_a/b`, `lokr_w2` or `lokr_w2_a/b`; Yeh et al. 2024): dW = w1 (x) w2, a Kronecker
  product; alpha / rank applies only where a factor is itself low-rank, else s = 1.

Without `alpha`, s = 1 (alpha = rank). Keys name layers by Kohya's `lora_unet_` / `lora_te_` + the module path with
"_" for ".", or by diffusers' `unet.` / `text_encoder.` + the path (older files: `.processor.to_q_lora.down`).
Every key must name a layer of the loaded model; anything else is an error and nothing is applied.

The originals are never changed: applying writes each targeted weight as a new tensor and keeps the original
(a view of the memory-mapped file, for a model loaded from disk), so removing a LoRA puts back the very tensor
that was there, bit for bit, and no second copy of the model is held.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .weights.files import PICKLE_SUFFIXES, is_pickle, read_pickle, read_safetensors
from .weights.original import original_names

SUFFIXES = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight", "alpha",
            "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a",
            "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "dora_scale")
_OLD_DIFFUSERS = [  # older diffusers names -> the names above
    (re.compile(r"\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$"),
     lambda m: f".{m.group(1)}{'.0' if m.group(1) == 'to_out' else ''}.lora_{m.group(2)}.weight"),
    (re.compile(r"\.lora_linear_layer\.(down|up)\.weight$"), lambda m: f".lora_{m.group(1)}.weight"),
]
# component -> (Kohya's prefixes, diffusers' prefix, the inner prefix of transformers' names). SDXL's Kohya files
# name its first text encoder lora_te1_ and its second (bigG) lora_te2_.
COMPONENTS = {"unet": (("lora_unet_",), "unet.", ""),
              "text_encoder": (("lora_te_", "lora_te1_"), "text_encoder.", "text_model."),
              "text_encoder_2": (("lora_te2_",), "text_encoder_2.", "text_model.")}


@dataclass
class Update:
    """One layer's update: its factors, by key suffix."""

    component: str  # unet | text_encoder | text_encoder_2
    module: str  # our module path in that component
    tensors: dict[str, torch.Tensor]

    def delta(self, shape: torch.Size) -> torch.Tensor:
        """s * dW, float32, in the shape of the layer's weight."""
        t = {k: v.float() for k, v in self.tensors.items()}
        alpha = float(t["alpha"]) if "alpha" in t else None
        if "hada_w1_a" in t:
            if "hada_t1" in t:
                raise InputError(f"LoHa layer {self.module}: Tucker-decomposed LoHa (hada_t1) is not supported")
            d = (t["hada_w1_a"] @ t["hada_w1_b"].flatten(1)) * (t["hada_w2_a"] @ t["hada_w2_b"].flatten(1))
            rank = t["hada_w1_b"].shape[0]
        elif any(k.startswith("lokr_") for k in t):
            if "lokr_t2" in t:
                raise InputError(f"LoKr layer {self.module}: Tucker-decomposed LoKr (lokr_t2) is not supported")
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]  # (a, b)
            w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1)  # (c, d[*k*k])
            if len(shape) == 4:  # a convolution: w2 is (c, d, k, k), and w1 scales each of its blocks
                w2 = w2.reshape(w2.shape[0], shape[1] // w1.shape[1], *shape[2:])
                d = torch.kron(w1[:, :, None, None], w2)
            else:
                d = torch.kron(w1, w2)
            low = [t[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in t]
            rank = low[0] if low else None
            alpha = alpha if rank else None
        else:
            down = t.get("lora_down.weight", t.get("lora_A.weight"))
            up = t.get("lora_up.weight", t.get("lora_B.weight"))
            if down is None or up is None:
                raise InputError(f"LoRA layer {self.module} has {sorted(t)} but needs both down and up weights")
            rank = down.shape[0]
            if "lora_mid.weight" in t:
                d = torch.einsum("oi,ijhw,jc->ochw", up.flatten(1), t["lora_mid.weight"], down.flatten(1))
            elif down.ndim == 4 and down.shape[-1] > 1:  # LoCon: a k x k down, a 1 x 1 up
                d = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
            else:
                d = up.flatten(1) @ down.flatten(1)
        scale = alpha / rank if alpha is not None and rank else 1.0
        if d.numel() != shape.numel():
            raise InputError(f"LoRA layer {self.component}.{self.module} has shape {tuple(d.shape)}, but the model's "
                             f"weight is {tuple(shape)}: the LoRA was made for another model")
        return (d * scale).reshape(shape)


def read_lora(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A LoRA file -> its tensors (safetensors; .pt / .ckpt / .bin only with allow_pickle, tensors only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"LoRA {path} does not exist or is not a file")
    data = read_pickle(path, allow_pickle=allow_pickle) if is_pickle(path) else read_safetensors(path)
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"LoRA {path} is not a dict of tensors")
    return data


def layer_names(models: dict[str, nn.Module]) -> dict[str, tuple[str, str]]:
    """Every name a LoRA file may give a layer -> (component, our module path)."""
    names = {}
    for component, model in models.items():
        kohya, diffusers, inner = COMPONENTS[component]
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                inside = "" if name == "text_projection" else inner  # bigG's projection sits beside text_model.
                for prefix in kohya:
                    names[prefix + (inside + name).replace(".", "_")] = (component, name)
                names[diffusers + inside + name] = (component, name)
    if "unet" in models:  # Kohya's names in the original layout (lora_unet_input_blocks_1_1_proj_in), as A1111 reads
        unet = models["unet"]
        keys = [n + ".weight" for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        for ours, theirs in original_names("unet", unet.config, keys).items():
            names.setdefault("lora_unet_" + theirs.removesuffix(".weight").replace(".", "_"),
                             ("unet", ours.removesuffix(".weight")))
    return names


def _made_for(state: dict[str, torch.Tensor]) -> str:
    """A guess at the model a LoRA was made for, from its cross-attention key width (768: SD 1.x, 1024: SD 2.x,
    2048: SDXL)."""
    for key, t in state.items():
        if re.search(r"attn2[._]to_k", key) and key.endswith(("lora_down.weight", "lora_A.weight")):
            return {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}.get(t.shape[-1], f"a {t.shape[-1]}-wide text encoder")
    return "another model"


def parse(state: dict[str, torch.Tensor], models: dict[str, nn.Module], source: str) -> dict[tuple[str, str], Update]:
    """A LoRA's tensors -> {(component, module): Update}, strictly: every key names a layer of `models`."""
    names = layer_names(models)
    updates: dict[tuple[str, str], Update] = {}
    unknown = []
    for key, tensor in state.items():
        for pattern, repl in _OLD_DIFFUSERS:
            key = pattern.sub(repl, key)
        base, suffix = next(((key[:-len(s) - 1], s) for s in SUFFIXES if key.endswith("." + s)), (key, None))
        if suffix is None or base not in names:
            unknown.append(key)
            continue
        if suffix == "dora_scale":
            raise InputError(f"{source}: DoRA (dora_scale) is not supported")
        component, module = names[base]
        updates.setdefault((component, module), Update(component, module, {})).tensors[suffix] = tensor
    if unknown:
        raise InputError(f"{source} has {len(unknown)} keys that name no layer of this model ({', '.join(unknown[:4])}"
                         f"{', ...' if len(unknown) > 4 else ''}); it seems made for {_made_for(state)}")
    if not updates:
        raise InputError(f"{source} holds no LoRA weights")
    broken = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        raise InputError(f"{source} has NaN or infinite values in {len(broken)} tensors ({', '.join(broken[:3])}); "
                         f"the file is damaged")
    for (component, module), update in updates.items():  # each shape checked now, before any change, on meta tensors
        shapes_only = {k: v if v.ndim == 0 else v.to("meta") for k, v in update.tensors.items()}
        Update(component, module, shapes_only).delta(models[component].get_submodule(module).weight.shape)
    return updates


class LoRAs:
    """A pipeline's LoRAs: named adapters, which are active at which weight, and the original weights."""

    def __init__(self, models: dict[str, nn.Module]):
        self.models = models
        self.adapters: dict[str, dict[tuple[str, str], Update]] = {}
        self.active: dict[str, tuple[float, float]] = {}  # name -> (text encoder, UNet) multipliers
        self.originals: dict[tuple[str, str], torch.Tensor] = {}
        self.scale = 1.0  # the applied extra multiplier (fuse_lora's lora_scale, or one call's scale)

    def load(self, path: str | Path, name: str | None = None, *, allow_pickle: bool = False) -> str:
        path = Path(path)
        name = name or path.stem
        if name in self.adapters:
            raise InputError(f"a LoRA named {name!r} is already loaded; give another adapter_name or unload it")
        self.adapters[name] = parse(read_lora(path, allow_pickle=allow_pickle), self.models, str(path))
        self.active[name] = (1.0, 1.0)
        self.apply()
        return name

    def set_active(self, weights: dict[str, float | tuple[float, float]]) -> None:
        """Exactly these adapters, each at a multiplier, or at (text encoder, UNet) multipliers."""
        missing = [n for n in weights if n not in self.adapters]
        if missing:
            raise InputError(f"no LoRA named {missing[0]!r} is loaded (loaded: {', '.join(self.adapters) or 'none'})")
        self.active = {n: w if isinstance(w, tuple) else (w, w) for n, w in weights.items()}
        self.apply()

    def restore(self) -> None:
        """Every changed weight back to its original tensor, bit for bit."""
        for (component, module), original in self.originals.items():
            self.models[component].get_submodule(module).weight.data = original
        self.originals.clear()

    def apply(self, scale: float | None = None) -> None:
        """W = original + scale * sum of the active adapters' multiplier * s * dW, for each layer they change."""
        self.scale = self.scale if scale is None else scale
        self.restore()
        layers: dict[tuple[str, str], list[tuple[float, Update]]] = {}
        for name, (te, unet) in self.active.items():
            for target, update in self.adapters[name].items():
                layers.setdefault(target, []).append(((unet if target[0] == "unet" else te) * self.scale, update))
        with torch.no_grad():
            for (component, module), parts in layers.items():
                param = self.models[component].get_submodule(module).weight
                original = param.data
                delta = sum(w * u.delta(original.shape) for w, u in parts)
                param.data = (original.float() + delta.to(original.device)).to(original.dtype)
                self.originals[(component, module)] = original

    @contextlib.contextmanager
    def scaled(self, scale: float | None):
        """The active adapters at `scale` for the duration of the block (a call's cross_attention_kwargs)."""
        if scale is None or not self.active or scale == self.scale:
            yield
            return
        before = self.scale
        self.apply(scale)
        try:
            yield
        finally:
            self.apply(before)

    @contextlib.contextmanager
    def added(self, paths: list[tuple[str, Path, float, float]], *, allow_pickle: bool = False):
        """These (name, file, text encoder multiplier, UNet multiplier) beside the active adapters, for the block
        only (a prompt's <lora:...> tags): afterwards the adapters and weights are as they were."""
        if not paths:
            yield
            return
        before = (dict(self.adapters), dict(self.active))
        try:
            for name, path, te, unet in paths:
                key = f"<lora:{name}>"
                self.adapters[key] = parse(read_lora(path, allow_pickle=allow_pickle), self.models, str(path))
                self.active[key] = (te, unet)
            self.apply()
            yield
        finally:
            self.adapters, self.active = before
            self.apply()

    def unload(self) -> None:
        self.restore()
        self.adapters.clear()
        self.active.clear()
        self.scale = 1.0


# ---------------------------------------------------------------------------------------------------
# LoRAs in prompts, A1111's way: <lora:NAME:WEIGHT> or <lora:NAME:TE_WEIGHT:UNET_WEIGHT> (also te=, unet=),
# NAME a file stem in the LoRA folder. A1111 applies the tags of a batch's first prompt to the whole batch.
# ---------------------------------------------------------------------------------------------------
TAG = re.compile(r"<(?:lora|lyco):([^>]+)>")
SUFFIXES_ON_DISK = (".safetensors",) + PICKLE_SUFFIXES


def prompt_tags(prompt: str) -> tuple[str, list[tuple[str, float, float]]]:
    """-> (the prompt without its tags, [(name, text encoder multiplier, UNet multiplier)])."""
    tags = []
    for body in TAG.findall(prompt):
        positional, named = [], {}
        for part in body.split(":"):
            key, eq, value = part.partition("=")
            if eq:
                named[key.strip()] = value
            else:
                positional.append(part)
        name, *numbers = positional
        try:
            te = float(named.get("te", numbers[0] if numbers else 1.0))
            unet = float(named.get("unet", numbers[1] if len(numbers) > 1 else te))
        except ValueError:
            raise InputError(f"<lora:{body}>: the weights must be numbers, as in <lora:{name}:0.8> or "
                             f"<lora:{name}:1:0.6>") from None
        tags.append((name.strip(), te, unet))
    return TAG.sub("", prompt), tags


def short_hash(path: Path) -> str:
    """A1111's LoRA hash: the first 12 hex digits of the SHA-256 of a safetensors file's data (its header left
    out, Kohya's "addnet" hash), or of the whole file for other formats."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            (n,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + n)
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def metadata(path: Path) -> dict:
    """A safetensors file's `__metadata__` (Kohya's ss_* training fields), or {}."""
    if path.suffix != ".safetensors":
        return {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        try:
            return json.loads(f.read(n)).get("__metadata__", {}) or {}
        except (ValueError, AttributeError):
            return {}


class Library:
    """The LoRA files of a folder (subfolders too), by file stem."""

    def __init__(self, folder: str | Path, *, allow_pickle: bool = False):
        self.folder, self.allow_pickle = Path(folder), allow_pickle
        if not self.folder.is_dir():
            raise InputError(f"--lora-dir {self.folder} is not a folder")
        self.refresh()

    def refresh(self) -> None:
        self.files = {p.stem: p for p in sorted(self.folder.rglob("*"))
                      if p.suffix.lower() in SUFFIXES_ON_DISK and p.is_file()}
        self._hashes: dict[str, str] = {}

    def path(self, name: str) -> Path:
        if name not in self.files:
            close = difflib.get_close_matches(name, self.files, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (it has {len(self.files)} LoRA files)"
            raise InputError(f"no LoRA named {name!r} in {self.folder}{hint}")
        return self.files[name]

    def hash(self, name: str) -> str:
        if name not in self._hashes:
            self._hashes[name] = short_hash(self.path(name))
        return self._hashes[name]

    def hashes_text(self, prompt: str) -> str | None:
        """The infotext's `Lora hashes` value for a prompt's tags, as A1111 writes it, or None."""
        names = list(dict.fromkeys(name for name, _, _ in prompt_tags(prompt)[1]))
        return ", ".join(f"{n}: {self.hash(n)}" for n in names) or None
