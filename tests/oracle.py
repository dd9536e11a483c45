"""Helpers that use the oracles (diffusers / transformers) to write small random model folders.

Test-only: sumie itself never imports diffusers or transformers.
"""

from __future__ import annotations

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


def write_model_folder(path: Path, kind: str = "sd1", seed: int = 0) -> Path:
    """Write a complete diffusers Stable Diffusion folder with tiny random networks, as the oracles save it."""
    from diffusers import (AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = TINY[kind]
    torch.manual_seed(seed)
    unet = randomize(UNet2DConditionModel(**spec["unet"]), seed)
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
