"""Helpers that use the oracles (diffusers / transformers) to write small random model folders.

Test-only: sumie itself never imports diffusers or transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sumie.tokenizer import write_vocab_files

TINY = {
    "sd1": dict(
        unet=dict(block_out_channels=(32, 64, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32),
        text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
                  vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu"),
        pad="<|endoftext|>"),
    "sd2": dict(
        unet=dict(block_out_channels=(32, 64, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=48, attention_head_dim=(2, 4, 8), norm_num_groups=32,
                  use_linear_projection=True, upcast_attention=True),
        text=dict(hidden_size=48, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
                  vocab_size=49408, max_position_embeddings=77, hidden_act="gelu"),
        pad="!"),
}
TINY_VAE = dict(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=32, sample_size=32)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter random values of unit-ish scale, so that parity tests exercise every weight
    (default inits zero some layers, e.g. a UNet's conv_out, which would hide errors before them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:  # LayerNorm / GroupNorm: weight near 1, bias near 0
                p.copy_(noise * 0.1 + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.copy_(noise * (p[0].numel() if p.ndim > 1 else 1) ** -0.5)
    return module.eval()


def write_model_folder(path: Path, kind: str = "sd1", seed: int = 0, *, inpainting: bool = False) -> Path:
    """Write a complete diffusers Stable Diffusion folder with tiny random networks, as the oracles save it
    (`inpainting`: a UNet with 9 input channels, as SD 1.5-inpainting has)."""
    from diffusers import (AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = TINY[kind]
    torch.manual_seed(seed)
    unet = randomize(UNet2DConditionModel(**{**spec["unet"], "in_channels": 9 if inpainting else 4}), seed)
    vae = randomize(AutoencoderKL(**TINY_VAE), seed + 1)
    text = randomize(CLIPTextModel(CLIPTextConfig(**spec["text"])), seed + 2)
    write_vocab_files(path / "_vocab", pad_token=spec["pad"])
    tok = CLIPTokenizer.from_pretrained(path / "_vocab")
    if kind == "sd1":
        sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    else:
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


TOL = 1e-4  # max difference between sumie's networks and the oracles' in float32
DATA = Path(__file__).parent / "data"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def reference(folder: Path, name: str) -> torch.nn.Module:
    """The oracle's network `name` (unet, vae, text_encoder) of a diffusers folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}[name]
    return cls.from_pretrained(folder, subfolder=name).eval()


def published(name: str) -> dict:
    """A published SD folder's config file, e.g. `sd15_unet` (tests/data)."""
    return json.loads((DATA / f"{name}.json").read_text())


def shapes(module: torch.nn.Module) -> dict[str, tuple]:
    """Parameter names (transformers' `text_model.` prefix dropped) and shapes."""
    return {k.removeprefix("text_model."): tuple(v.shape) for k, v in module.state_dict().items()
            if not k.endswith("position_ids")}


def write_full_size_folder(path: Path, version: str, seed: int = 0) -> Path:
    """A diffusers folder of the full-size SD 1.5 (`sd15`) or SD 2.1 768-v (`sd21`) architecture, from the
    published configs (tests/data), with the oracles' default random initialisation."""
    from diffusers import (AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    write_vocab_files(path / "_vocab", pad_token="!" if version == "sd21" else "<|endoftext|>")
    scheduler = (DDIMScheduler if version == "sd21" else PNDMScheduler).from_config(published(f"{version}_scheduler"))
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(published(f"{version}_unet")),
        vae=AutoencoderKL.from_config(published(f"{version}_vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**published(f"{version}_text_encoder"))),
        tokenizer=CLIPTokenizer.from_pretrained(path / "_vocab"), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def full_size_pair(component: str, preset) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(sumie's, the oracle's) full-size `component` (unet, vae, text_encoder) of a preset, on the meta device:
    ours from the preset, the oracle's from the published config file."""
    import diffusers
    import transformers

    from sumie.text_encoder import CLIPTextModel
    from sumie.unet import UNet2DConditionModel
    from sumie.vae import AutoencoderKL
    config = published(f"{preset.name}_{component}")
    with torch.device("meta"):
        if component == "text_encoder":
            return (CLIPTextModel(preset.text_encoder),
                    transformers.CLIPTextModel(transformers.CLIPTextConfig(**config)))
        ours = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[component](getattr(preset, component))
        return ours, getattr(diffusers, {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}[component]).from_config(config)


def write_taesd(folder: Path, seed: int = 0):
    """diffusers' AutoencoderTiny (TAESD's default config) with random weights, the biases made non-zero,
    saved as a diffusers folder; returns the model."""
    from diffusers import AutoencoderTiny
    torch.manual_seed(seed)
    model = AutoencoderTiny().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5) if p.dim() > 1 else p.copy_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return model


XL = dict(  # small SDXL-shaped networks: three levels, the top one without attention, 1 / 2 / 3 transformer blocks;
    # the two encoders of different widths, as diffusers' single-file loader tells them apart by width
    unet=dict(block_out_channels=(32, 64, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 2, 3), use_linear_projection=True,
              norm_num_groups=32, addition_embed_type="text_time", addition_time_embed_dim=8),
    text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=4, vocab_size=49408,
              max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, projection_dim=32),
    text_2=dict(hidden_size=48, intermediate_size=40, num_attention_heads=4, num_hidden_layers=5, vocab_size=49408,
                max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=2, projection_dim=24),
)


def write_xl_folder(path: Path, seed: int = 0, *, refiner: bool = False) -> Path:
    """A diffusers SDXL folder with small random networks, as the oracles save it: the base model (both text
    encoders, six size numbers), or with `refiner` the refiner (bigG alone, sizes and an aesthetic score)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    pooled, numbers = XL["text_2"]["projection_dim"], 5 if refiner else 6
    context = XL["text_2"]["hidden_size"] + (0 if refiner else XL["text"]["hidden_size"])
    unet = randomize(UNet2DConditionModel(**XL["unet"], cross_attention_dim=context,
                                          projection_class_embeddings_input_dim=pooled + numbers * 8), seed)
    vae = randomize(AutoencoderKL(**TINY_VAE, scaling_factor=0.13025), seed + 1)
    text_2 = randomize(CLIPTextModelWithProjection(CLIPTextConfig(**XL["text_2"])), seed + 3)
    write_vocab_files(path / "_vocab2", pad_token="!")
    tok_2 = CLIPTokenizer.from_pretrained(path / "_vocab2")
    scheduler = EulerDiscreteScheduler.from_config(published("sdxl_scheduler"))
    if refiner:
        pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=None, text_encoder_2=text_2, tokenizer=None,
                                                tokenizer_2=tok_2, unet=unet, scheduler=scheduler,
                                                requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    else:
        text = randomize(CLIPTextModel(CLIPTextConfig(**XL["text"])), seed + 2)
        write_vocab_files(path / "_vocab", pad_token="<|endoftext|>")
        tok = CLIPTokenizer.from_pretrained(path / "_vocab")
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok,
                                         tokenizer_2=tok_2, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(path)
    return path
