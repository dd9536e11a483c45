"""The original single-file layout (CompVis / Stability checkpoints, as A1111 and ComfyUI load them).

Every name conversion between that layout and ours (diffusers' names) is here, as stable-diffusion.cpp keeps
all of its in one module: module pairs (our prefix, original prefix) generated from the config, plus the leaf
renames inside each module kind; everything else has equal names. The architecture of a single file is read
from its tensor shapes (`detect_*`), starting from the named presets in `sumie.config`.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from ..config import Preset, TextEncoderConfig, UNetConfig, VAEConfig

SINGLE_FILE_PREFIX = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                      "text_encoder": "cond_stage_model.transformer.text_model.",
                      "open_clip": "cond_stage_model.model."}
# SDXL's text encoders: `conditioner.embedders.N.` then `transformer.text_model.` (CLIP ViT-L, transformers' names)
# or `model.` (OpenCLIP bigG, with its projection). The base has ViT-L at 0 and bigG at 1; the refiner bigG at 0.
XL_EMBEDDERS = "conditioner.embedders."
XL_PREFIX = {"clip_l": "conditioner.embedders.0.transformer.text_model.", "big_g": "conditioner.embedders.1.model.",
             "refiner_big_g": "conditioner.embedders.0.model."}
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
             ("add_embedding.linear_1", "label_emb.0.0", "same"), ("add_embedding.linear_2", "label_emb.0.2", "same"),
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


def big_g_to_ours(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL's OpenCLIP bigG, every layer (the pooled output needs the last) and its projection, applied in OpenCLIP
    as `x @ text_projection`: our Linear's weight is its transpose."""
    state = open_clip_to_ours(original, _count(original, r"transformer\.resblocks\.(\d+)\."))
    if "text_projection" in original:
        state["text_projection.weight"] = original["text_projection"].T
    return state


