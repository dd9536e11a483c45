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
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .weights.files import is_pickle, read_pickle, read_safetensors

SUFFIXES = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight", "alpha",
            "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a",
            "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "dora_scale")
_OLD_DIFFUSERS = [  # older diffusers names -> the names above
    (re.compile(r"\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$"),
     lambda m: f".{m.group(1)}{'.0' if m.group(1) == 'to_out' else ''}.lora_{m.group(2)}.weight"),
    (re.compile(r"\.lora_linear_layer\.(down|up)\.weight$"), lambda m: f".lora_{m.group(1)}.weight"),
]
COMPONENTS = {"unet": ("lora_unet_", "unet.", ""), "text_encoder": ("lora_te_", "text_encoder.", "text_model.")}


@dataclass
class Update:
    """One layer's update: its factors, by key suffix."""

    component: str  # unet | text_encoder
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
                names[kohya + (inner + name).replace(".", "_")] = (component, name)
                names[diffusers + inner + name] = (component, name)
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
    for (component, module), update in updates.items():
        update.delta(models[component].get_submodule(module).weight.shape)  # shape check now, before any change
    return updates


class LoRAs:
    """A pipeline's LoRAs: named adapters, which are active at which weight, and the original weights."""

    def __init__(self, models: dict[str, nn.Module]):
        self.models = models
        self.adapters: dict[str, dict[tuple[str, str], Update]] = {}
        self.active: dict[str, float] = {}
        self.originals: dict[tuple[str, str], torch.Tensor] = {}
        self.scale = 1.0  # the applied extra multiplier (fuse_lora's lora_scale, or one call's scale)

    def load(self, path: str | Path, name: str | None = None, *, allow_pickle: bool = False) -> str:
        path = Path(path)
        name = name or path.stem
        if name in self.adapters:
            raise InputError(f"a LoRA named {name!r} is already loaded; give another adapter_name or unload it")
        self.adapters[name] = parse(read_lora(path, allow_pickle=allow_pickle), self.models, str(path))
        self.active[name] = 1.0
        self.apply()
        return name

    def set_active(self, weights: dict[str, float]) -> None:
        missing = [n for n in weights if n not in self.adapters]
        if missing:
            raise InputError(f"no LoRA named {missing[0]!r} is loaded (loaded: {', '.join(self.adapters) or 'none'})")
        self.active = dict(weights)
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
        for name, weight in self.active.items():
            for target, update in self.adapters[name].items():
                layers.setdefault(target, []).append((weight * self.scale, update))
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

    def unload(self) -> None:
        self.restore()
        self.adapters.clear()
        self.active.clear()
        self.scale = 1.0
