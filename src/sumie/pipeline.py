"""Text to image: encode the prompt -> sample latents with guidance -> decode. img2img and inpainting start
the sampling part-way, from an image's latents (see `_inpaint_start`; A1111's options around them: `img2img`).

`StableDiffusionPipeline` mirrors diffusers' class of that name where users rely on it (same call
arguments and defaults, same numbers for the same seed) and adds `seed=`, `scheduler="dpm++2m"` and
`karras=True`. Classifier-free guidance (Ho & Salimans 2022, eq. 6) runs both branches in one batched
UNet call. Prompts are read by `sumie.prompts`, LoRAs applied by `sumie.lora`, and speed and memory options
live in `sumie.speed`; the methods here only switch them on.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from . import prompts as syntax
from .embeddings import Embeddings
from .errors import InputError, NumericalError
from .images import image_tensor, mask_tensor
from .lora import Library, LoRAs, prompt_tags
from .schedulers import SAMPLERS, Sampling, noised, randn, run
from .schedulers.adapter import FrozenConfig, Scheduler
from .speed import allocator, kernels, texts
from .speed.compile import compile_networks
from .speed.memory import Offload, decode, slice_attention
from .weights import load_model

MAX_SIDE = 4096
MAX_IMAGES = 64
# Arguments diffusers' pipelines take that sumie does not implement, with the value that means "not used":
# given any other value, they are ignored with a warning that names them.
DIFFUSERS_CALL_ARGS = {
    "eta": 0.0, "prompt_embeds": None, "negative_prompt_embeds": None, "guidance_rescale": 0.0, "callback": None,
    "callback_steps": 1, "return_dict": True, "timesteps": None, "sigmas": None, "ip_adapter_image": None,
    "ip_adapter_image_embeds": None, "callback_on_step_end_tensor_inputs": ["latents"]}
DIFFUSERS_LOAD_ARGS = {
    "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False, "use_safetensors": True,
    "local_files_only": True, "low_cpu_mem_usage": True, "cache_dir": None, "token": None, "use_auth_token": None,
    "force_download": False, "resume_download": None, "proxies": None, "device_map": None, "subfolder": None,
    "custom_pipeline": None, "use_onnx": None}


def warn_unsupported(given: dict, known: dict, where: str) -> None:
    """Warn about each diffusers argument in `given` that sumie ignores; refuse names diffusers does not take."""
    unknown = [k for k in given if k not in known]
    if unknown:
        raise TypeError(f"{where} got an unexpected keyword argument {unknown[0]!r}")
    for name, value in given.items():
        default = known[name]
        if value is not default and not (type(value) is type(default) and value == default):
            warnings.warn(f"{where}: {name}={value!r} is not implemented by sumie and is ignored", stacklevel=3)


GENERATE_ARGS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "height", "width",
                 "num_images_per_prompt", "generator", "seed", "scheduler", "karras", "output_type",
                 "callback_on_step_end", "latents", "prompt_syntax", "clip_skip", "emphasis", "_init", "_end")


class _Interrupted(Exception):
    def __init__(self, latents: torch.Tensor):
        self.latents = latents


@dataclass
class Init:
    """What img2img and inpainting start from, as their pipelines' arguments: PIL image(s) (img2img: or, as in
    diffusers, (B, 4, h, w) scaled latents), the strength, and for inpainting the mask image(s) (white: repaint) or
    (B, 4, h, w) masked-image latents."""
    image: object
    strength: float
    mask: object = None
    masked_latents: torch.Tensor | None = None
    masked_content: str = "original"  # or A1111's "latent-noise" / "latent-nothing" (see _inpaint_start)
    denoising_start: float | None = None  # SDXL's refiner: from this fraction of the schedule, latents not re-noised


@dataclass
class PipelineOutput:
    images: list | np.ndarray | torch.Tensor


def _nearest_multiples(v: int, m: int = 8) -> str:
    lo = max(m, v // m * m)
    return f"{lo} or {lo + m}" if lo != v else str(v)


class StableDiffusionPipeline:
    def __init__(self, *, vae, text_encoder, tokenizer, unet, scheduler: Scheduler, source: Path | None = None):
        self.vae, self.text_encoder, self.tokenizer, self.unet = vae, text_encoder, tokenizer, unet
        self.scheduler = scheduler
        self.source = source
        self.max_side = MAX_SIDE
        self._interrupt = False
        self._progress = {}
        self._compiled = None  # torch.compile'd UNet (see compile())
        self._offload: Offload | None = None  # see enable_model_cpu_offload()
        self._band_budget: int | None = None  # elements per band, see enable_vae_tiling()
        self.embeddings = Embeddings(tokenizer, text_encoder.config.hidden_size)  # see load_textual_inversion()
        self.batch_invariant: bool | None = None  # None: on a CPU (see _one_at_a_time)
        self.loras = LoRAs({"unet": unet, "text_encoder": text_encoder})  # see load_lora_weights()
        self.lora_library: Library | None = None  # the folder <lora:NAME:...> tags name files in
        self.exact_plms = False  # img2img with PLMS: diffusers' start (False) or the exact one (see from_strength)
        for model in (self.unet, self.vae, self.text_encoder):
            kernels.by_shape(model)  # on CPU, each 3x3 convolution and Linear by the algorithm fastest for its shape
        texts.remember(self.unet)  # cross-attention's keys and values computed once per text, not every step
        allocator.keep_freed_memory()  # activations reuse freed memory instead of faulting pages back in

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype | None = None, variant: str | None = None,
                        device: str | torch.device = "cpu", *, revision: str | None = None, vae=None,
                        config=None, prediction_type: str | None = None, allow_pickle: bool = False,
                        **diffusers_only) -> "StableDiffusionPipeline":
        """Load a diffusers folder, a model id from the local Hugging Face cache, or a single-file
        checkpoint (see `weights.load_model`). The safety checker and feature extractor are not used."""
        return cls._from_components(cls.load_components(
            path, torch_dtype, variant, device, revision=revision, vae=vae, config=config,
            prediction_type=prediction_type, allow_pickle=allow_pickle, **diffusers_only))

    @staticmethod
    def load_components(path: str | Path, torch_dtype: torch.dtype | None = None, variant: str | None = None,
                        device: str | torch.device = "cpu", *, revision: str | None = None, vae=None, config=None,
                        prediction_type: str | None = None, allow_pickle: bool = False, **diffusers_only):
        """from_pretrained's loading, before a pipeline class is chosen (see `sumie.auto`)."""
        warn_unsupported(diffusers_only, DIFFUSERS_LOAD_ARGS, "from_pretrained")
        return load_model(path, dtype=torch_dtype, device=device, variant=variant, revision=revision, vae=vae,
                          config=config, prediction_type=prediction_type, allow_pickle=allow_pickle)

    @classmethod
    def _from_components(cls, parts) -> "StableDiffusionPipeline":
        if parts.is_xl:
            raise InputError(f"{parts.source} is an SDXL model; load it with sumie.StableDiffusionXLPipeline "
                             f"(or sumie.auto.load_pipeline, which picks the class)")
        return cls(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                   scheduler=Scheduler.from_folder_config(parts.scheduler_config, source=str(parts.source)),
                   source=parts.source)

    from_single_file = from_pretrained

    @classmethod
    def from_pipe(cls, pipe: "StableDiffusionPipeline", scheduler: Scheduler | None = None):
        """This kind of pipeline over `pipe`'s networks, LoRAs, embeddings and speed options: nothing is copied,
        and what is loaded into one is in both."""
        new = cls.__new__(cls)
        new.__dict__.update(pipe.__dict__)
        new.scheduler = scheduler or pipe.scheduler
        return new

    # -- the diffusers object surface ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def config(self) -> FrozenConfig:
        return FrozenConfig(_class_name=type(self).__name__, _name_or_path=str(self.source or ""),
                            scheduler=self.scheduler.config._class_name)

    @property
    def _networks(self) -> list[torch.nn.Module]:
        """The text encoder(s), the UNet and the VAE."""
        return [self.text_encoder, self.unet, self.vae]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "StableDiffusionPipeline":
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for m in self._networks:
            m.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        self._progress = kwargs

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (e.g. in callback_on_step_end) to stop sampling after the current
        step; the latents reached so far are decoded and returned, as in diffusers."""
        return self._interrupt

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.config.downscale

    @property
    def execution_device(self) -> torch.device:
        return self._offload.device if self._offload else self.device

    # -- speed and memory options (each off by default; each gives the plain path's images; see sumie.speed) ----
    def enable_attention_slicing(self, slice_size: int | str = "auto") -> None:
        """Attend in chunks of `slice_size` queries (auto: 1024), bounding attention's peak memory."""
        slice_attention([self.unet, self.vae], 1024 if slice_size == "auto" else int(slice_size))

    def disable_attention_slicing(self) -> None:
        slice_attention([self.unet, self.vae], None)

    def enable_vae_tiling(self, band_mib: float = 16) -> None:
        """Decode layer by layer in bands of rows (about `band_mib` MiB of float32 input each) at every
        size, with whole-image GroupNorm statistics: the same image without seams, in less memory (see
        `speed.bands`; decoding already does this from `bands.BANDS_FROM` pixels up)."""
        self._band_budget = max(1, int(band_mib * 2 ** 18))

    def disable_vae_tiling(self) -> None:
        self._band_budget = None

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep the networks on the CPU and move each to `device` only while it runs (for small GPUs)."""
        self._offload = Offload(device)
        self.to("cpu")

    def enable_sequential_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep every weight on the CPU; each layer's own weights move to `device` just for its forward
        and back after it. The least device memory (one layer's weights), and the slowest."""
        self._offload = Offload(device, sequential=True)
        self.to("cpu")
        self._offload.hook(self._networks)

    def compile(self, backend: str | None = None, **options) -> "StableDiffusionPipeline":
        """The fast path (`speed.compile`): "pack" on CPU, every network's weights kept packed; "inductor"
        elsewhere, torch.compile of the UNet with `options`."""
        self._compiled = compile_networks(self._networks, self.unet, self.execution_device,
                                          backend, **options)
        return self

    def _placed(self, module: torch.nn.Module):
        """Run `module` on the offload device when offloading is on."""
        return self._offload.placed(module) if self._offload else contextlib.nullcontext()

    # -- steps ----------------------------------------------------------------------------------------
    def load_textual_inversion(self, path: str | Path, token: str | None = None, *, allow_pickle: bool = False):
        """A textual-inversion embedding (see `sumie.embeddings`), used wherever a prompt names it: `token`, else
        the name the file carries, else its stem. As diffusers' method of this name, for both prompt syntaxes."""
        return self.embeddings.load(path, token, allow_pickle=allow_pickle)

    # -- LoRA and LyCORIS (diffusers' names; see sumie.lora) ----------------------------------------------
    def load_lora_weights(self, path: str | Path, adapter_name: str | None = None, weight_name: str | None = None,
                          *, allow_pickle: bool = False) -> None:
        """A LoRA / LyCORIS file (or `weight_name` in a folder), active at weight 1 beside those already loaded.
        Its name is `adapter_name`, else the file's stem."""
        path = Path(path)
        if path.is_dir():
            found = [path / weight_name] if weight_name else sorted(path.glob("*.safetensors"))
            if len(found) != 1:
                raise InputError(f"{path} holds {len(found)} .safetensors files; name one with weight_name=")
            path = found[0]
        self.loras.load(path, adapter_name, allow_pickle=allow_pickle)

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None) -> None:
        """Make exactly these adapters active, at these weights (default 1 each)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, list) else [
            1.0 if adapter_weights is None else adapter_weights] * len(names)
        self.loras.set_active(dict(zip(names, weights)))

    def get_active_adapters(self) -> list[str]:
        return list(self.loras.active)

    def fuse_lora(self, lora_scale: float = 1.0) -> None:
        """The active adapters at `lora_scale`. A LoRA here is always in the weights, so it costs nothing per step."""
        self.loras.apply(lora_scale)

    def unfuse_lora(self) -> None:
        """Back to scale 1, as diffusers' unfused adapters; the original weights are untouched either way."""
        self.loras.apply(1.0)

    def unload_lora_weights(self) -> None:
        """Every LoRA removed: each weight is again the original tensor, bit for bit."""
        self.loras.unload()

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None, *,
                      prompt_syntax: str = "plain", clip_skip: int | None = None, num_images_per_prompt: int = 1,
                      emphasis: str = "original") -> tuple[torch.Tensor, torch.Tensor]:
        """-> (cond, uncond), each (B, 77 * k, D): the tensors the UNet receives, padded to the same k. uncond
        encodes the negative prompt, or the empty one. With prompt editing, the first step's. In the plain
        syntax the negative prompt takes no clip skip, as in diffusers; in the a1111 syntax both do, as in A1111."""
        syntax.check_options(prompt_syntax, emphasis, clip_skip)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = self._negatives(negative_prompt, prompts) or [""] * len(prompts)
        encode, encode_negative = self._encoders(prompt_syntax, clip_skip, emphasis)
        tensors = syntax.pad_to_same_length([encode(p) for p in prompts] + [encode_negative(p) for p in negatives],
                                            lambda: encode_negative(""))
        cond, uncond = torch.cat(tensors[:len(prompts)]), torch.cat(tensors[len(prompts):])
        return cond.repeat_interleave(num_images_per_prompt, 0), uncond.repeat_interleave(num_images_per_prompt, 0)

    def _encoders(self, prompt_syntax: str, clip_skip: int | None, emphasis: str):
        """(for prompts, for negative prompts): text -> (1, 77 * k, D), each distinct text encoded once. The
        negative prompt's clip skip follows the syntax (see encode_prompt)."""
        def encoder(skip: int | None):
            cache: dict[str, torch.Tensor] = {}

            def encode(text: str) -> torch.Tensor:
                if text not in cache:
                    with self._placed(self.text_encoder):
                        cache[text] = syntax.encode(self.text_encoder, self.tokenizer, text, syntax=prompt_syntax,
                                                    clip_skip=skip, emphasis=emphasis,
                                                    embeddings=self.embeddings).to(self.execution_device)
                return cache[text]
            return encode
        prompts = encoder(clip_skip)
        return prompts, prompts if prompt_syntax == "a1111" else encoder(None)

    @staticmethod
    def _negatives(negative_prompt, prompts: list[str]) -> list[str] | None:
        if negative_prompt is None:
            return None
        return [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)

    def _check(self, prompts, negatives, height, width, steps, guidance, n, output_type) -> None:
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v <= 0:
                raise InputError(f"{name} must be a positive integer (got {v!r})")
            if v % 8:
                raise InputError(f"{name} must be a multiple of 8 (got {v}); try {_nearest_multiples(v)}")
            if v > self.max_side:
                raise InputError(f"{name} must be at most {self.max_side} pixels (got {v})")
        if not isinstance(steps, int) or steps < 1:
            raise InputError(f"num_inference_steps must be an integer >= 1 (got {steps!r})")
        if not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise InputError(f"guidance_scale must be a finite number (got {guidance!r})")
        if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
            raise InputError(f"num_images_per_prompt must be from 1 to {MAX_IMAGES} (got {n!r})")
        if negatives is not None and len(negatives) != len(prompts):
            raise InputError(f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}; "
                             f"give one negative prompt, or one per prompt")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InputError(f"output_type must be pil, np, pt or latent (got {output_type!r})")

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, height: int | None = None,
                 width: int | None = None, num_images_per_prompt: int = 1, generator=None, seed: int | None = None,
                 scheduler: str | None = None, karras: bool | None = None, output_type: str = "pil",
                 callback_on_step_end=None, latents: torch.Tensor | None = None, prompt_syntax: str = "plain",
                 clip_skip: int | None = None, emphasis: str = "original", cross_attention_kwargs: dict | None = None,
                 _init: tuple | None = None, _end: float | None = None, **diffusers_only) -> PipelineOutput:
        """diffusers' arguments, and: `seed` (image i uses seed + i), `scheduler` (a sampler id), `karras`,
        `prompt_syntax` ("plain": diffusers' reading; "a1111": emphasis, long prompts, BREAK, prompt editing;
        see `sumie.prompts`), `clip_skip` (diffusers' meaning) and `emphasis` ("original" or "none").
        cross_attention_kwargs={"scale": s} applies the LoRAs at scale s for this call. (`_init`: img2img's
        `Init`, given by the img2img and inpainting pipelines; `_end`: SDXL's denoising_end.)"""
        extra = dict(cross_attention_kwargs or {})
        scale = extra.pop("scale", None)
        warn_unsupported({**diffusers_only, **({"cross_attention_kwargs": extra} if extra else {})},
                         {**DIFFUSERS_CALL_ARGS, "cross_attention_kwargs": {}}, "StableDiffusionPipeline()")
        added = []
        if prompt_syntax == "a1111":  # <lora:NAME:WEIGHT> tags: the first prompt's, for this call
            prompt, negative_prompt, added = self._lora_tags(prompt, negative_prompt)
        allow_pickle = self.lora_library is not None and self.lora_library.allow_pickle
        with self.loras.scaled(scale), self.loras.added(added, allow_pickle=allow_pickle):
            return self._generate(**{k: v for k, v in locals().items() if k in GENERATE_ARGS})

    def _lora_tags(self, prompt, negative_prompt):
        """-> (prompt, negative prompt) without their <lora:...> tags, and the first prompt's LoRAs as
        (name, file, text encoder multiplier, UNet multiplier), as A1111 applies them to a batch."""
        strip = lambda p: None if p is None else prompt_tags(p)[0] if isinstance(p, str) else [prompt_tags(x)[0]
                                                                                              for x in p]
        tags = prompt_tags(prompt if isinstance(prompt, str) else prompt[0])[1]
        if tags and self.lora_library is None:
            raise InputError(f"the prompt names LoRAs (<lora:{tags[0][0]}:...>) but no LoRA folder is set: pass "
                             f"--lora-dir DIR (API: pipe.lora_library = sumie.lora.Library(DIR))")
        added = [(name, self.lora_library.path(name), te, unet) for name, te, unet in tags]
        return strip(prompt), strip(negative_prompt), added

    def _generate(self, *, prompt, negative_prompt, num_inference_steps, guidance_scale, height, width,
                  num_images_per_prompt, generator, seed, scheduler, karras, output_type, callback_on_step_end,
                  latents, prompt_syntax, clip_skip, emphasis, _init, _end) -> PipelineOutput:
        syntax.check_options(prompt_syntax, emphasis, clip_skip)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = self._negatives(negative_prompt, prompts)
        f = self.vae_scale_factor
        given_latents = _init is not None and isinstance(_init.image, torch.Tensor)  # img2img from latents
        if given_latents and _init.mask is not None:
            raise InputError("inpainting takes an image, not latents; pass a PIL image as image=")
        init = None if _init is None else _init.image if given_latents else image_tensor(_init.image, height, width, f)
        mask = None if _init is None or _init.mask is None else mask_tensor(_init.mask, *init.shape[-2:])
        native = self.unet.config.sample_size * f
        default_height, default_width = (native, native) if init is None else (
            init.shape[-2] * (f if given_latents else 1), init.shape[-1] * (f if given_latents else 1))
        height, width = default_height if height is None else height, default_width if width is None else width
        if given_latents and (height, width) != (default_height, default_width):
            raise InputError(f"the init latents are for {default_width}x{default_height} images, not {width}x{height}")
        self._check(prompts, negatives, height, width, num_inference_steps, guidance_scale, num_images_per_prompt,
                    output_type)
        sampling = Sampling.create(scheduler or self.scheduler.sampler_id, self.scheduler._raw, num_inference_steps,
                                   karras=self.scheduler.karras if karras is None else karras)
        if init is not None and _init.denoising_start is not None:  # SDXL's refiner: the steps after the base's
            sampling = sampling.from_denoising_start(_init.denoising_start)
        elif init is not None:  # img2img runs the last strength * steps steps
            sampling = sampling.from_strength(_init.strength, exact_plms=self.exact_plms)
        stop_after = None if _end is None else sampling.steps_until(_end)
        batch = len(prompts) * num_images_per_prompt
        if seed is not None:
            generator = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
        if isinstance(generator, list) and len(generator) != batch:
            raise InputError(f"got {len(generator)} generators for a batch of {batch} images; pass one per image")

        # 1. The text conditioning of each image, and for guidance the negative (or empty) prompt's: per image
        # [(last model call, (1, 77 * k, D))], one entry unless the prompt edits itself between steps
        guided = guidance_scale > 1
        encode, encode_negative = self._encoders(prompt_syntax, clip_skip, emphasis)
        calls = len(sampling.schedule) * SAMPLERS[sampling.sampler_id].order  # A1111 schedules by model calls

        def per_image(texts: list[str], encode) -> list[list[tuple[int, torch.Tensor]]]:
            each = [[(end, encode(text)) for end, text in syntax.steps_of(p, calls, prompt_syntax)] for p in texts]
            return [entries for entries in each for _ in range(num_images_per_prompt)]
        cond = per_image(prompts, encode)
        uncond = per_image(negatives or [""] * len(prompts), encode_negative) if guided else None
        call = 0  # model calls so far

        # 2. The starting noise (B, C, H/f, W/f): drawn on the CPU generator in float32, so a seed gives the same
        # image on any device, scaled to the sampler's first noise level; for img2img, added to the init image's
        # latents at the first step kept (diffusers' prepare_latents: each image's encoding draws first). An
        # inpainting UNet also gets (B, 5, h, w) more input channels: the mask and the masked image's latents.
        shape = (batch, self.vae.config.latent_channels, height // f, width // f)
        between, extra = None, None  # inpainting's blend between steps, and the inpainting UNet's extra channels
        if init is None:
            x = randn(shape, generator, "cpu") if latents is None else latents.float().cpu()
            x = x.to(self.execution_device) * sampling.init_noise_sigma
            if self.unet.config.in_channels == 9:
                extra = self._whole_image_masked(shape)
        elif mask is None:
            x0 = init.float().to(self.execution_device).repeat(batch // len(init), 1, 1, 1) if given_latents \
                else self._encode_images(init, generator, batch)
            x = x0  # SDXL's refiner (denoising_start) goes on from the base's latents as they are
            if _init.denoising_start is None:
                x = sampling.noised(x0, randn(shape, generator, "cpu").to(x0.device))
        else:
            x, between, extra = self._inpaint_start(init, mask, _init, sampling, generator, shape)

        # 3. Denoise: the sampler asks for the model's prediction at each step (see schedulers.protocol)
        unet = self.unet if self._compiled is None else self._compiled

        def denoise(x_in: torch.Tensor, t, rows: range) -> torch.Tensor:
            """The guided prediction of noise (or v) for images `rows`: (b, C, h, w) -> (b, C, h, w) float32."""
            x_in, t = x_in.to(self.dtype), torch.as_tensor(t, device=x_in.device)  # a tensor t: no recompiles
            if extra is not None:
                x_in = torch.cat([x_in, extra[rows.start:rows.stop].to(x_in)], 1)
            texts = [syntax.at_call(cond[i], call) for i in rows]
            if guided:  # the negative prompts first, then the prompts: (2b, 77 * k, D)
                texts = [syntax.at_call(uncond[i], call) for i in rows] + texts
            conditioning = self._unet_inputs(texts, guided, lambda: encode_negative(""), x_in, rows, batch)
            # a copy in float32: CUDA graphs (compile() on a GPU) overwrite their output at the next call
            if not guided:
                return unet(x_in, t, **conditioning).to(torch.float32, copy=True)
            out_uncond, out_cond = unet(torch.cat([x_in, x_in]), t, **conditioning).to(
                torch.float32, copy=True).chunk(2)
            return out_uncond + guidance_scale * (out_cond - out_uncond)

        def model(x_in: torch.Tensor, t) -> torch.Tensor:
            nonlocal call
            if not self._one_at_a_time:
                out = denoise(x_in, t, range(len(x_in)))
            else:
                out = torch.cat([denoise(x_in[i:i + 1], t, range(i, i + 1)) for i in range(len(x_in))])
            call += 1
            return out

        x = self._sample(sampling, x, model, generator, callback_on_step_end, between, stop_after)

        # 4. Decode the latents to images
        return PipelineOutput(self.output(x, output_type))

    def _unet_inputs(self, texts: list[torch.Tensor], guided: bool, empty, x: torch.Tensor, rows: range,
                     batch: int) -> dict:
        """The UNet's text conditioning for one call: `texts` (1, 77 * k_i, D) each, the negative ones first when
        `guided`, padded with the empty prompt's chunk (`empty()`) to one length. (SDXL adds its pooled text and
        sizes, which need `x`, the (b, C, h, w) latents of images `rows` of `batch`.)"""
        return {"encoder_hidden_states": torch.cat(syntax.pad_to_same_length(texts, empty))}

    @torch.no_grad()
    def output(self, latents: torch.Tensor, output_type: str = "pil"):
        """(B, 4, h, w) latents -> images as `output_type` asks: "latent" (the latents), "pt" ((B, 3, H, W) in
        [0, 1]), "np" ((B, H, W, 3)) or "pil" (a list of PIL images)."""
        if output_type == "latent":
            return latents
        image = torch.cat([self.decode(z) for z in latents.split(1)]) if self._one_at_a_time else self.decode(latents)
        if output_type == "pt":
            return image
        array = image.permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "np":
            return array
        return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]

    @torch.no_grad()
    def _encode_images(self, images: torch.Tensor, generator, batch: int, *, each_output: bool = True) -> torch.Tensor:
        """(b, 3, H, W) in [-1, 1] -> (batch, 4, H/f, W/f) scaled latents drawn from the VAE's posterior. With a
        generator per image, each image is encoded on its own with its generator: as diffusers' img2img, one copy
        per output image (`each_output`), or as its inpainting, each given image once. With one generator, the
        given images at once."""
        if batch % len(images):
            raise InputError(f"got {len(images)} init images for {batch} images; give one, or one per image")
        with self._placed(self.vae):
            images = images.to(self.execution_device, self.vae.dtype)
            if isinstance(generator, list):
                images = images.repeat(batch // len(images), 1, 1, 1) if each_output else images
                x0 = torch.cat([self.vae.encode(images[i:i + 1]).sample(generator[i]) for i in range(len(images))])
            else:
                x0 = self.vae.encode(images).sample(generator)
        return x0.repeat(batch // len(x0), 1, 1, 1).float() * self.vae.config.scaling_factor

    def _inpaint_start(self, init: torch.Tensor, mask: torch.Tensor, given: Init, sampling: Sampling, generator,
                       shape: tuple) -> tuple:
        """diffusers' inpainting start -> (latents, blend between steps or None, extra UNet channels or None).

        init (b, 3, H, W) in [-1, 1], mask (b, 1, H, W) of 0 / 1. At strength 1 the latents are pure noise. An
        inpainting UNet (9 input channels) sees the mask and the masked image's latents beside the latents; any other
        UNet's latents are, after every step, the image's own latents noised to the next step's level wherever the
        mask is 0 (Lugmayr et al. 2022, RePaint's known-region update, without resampling). The generators draw as
        diffusers': the image's encoding (not for a 9-channel UNet at strength 1), the noise, the masked image's."""
        batch, nine, pure = shape[0], self.unet.config.in_channels == 9, given.strength == 1
        x0 = None if nine and pure else self._encode_images(init, generator, batch, each_output=False)
        noise = randn(shape, generator, "cpu").to(self.execution_device)
        m = F.interpolate(mask, size=shape[-2:]).to(noise.device).repeat(batch // len(mask), 1, 1, 1)  # (B, 1, h, w)
        if x0 is not None and given.masked_content != "original":  # A1111: the hole's latents are noise, or zero
            x0 = x0 * (1 - m) + (noise * m if given.masked_content == "latent-noise" else 0)
        x = noise * sampling.init_noise_sigma if pure else sampling.noised(x0, noise)
        masked = given.masked_latents
        if masked is None:
            masked = self._encode_images(init * (mask < 0.5), generator, batch, each_output=False)
        masked = masked.float().to(x.device).repeat(batch // len(masked), 1, 1, 1)
        if nine:
            return x, None, torch.cat([m, masked], 1)

        def between(x: torch.Tensor, request) -> torch.Tensor:
            kept = x0 if request is None else noised(x0, noise, request)
            return (1 - m) * kept + m * x
        return x, between, None

    def _whole_image_masked(self, shape: tuple) -> torch.Tensor:
        """An inpainting UNet's extra channels for text to image, as A1111 gives them: the whole image masked,
        over the latents of a flat grey image (the posterior's mean). (B, 5, h, w)."""
        f = self.vae_scale_factor
        grey = torch.zeros(1, 3, shape[2] * f, shape[3] * f, device=self.execution_device, dtype=self.vae.dtype)
        with self._placed(self.vae):
            latents = self.vae.encode(grey).mode().float() * self.vae.config.scaling_factor
        ones = torch.ones(shape[0], 1, *shape[2:], device=latents.device)
        return torch.cat([ones, latents.expand(shape[0], -1, -1, -1)], 1)

    @property
    def _one_at_a_time(self) -> bool:
        """With `batch_invariant` (by default on a CPU) each image goes through the UNet and the VAE on its own
        (every text is encoded on its own anyway), so that its numbers never depend on the batch it is in (CPU
        kernels choose their blocking by the batch's size); otherwise the batch goes through at once."""
        return self.execution_device.type == "cpu" if self.batch_invariant is None else self.batch_invariant

    def _sample(self, sampling: Sampling, x: torch.Tensor, model, generator, callback_on_step_end,
                between=None, stop_after: int | None = None) -> torch.Tensor:
        """Run the sampler from `x` with a progress bar, the step callback, and interruption (also after
        `stop_after` steps, which returns the latents reached: SDXL's denoising_end)."""
        bar = tqdm(total=len(sampling.schedule), **{"disable": False, **self._progress})
        self._interrupt = False

        def on_step(i, t, latents):
            if bar.n < bar.total:  # Heun calls the model twice per step
                bar.update(1)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {"latents": latents})
            if self.interrupt or (stop_after is not None and i + 1 >= stop_after):
                raise _Interrupted(latents)

        noise = lambda like: randn(like.shape, generator, like.device)
        try:
            with self._placed(self.unet):
                return run(sampling.start(x, noise), model, sampling.prediction_type, on_step, between)
        except _Interrupted as stop:
            return stop.latents
        finally:
            bar.close()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) latents -> (B, 3, H, W) images in [0, 1]. NaN/Inf triggers one float32 re-decode."""
        z = latents / self.vae.config.scaling_factor
        with self._placed(self.vae):
            image = decode(self.vae, z.to(self.execution_device, self.vae.dtype), self._band_budget)
            if not torch.isfinite(image).all() and self.vae.dtype != torch.float32:
                dtype = self.vae.dtype
                self.vae.float()
                try:
                    image = decode(self.vae, z.float().to(self.execution_device), self._band_budget)
                finally:
                    self.vae.to(dtype)
        if not torch.isfinite(image).all():
            raise NumericalError("the VAE decoded NaN or Inf values even in float32; the latents are invalid "
                                 "(check the model weights and the guidance scale)")
        return (image.float() / 2 + 0.5).clamp(0, 1)


class StableDiffusionImg2ImgPipeline(StableDiffusionPipeline):
    """diffusers' img2img: the init image's latents, noised to the level where the last `strength` of the steps
    begin, are denoised from there (Meng et al. 2022, SDEdit). Every other argument is the text-to-image call's."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], image=None, strength: float = 0.8, **kwargs) -> PipelineOutput:
        if image is None:
            raise InputError("give an init image: pipe(prompt, image=PIL.Image.open(...), strength=0.75)")
        _check_strength(strength)
        return super().__call__(prompt, _init=Init(image, strength), **kwargs)


def _check_strength(strength) -> None:
    if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise InputError(f"strength must be from 0 to 1 (got {strength!r})")


class StableDiffusionInpaintPipeline(StableDiffusionPipeline):
    """diffusers' inpainting: `mask_image` white where the image is repainted. With an inpainting UNet (9 input
    channels: SD 1.5-inpainting, SD 2-inpainting) the UNet sees the mask and the masked image; with any other the
    kept region is put back after every step (see `_inpaint_start`). Other arguments as text to image."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], image=None, mask_image=None,
                 masked_image_latents: torch.Tensor | None = None, strength: float = 1.0,
                 masked_content: str = "original", **kwargs) -> PipelineOutput:
        """`masked_content` (sumie): "latent-noise" or "latent-nothing" start the masked region from the noise
        alone, or from zero latents, as A1111's masked-content options of those names."""
        if masked_content not in ("original", "latent-noise", "latent-nothing"):
            raise InputError(f"masked_content must be original, latent-noise or latent-nothing "
                             f"(got {masked_content!r})")
        if image is None or mask_image is None:
            raise InputError("give an image and a mask: pipe(prompt, image=..., mask_image=...), the mask white "
                             "where the image is repainted")
        _check_strength(strength)
        return super().__call__(prompt, _init=Init(image, strength, mask_image, masked_image_latents, masked_content),
                                **kwargs)