def ours_to_big_g(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    return {**ours_to_open_clip(state, layers), "text_projection": state["text_projection.weight"].T.contiguous()}


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


# Original-checkpoint keys that hold no inference weights (training losses, buffers, projections we don't use).
IGNORED = {"vae": ("loss.",), "text_encoder": ("embeddings.position_ids",), "clip_l": ("embeddings.position_ids",),
           "open_clip": ("text_projection", "logit_scale", "attn_mask"),  # and layers past the used ones
           "big_g": ("logit_scale", "attn_mask")}


def with_ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
    """{'unet' | 'vae' | 'text_encoder' | 'open_clip' | SDXL's 'clip_l' | 'big_g': {key without prefix: tensor}},
    ignorable keys dropped."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("cond_stage_model.transformer."):  # SD 1.x, with or without `text_model.`
            kind, rest = "text_encoder", key[len("cond_stage_model.transformer."):].removeprefix("text_model.")
        elif key.startswith(XL_EMBEDDERS):  # SDXL: N.transformer.[text_model.]... or N.model....
            rest = key[len(XL_EMBEDDERS):].split(".", 1)[1]
            kind = "clip_l" if rest.startswith("transformer.") else "big_g"
            rest = rest.removeprefix("transformer.").removeprefix("text_model.").removeprefix("model.")
        else:
            hits = [(k, p) for k, p in SINGLE_FILE_PREFIX.items() if key.startswith(p) and k != "text_encoder"]
            if not hits:
                continue
            kind, rest = hits[0][0], key[len(hits[0][1]):]
        if not rest.startswith(IGNORED.get(kind, ())):
            parts.setdefault(kind, {})[rest] = value
    return parts


def _count(keys, pattern: str) -> int:
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})


def detect_unet(state: dict[str, torch.Tensor], preset: Preset) -> UNetConfig:
    """A UNet config from the shapes of an original-layout UNet state dict: `preset`'s, with every field the
    shapes determine read from them (heads per level: SD 2.x's are 64 channels wide, SD 1.x has 8)."""
    keys = state.keys()
    levels = _count(keys, r"input_blocks\.(\d+)\.0\.op\.weight") + 1
    n = _count(keys, r"input_blocks\.(\d+)\.") // levels - 1
    chs = [state[f"input_blocks.{1 + i * (n + 1)}.0.out_layers.3.weight"].shape[0] for i in range(levels)]
    attention = [f"input_blocks.{1 + i * (n + 1)}.1.proj_in.weight" in state for i in range(levels)]
    proj = state[f"input_blocks.{1 + attention.index(True) * (n + 1)}.1.proj_in.weight"]
    context = state[f"input_blocks.{1 + attention.index(True) * (n + 1)}.1.transformer_blocks.0.attn2.to_k.weight"]
    per_level = isinstance(preset.unet.attention_head_dim, tuple)  # SD 2.x and SDXL: heads of 64 channels
    # transformer blocks per level (SDXL: 1 / 2 / 10; its refiner 4): one number when every attention has as many
    # as the mid block's, else one per level (1 where a level has no attention)
    depths = [_count(keys, rf"input_blocks\.{1 + i * (n + 1)}\.1\.transformer_blocks\.(\d+)\.") for i in range(levels)]
    mid = _count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    depth = mid if {d for d in depths if d} == {mid} else tuple(d or 1 for d in depths)
    added = state.get("label_emb.0.0.weight")  # SDXL: pooled text and size numbers
    return dataclasses.replace(
        preset.unet, in_channels=state["input_blocks.0.0.weight"].shape[1], out_channels=state["out.2.weight"].shape[0],
        block_out_channels=tuple(chs), layers_per_block=n,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=tuple(c // 64 for c in chs) if per_level else preset.unet.attention_head_dim,
        cross_attention_dim=context.shape[1], use_linear_projection=proj.ndim == 2,
        transformer_layers_per_block=depth,
        projection_class_embeddings_input_dim=None if added is None else added.shape[1])


def detect_vae(state: dict[str, torch.Tensor], preset: Preset) -> VAEConfig:
    """A VAE config from the shapes of an original-layout VAE state dict: `preset`'s, with the shapes' fields."""
    keys = state.keys()
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    return dataclasses.replace(
        preset.vae, in_channels=state["encoder.conv_in.weight"].shape[1],
        out_channels=state["decoder.conv_out.weight"].shape[0], latent_channels=state["decoder.conv_in.weight"].shape[1],
        layers_per_block=_count(keys, r"encoder\.down\.0\.block\.(\d+)\."),
        block_out_channels=tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)),
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels)


OPEN_CLIP_LAYERS_KEY = "sumie_layers_used"  # a scalar in files we write with only the layers SD 2 uses


def _open_clip_layers(s: dict[str, torch.Tensor]) -> int:
    """SD 2 uses the penultimate layer of OpenCLIP's text tower: all blocks but the last, unless the file
    says it already holds only the used ones (files written by `sumie convert`)."""
    if OPEN_CLIP_LAYERS_KEY in s:
        return int(s[OPEN_CLIP_LAYERS_KEY])
    return _count(s, r"transformer\.resblocks\.(\d+)\.") - 1


def detect_big_g(s: dict[str, torch.Tensor], preset: Preset) -> TextEncoderConfig:
    """SDXL's bigG config from its shapes (every layer kept)."""
    width = s["token_embedding.weight"].shape[1]
    return dataclasses.replace(
        preset.text_encoder_2, vocab_size=s["token_embedding.weight"].shape[0], hidden_size=width,
        intermediate_size=s["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count(s, r"transformer\.resblocks\.(\d+)\."), num_attention_heads=width // 64,
        max_position_embeddings=s["positional_embedding"].shape[0], projection_dim=s["text_projection"].shape[1])


def detect_text_encoder(parts: dict[str, dict[str, torch.Tensor]], preset: Preset) -> TextEncoderConfig:
    """The text encoder's config from its shapes (SD 1.x's CLIP ViT-L, or SD 2.x's OpenCLIP tower, `open_clip`):
    `preset`'s, with the shapes' fields."""
    if "open_clip" in parts:  # SD 2.x: OpenCLIP ViT-H/14 text tower, penultimate layer
        s = parts["open_clip"]
        width = s["token_embedding.weight"].shape[1]
        return dataclasses.replace(
            preset.text_encoder, vocab_size=s["token_embedding.weight"].shape[0], hidden_size=width,
            intermediate_size=s["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_open_clip_layers(s), num_attention_heads=width // 64,
            max_position_embeddings=s["positional_embedding"].shape[0])
    s = parts["text_encoder"] if "text_encoder" in parts else parts["clip_l"]  # SD 1.x, or SDXL's ViT-L
    width = s["embeddings.token_embedding.weight"].shape[1]
    return dataclasses.replace(
        preset.text_encoder, vocab_size=s["embeddings.token_embedding.weight"].shape[0], hidden_size=width,
        intermediate_size=s["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(s, r"encoder\.layers\.(\d+)\."), num_attention_heads=width // 64,
        max_position_embeddings=s["embeddings.position_embedding.weight"].shape[0])
