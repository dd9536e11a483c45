"""A1111's hires fix: text to image at the base size, an upscale, then an img2img pass at the large size.

The upscale is either in latent space (A1111's "Latent ..." modes: the first pass's latents interpolated, no decode)
or of the decoded image ("None" and "Lanczos": Lanczos, "Nearest": nearest neighbour). The second pass runs exactly
`steps` steps (the first pass's count when 0), as A1111 runs it, at `strength`; at strength 0 it is skipped and the
result is the upscale itself. Seeds are the first pass's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from PIL import Image

from .errors import InputError

# A1111's latent upscale modes: name -> (torch interpolation mode, antialias)
LATENT_MODES = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
                "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
                "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}
IMAGE_UPSCALERS = {"None": Image.LANCZOS, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
MAX_SIDE = 2048


@dataclass(frozen=True)
class Hires:
    """The second pass: to `scale` x the base size, or to resize_x x resize_y (one of them 0: kept in proportion)."""
    scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0
    upscaler: str = "Latent"
    steps: int = 0
    strength: float = 0.7
    prompt: str | None = None
    negative_prompt: str | None = None

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The final width and height, rounded down to multiples of 8; InputError past MAX_SIDE."""
        if self.resize_x or self.resize_y:
            w = self.resize_x or self.resize_y * width / height
            h = self.resize_y or self.resize_x * height / width
        else:
            w, h = width * self.scale, height * self.scale
        w, h = int(w) // 8 * 8, int(h) // 8 * 8
        if not 8 <= w <= MAX_SIDE or not 8 <= h <= MAX_SIDE:
            raise InputError(f"hires fix to {w}x{h}: each side must be from 8 to {MAX_SIDE} pixels; lower the scale")
        return w, h

    def check(self) -> None:
        if self.upscaler not in LATENT_MODES and self.upscaler not in IMAGE_UPSCALERS:
            raise InputError(f"unknown hires upscaler {self.upscaler!r}; choose one of "
                             f"{', '.join([*LATENT_MODES, *IMAGE_UPSCALERS])}")
        if not 0 <= self.strength <= 1:
            raise InputError(f"hires denoising strength must be from 0 to 1 (got {self.strength})")
        if self.steps < 0:
            raise InputError(f"hires steps must be >= 0 (got {self.steps}; 0: as many as the first pass)")

    def fields(self, width: int, height: int) -> dict:
        """The infotext fields A1111 writes for a hires-fixed image (underscores for spaces)."""
        resized = bool(self.resize_x or self.resize_y)
        return {"Denoising_strength": self.strength, "Hires_upscale": None if resized else self.scale,
                "Hires_resize": "x".join(map(str, self.size(width, height))) if resized else None,
                "Hires_steps": self.steps or None, "Hires_upscaler": self.upscaler,
                "Hires_prompt": self.prompt or None, "Hires_negative_prompt": self.negative_prompt or None}


def run(pipe, hires: Hires, *, width: int, height: int, steps: int, **kwargs) -> list[Image.Image]:
    """The hires-fixed images; kwargs: the text-to-image call's arguments (prompt, seed, ...)."""
    from .auto import img2img
    from .img2img import steps_for
    hires.check()
    w, h = hires.size(width, height)
    latents = pipe(num_inference_steps=steps, width=width, height=height, output_type="latent", **kwargs).images
    f, stopped = pipe.vae_scale_factor, pipe.interrupt  # interrupted: no second pass
    if hires.upscaler in LATENT_MODES:
        mode, antialias = LATENT_MODES[hires.upscaler]
        init = F.interpolate(latents, size=(h // f, w // f), mode=mode, antialias=antialias)
        if hires.strength == 0 or stopped:
            return pipe.output(init)
    else:
        init = [im.resize((w, h), IMAGE_UPSCALERS[hires.upscaler]) for im in pipe.output(latents)]
        if hires.strength == 0 or stopped:
            return init
    total, kept = steps_for(hires.strength, hires.steps or steps, exact=True)
    second = dict(kwargs)
    if hires.prompt:
        second["prompt"] = [hires.prompt] * len(init) if isinstance(kwargs.get("prompt"), list) else hires.prompt
    if hires.negative_prompt:
        second["negative_prompt"] = hires.negative_prompt if not isinstance(kwargs.get("negative_prompt"), list) \
            else [hires.negative_prompt] * len(init)
    return img2img(pipe)(image=init, strength=kept, num_inference_steps=total, width=w, height=h, **second).images
