"""The pipeline class a model needs, picked from its weights, as diffusers' AutoPipelineFor* classes pick it:
SD 1.x / 2.x or SDXL, for text to image, img2img or inpainting. The CLI, the server and `sumie batch` load
models through here."""

from __future__ import annotations

from .errors import InputError
from .pipeline import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from .xl import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline


def load_pipeline(path, *args, **kwargs) -> StableDiffusionPipeline:
    """`from_pretrained` of the text-to-image pipeline the model at `path` needs (the same arguments)."""
    parts = StableDiffusionPipeline.load_components(path, *args, **kwargs)
    return (StableDiffusionXLPipeline if parts.is_xl else StableDiffusionPipeline)._from_components(parts)


def img2img(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """The img2img pipeline over `pipe`'s networks (nothing copied)."""
    cls = StableDiffusionXLImg2ImgPipeline if isinstance(pipe, StableDiffusionXLPipeline) else \
        StableDiffusionImg2ImgPipeline
    return cls.from_pipe(pipe)


def inpainting(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """The inpainting pipeline over `pipe`'s networks (nothing copied)."""
    if isinstance(pipe, StableDiffusionXLPipeline):
        raise InputError("inpainting with SDXL is not supported yet by sumie; use an SD 1.x / 2.x model")
    return StableDiffusionInpaintPipeline.from_pipe(pipe)
