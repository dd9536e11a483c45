"""sumie: a compact, readable Stable Diffusion engine in PyTorch."""

__version__ = "0.1.0"  # first: modules loaded below read it

from .errors import ConfigError, InputError, NumericalError, SumieError, WeightsError
from .images import image_grid
from .pipeline import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from .tokenizer import CLIPTokenizer
from .weights import Components, load_folder
from .xl import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

__all__ = ["CLIPTokenizer", "Components", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
           "StableDiffusionPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLPipeline", "image_grid",
           "ConfigError", "InputError", "NumericalError", "SumieError", "WeightsError", "load_folder", "__version__"]
