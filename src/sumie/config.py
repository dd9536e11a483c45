"""Frozen configs for the three networks, read from each component's `config.json`, and named presets.

Field names and defaults are those of the diffusers / transformers config files, so a published
folder is read as it is. Fields missing from older files take the reference's default
(e.g. the SD 1.4 VAE has no `scaling_factor`: it is 0.18215). A field whose value sumie does not
implement fails with a ConfigError naming it; unknown fields that do not change the maths
(`_diffusers_version`, `architectures`, ...) are ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from `path`, turning every failure into one clear ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing config file {path}; a diffusers model folder has one per component")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; expected a JSON config") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _parse(cls, raw: dict[str, Any], source: str, fixed: dict[str, tuple]):
    """Build dataclass `cls` from `raw`: take its fields, check `fixed` fields hold a supported value."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key in names:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        elif key in fixed and value not in fixed[key]:
            allowed = " or ".join(repr(v) for v in fixed[key])
            raise ConfigError(f"{source}: {key}={value!r} is not supported by sumie (supported: {allowed})")
    try:
        config = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        expected = f.metadata.get("type")
        if expected and not isinstance(value, expected):
            raise ConfigError(f"{source}: {f.name} has the wrong type ({value!r})")
    config.validate(source)
    return config


def _int(default):
    return field(default=default, metadata={"type": int})


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """CLIP text transformer (transformers' `CLIPTextConfig`)."""

    vocab_size: int = _int(49408)
    hidden_size: int = _int(512)
    intermediate_size: int = _int(2048)
    num_hidden_layers: int = _int(12)
    num_attention_heads: int = _int(8)
    max_position_embeddings: int = _int(77)
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407  # 2 in configs older than transformers 4.31: pool at argmax(ids) then
    bos_token_id: int = 49406
    pad_token_id: int = 1
    projection_dim: int = _int(512)  # CLIPTextModelWithProjection's text_projection (SDXL's OpenCLIP bigG: 1280)

    def validate(self, source):
        if self.hidden_act not in ("quick_gelu", "gelu"):
            raise ConfigError(f"{source}: hidden_act={self.hidden_act!r} is not supported (quick_gelu or gelu)")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"{source}: hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")

    @classmethod
    def from_dict(cls, raw, source="text_encoder/config.json"):
        return _parse(cls, raw, source, {})


_UNET_FIXED = {
    "act_fn": ("silu",),
    "center_input_sample": (False,),
    "downsample_padding": (1,),
    "mid_block_scale_factor": (1, 1.0),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "num_attention_heads": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "dual_cross_attention": (False,),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1, 1.0),
    "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "cross_attention_norm": (None,),
    "dropout": (0, 0.0),
}

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """UNet2DConditionModel as SD 1.x / 2.x and SDXL use it (diffusers' config field names)."""

    in_channels: int = _int(4)
    out_channels: int = _int(4)
    sample_size: int = _int(64)
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = _int(2)
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    # diffusers' SD configs store the number of *heads* here (a historical misnomer), an int or one per block
    attention_head_dim: int | tuple = 8
    cross_attention_dim: int = _int(1280)
    norm_num_groups: int = _int(32)
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    upcast_attention: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = _int(0)
    # SDXL: transformer blocks per attention (an int or one per block), and the "text_time" embedding added to
    # the time embedding: [pooled text (P), the sinusoids (addition_time_embed_dim each) of 6 (base) or 5 (refiner)
    # size numbers]
    transformer_layers_per_block: int | tuple = 1
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None

    def validate(self, source):
        n = len(self.block_out_channels)
        if self.addition_embed_type not in (None, "text_time"):
            raise ConfigError(f"{source}: addition_embed_type={self.addition_embed_type!r} is not supported by sumie "
                              f"(supported: None or 'text_time')")
        if self.addition_embed_type and not (self.addition_time_embed_dim
                                             and self.projection_class_embeddings_input_dim):
            raise ConfigError(f"{source}: addition_embed_type 'text_time' needs addition_time_embed_dim and "
                              f"projection_class_embeddings_input_dim")
        if isinstance(self.transformer_layers_per_block, tuple) and len(self.transformer_layers_per_block) != n:
            raise ConfigError(f"{source}: transformer_layers_per_block has {len(self.transformer_layers_per_block)} "
                              f"entries, expected one per block ({n})")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(f"{source}: block_out_channels, down_block_types and up_block_types "
                              f"must have the same length (got {n}, {len(self.down_block_types)}, "
                              f"{len(self.up_block_types)})")
        for name, types, allowed in (("down_block_types", self.down_block_types, _DOWN_TYPES),
                                     ("up_block_types", self.up_block_types, _UP_TYPES)):
            for t in types:
                if t not in allowed:
                    raise ConfigError(f"{source}: {name} entry {t!r} is not supported ({', '.join(allowed)})")
        if isinstance(self.attention_head_dim, tuple) and len(self.attention_head_dim) != n:
            raise ConfigError(f"{source}: attention_head_dim has {len(self.attention_head_dim)} entries, "
                              f"expected one per block ({n})")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(f"{source}: block_out_channels entry {c} is not divisible by "
                                  f"norm_num_groups {self.norm_num_groups}")

    @property
    def heads(self) -> tuple[int, ...]:
        """Attention heads per down block (up blocks use them reversed, the mid block the last)."""
        h = self.attention_head_dim
        return h if isinstance(h, tuple) else (h,) * len(self.block_out_channels)

    @property
    def depths(self) -> tuple[int, ...]:
        """Transformer blocks per attention, per down block (up blocks use them reversed, the mid block the last)."""
        d = self.transformer_layers_per_block
        return d if isinstance(d, tuple) else (d,) * len(self.block_out_channels)

    @classmethod
    def from_dict(cls, raw, source="unet/config.json"):
        if isinstance(raw.get("cross_attention_dim"), list):
            raise ConfigError(f"{source}: a per-block cross_attention_dim is not supported")
        if "upcast_attention" in raw and raw["upcast_attention"] is None:  # SDXL's published configs: null
            raw = {**raw, "upcast_attention": False}
        return _parse(cls, raw, source, _UNET_FIXED)


