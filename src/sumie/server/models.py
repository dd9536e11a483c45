"""Request bodies of the A1111 API, as pydantic models: A1111's field names and defaults, with bounds.

A field sumie does not use is accepted and ignored, as A1111's clients send many. A bad value is a 422
that names the field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import InputError
from ..schedulers import from_a1111

MAX_BODY = 20 * 1024 * 1024
MAX_SIDE = 2048
MAX_BATCH = 8


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI, the fields sumie uses; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field("", max_length=10_000)
    negative_prompt: str = Field("", max_length=10_000)
    seed: int = Field(-1, ge=-1, lt=2 ** 32)
    sampler_name: str | None = None
    sampler_index: str | None = None  # A1111's deprecated alias of sampler_name
    scheduler: str | None = None
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0, le=100, allow_inf_nan=False)
    width: int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)  # None: the model's native size
    height: int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    n_iter: int = Field(1, ge=1, le=32)
    send_images: bool = True
    save_images: bool = False
    override_settings: dict = Field(default_factory=dict)  # options for this request (see `clip_skip`)
    override_settings_restore_afterwards: bool = True  # false: they stay set afterwards, as posted to /options
    styles: list[str] = Field(default_factory=list, max_length=32)  # names in the server's styles.csv
    # A1111's hires fix (see sumie.hires)
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1, le=8, allow_inf_nan=False)
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_upscaler: str | None = None  # None: "Latent", A1111's default
    hr_second_pass_steps: int = Field(0, ge=0, le=150)
    hr_prompt: str = Field("", max_length=10_000)
    hr_negative_prompt: str = Field("", max_length=10_000)
    denoising_strength: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)  # hires: None is 0.7

    @property
    def clip_skip(self) -> int:
        """A1111's CLIP_stop_at_last_layers from override_settings (the route adds the server's): 1 is the last
        layer."""
        return self.override_settings.get("CLIP_stop_at_last_layers", 1)

    @field_validator("sampler_name", "sampler_index")
    @classmethod
    def _known_sampler(cls, name):
        if name is not None:
            try:
                from_a1111(name)
            except InputError as e:
                raise ValueError(str(e)) from None
        return name

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name):
        if name is not None and name.lower() not in ("automatic", "karras"):
            raise ValueError(f"unknown scheduler {name!r}; choose Automatic or Karras")
        return name


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's StableDiffusionImg2ImgProcessingAPI: txt2img's fields and the init images, mask and their options,
    with A1111's defaults. Width and height default to the first init image's size, rounded down to 8."""

    init_images: list[str] = Field(..., min_length=1, max_length=MAX_BATCH)  # base64, data: URL prefix allowed
    denoising_strength: float = Field(0.75, ge=0, le=1, allow_inf_nan=False)
    resize_mode: int = Field(0, ge=0, le=3)
    mask: str | None = None
    mask_blur: int | None = Field(None, ge=0, le=64)  # sets both of mask_blur_x / mask_blur_y
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=256)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    include_init_images: bool = False

    @property
    def exact_steps(self) -> bool:
        """A1111's img2img_fix_steps option ("do exactly the amount of steps the slider specifies")."""
        return self.override_settings.get("img2img_fix_steps", False)


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(..., max_length=MAX_BODY)