_VAE_FIXED = {
    "act_fn": ("silu",),
    "shift_factor": (None, 0, 0.0),
    "latents_mean": (None,),
    "latents_std": (None,),
}


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """AutoencoderKL (diffusers' config field names)."""

    in_channels: int = _int(3)
    out_channels: int = _int(3)
    latent_channels: int = _int(4)
    block_out_channels: tuple = (64,)
    layers_per_block: int = _int(1)
    down_block_types: tuple = ("DownEncoderBlock2D",)
    up_block_types: tuple = ("UpDecoderBlock2D",)
    norm_num_groups: int = _int(32)
    sample_size: int = _int(32)
    scaling_factor: float = 0.18215  # Rombach et al. 2022, sec. 4.3.2: unit-variance latents for SD
    force_upcast: bool = True
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    def validate(self, source):
        n = len(self.block_out_channels)
        if self.down_block_types != ("DownEncoderBlock2D",) * n:
            raise ConfigError(f"{source}: down_block_types must be {n} x 'DownEncoderBlock2D' "
                              f"(got {list(self.down_block_types)})")
        if self.up_block_types != ("UpDecoderBlock2D",) * n:
            raise ConfigError(f"{source}: up_block_types must be {n} x 'UpDecoderBlock2D' "
                              f"(got {list(self.up_block_types)})")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(f"{source}: block_out_channels entry {c} is not divisible by "
                                  f"norm_num_groups {self.norm_num_groups}")

    @property
    def downscale(self) -> int:
        """Pixels per latent along each side (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, raw, source="vae/config.json"):
        return _parse(cls, raw, source, _VAE_FIXED)


@dataclass(frozen=True, kw_only=True)
class TinyVAEConfig:
    """AutoencoderTiny, TAESD (diffusers' config field names; the defaults are TAESD's for SD 1/2)."""

    in_channels: int = _int(3)
    out_channels: int = _int(3)
    latent_channels: int = _int(4)
    encoder_block_out_channels: tuple = (64, 64, 64, 64)
    decoder_block_out_channels: tuple = (64, 64, 64, 64)
    num_encoder_blocks: tuple = (1, 3, 3, 3)
    num_decoder_blocks: tuple = (3, 3, 3, 1)
    act_fn: str = "relu"
    upsample_fn: str = "nearest"
    upsampling_scaling_factor: int = _int(2)
    latent_magnitude: int = _int(3)
    latent_shift: float = 0.5
    scaling_factor: float = 1.0  # TAESD works on the SD VAE's scaled latents as they are
    shift_factor: float = 0.0
    force_upcast: bool = False

    def validate(self, source):
        if len(self.encoder_block_out_channels) != len(self.num_encoder_blocks) or \
                len(self.decoder_block_out_channels) != len(self.num_decoder_blocks):
            raise ConfigError(f"{source}: each block_out_channels needs one entry per num_*_blocks entry")
        for name, supported in (("act_fn", "relu"), ("upsample_fn", "nearest"), ("shift_factor", 0.0)):
            if getattr(self, name) != supported:
                raise ConfigError(f"{source}: {name}={getattr(self, name)!r} is not supported by sumie "
                                  f"(supported: {supported!r})")

    @property
    def downscale(self) -> int:
        """Pixels per latent along each side (8 for SD)."""
        return self.upsampling_scaling_factor ** (len(self.decoder_block_out_channels) - 1)

    @classmethod
    def from_dict(cls, raw, source="vae/config.json"):
        return _parse(cls, raw, source, {})


# ---------------------------------------------------------------------------------------------------
# Named presets: the published architectures, as their diffusers folders' config files describe them.
# Detection of single files starts from these; tests/test_config.py checks them against the published files.
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Preset:
    """One architecture: the configs of its networks, its scheduler_config.json, its tokenizer's pad. SDXL has a
    second text encoder (OpenCLIP bigG, with its projection), whose tokenizer pads with "!"; its refiner has only
    that one (`text_encoder` None)."""

    name: str
    text_encoder: TextEncoderConfig | None
    unet: UNetConfig
    vae: VAEConfig
    scheduler: MappingProxyType
    pad_token: str = "<|endoftext|>"
    text_encoder_2: TextEncoderConfig | None = None


_SD_VAE = VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
_SD1_SCHEDULER = MappingProxyType({
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "clip_sample": False})

# The published text encoder configs predate transformers 4.31: eos_token_id 2, so the pooled output is taken at
# argmax(ids), which is the first end-of-text token for CLIP's vocabulary, as 49407 would give.
SD15 = Preset(
    name="sd15",
    text_encoder=TextEncoderConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                   num_attention_heads=12, bos_token_id=0, eos_token_id=2, projection_dim=768),
    unet=UNetConfig(cross_attention_dim=768), vae=_SD_VAE, scheduler=_SD1_SCHEDULER)
# SD 2.x: OpenCLIP ViT-H/14's text tower up to its penultimate layer (23 of 24), per-level heads of 64 channels,
# linear projections; the 768-v models predict v.
SD21 = Preset(
    name="sd21",
    text_encoder=dataclasses.replace(SD15.text_encoder, hidden_size=1024, intermediate_size=4096,
                                     num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
                                     projection_dim=512),
    unet=UNetConfig(sample_size=96, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                    use_linear_projection=True, upcast_attention=True),
    vae=dataclasses.replace(_SD_VAE, sample_size=768),
    scheduler=MappingProxyType({**_SD1_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}),
    pad_token="!")
SD21_BASE = dataclasses.replace(  # the 512-pixel SD 2.0 / 2.1 base models predict epsilon
    SD21, name="sd21-base", unet=dataclasses.replace(SD21.unet, sample_size=64),
    vae=_SD_VAE, scheduler=MappingProxyType({**SD21.scheduler, "prediction_type": "epsilon"}))
# sumie-tiny (sumie/tiny): 64x64 images, f=4 latents of 16x16. DDPM's linear betas (Ho et al. 2020), not SD's
# scaled-linear ones: at t=T those leave sqrt(abar) = 0.068 of the signal, enough on 16x16 latents for the UNet to
# read each shape's position off the noise instead of the caption, and so to draw it wherever the starting noise
# suggests (Lin et al. 2023 describe the flaw); linear betas leave 0.006. "trailing" starts sampling at t=999.
TINY = Preset(
    name="sumie-tiny",
    text_encoder=TextEncoderConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4),
    unet=UNetConfig(block_out_channels=(32, 64, 112), layers_per_block=1, sample_size=16, cross_attention_dim=32,
                    attention_head_dim=4, norm_num_groups=8,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    vae=VAEConfig(block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  sample_size=64),
    scheduler=MappingProxyType({
        "_class_name": "DPMSolverMultistepScheduler", "beta_start": 0.0001, "beta_end": 0.02,
        "beta_schedule": "linear", "num_train_timesteps": 1000, "prediction_type": "v_prediction",
        "steps_offset": 0, "timestep_spacing": "trailing", "set_alpha_to_one": False, "clip_sample": False,
        "algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}))
# SDXL 1.0 (Podell et al. 2023): CLIP ViT-L and OpenCLIP ViT-bigG/14 side by side (context 768 + 1280 = 2048, both
# penultimate layers), three levels with 0 / 2 / 10 transformer blocks (the top one without attention), and the
# pooled bigG output plus six size numbers added to the time embedding (1280 + 6 * 256 = 2816). The refiner reads
# bigG alone, and five numbers: the sizes and an aesthetic score (1280 + 5 * 256 = 2560).
_BIG_G = TextEncoderConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                           hidden_act="gelu", projection_dim=1280, bos_token_id=0, eos_token_id=2)
_SDXL_SCHEDULER = MappingProxyType({
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear",
    "use_karras_sigmas": False, "clip_sample": False})
_SDXL_VAE = dataclasses.replace(_SD_VAE, sample_size=1024, scaling_factor=0.13025)
SDXL = Preset(
    name="sdxl",
    text_encoder=SD15.text_encoder,
    text_encoder_2=_BIG_G,
    unet=UNetConfig(sample_size=128, block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2816),
    vae=_SDXL_VAE, scheduler=_SDXL_SCHEDULER)
SDXL_REFINER = Preset(
    name="sdxl-refiner",
    text_encoder=None,
    text_encoder_2=_BIG_G,
    unet=UNetConfig(sample_size=128, block_out_channels=(384, 768, 1536, 1536), attention_head_dim=(6, 12, 24, 24),
                    transformer_layers_per_block=4, cross_attention_dim=1280, use_linear_projection=True,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2560),
    vae=_SDXL_VAE, scheduler=_SDXL_SCHEDULER)
PRESETS = {p.name: p for p in (SD15, SD21, SD21_BASE, TINY, SDXL, SDXL_REFINER)}
