"""Text to image: encode the prompt -> sample latents with guidance -> decode.

`StableDiffusionPipeline` mirrors diffusers' class of that name where users rely on it (same call
arguments and defaults, same numbers for the same seed) and adds `seed=`, `scheduler="dpm++2m"` and
`karras=True`. Classifier-free guidance (Ho & Salimans 2022, eq. 6) runs both branches in one batched
UNet call; prompts are encoded once per call.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import allocator, packing
from .errors import InputError, NumericalError
from .layers import Attention
from .schedulers import Sampling, randn, run
from .schedulers.adapter import FrozenConfig, Scheduler
from .weights import load_model

MAX_SIDE = 4096
MAX_IMAGES = 64


class _Interrupted(Exception):
    def __init__(self, latents: torch.Tensor):
        self.latents = latents


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
        self._offload: torch.device | None = None  # see enable_model_cpu_offload()
        self._vae_tiling: int | None = None  # band budget in elements, see enable_vae_tiling()
        self._sequential = False  # see enable_sequential_cpu_offload()
        allocator.keep_freed_memory()  # activations reuse freed memory instead of faulting pages back in

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype | None = None, variant: str | None = None,
                        device: str | torch.device = "cpu", *, revision: str | None = None, vae=None,
                        config=None, prediction_type: str | None = None, allow_pickle: bool = False,
                        **_ignored) -> "StableDiffusionPipeline":
        """Load a diffusers folder, a model id from the local Hugging Face cache, or a single-file
        checkpoint (see `weights.load_model`). The safety checker and feature extractor are not used."""
        parts = load_model(path, dtype=torch_dtype, device=device, variant=variant, revision=revision, vae=vae,
                           config=config, prediction_type=prediction_type, allow_pickle=allow_pickle)
        return cls(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
                   scheduler=Scheduler.from_folder_config(parts.scheduler_config, source=str(parts.source)),
                   source=parts.source)

    from_single_file = from_pretrained

    # -- the diffusers object surface ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def config(self) -> FrozenConfig:
        return FrozenConfig(_class_name="StableDiffusionPipeline", _name_or_path=str(self.source or ""),
                            scheduler=self.scheduler.config._class_name)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "StableDiffusionPipeline":
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for m in (self.vae, self.text_encoder, self.unet):
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

    # -- speed and memory options (each off by default; each gives the plain path's images) ----------------
    def enable_attention_slicing(self, slice_size: int | str = "auto") -> None:
        """Attend in chunks of `slice_size` queries (auto: 1024), bounding attention's peak memory."""
        size = 1024 if slice_size == "auto" else int(slice_size)
        for model in (self.unet, self.vae):
            for m in model.modules():
                if isinstance(m, Attention):
                    m.slice_size = size

    def disable_attention_slicing(self) -> None:
        self.enable_attention_slicing(0)

    def enable_vae_tiling(self, band_mib: float = 16) -> None:
        """Decode layer by layer in bands of rows (about `band_mib` MiB of float32 input each) at every
        size, with whole-image GroupNorm statistics: the same image without seams, in less memory (see
        `vae.AutoencoderKL.decode_tiled`; `decode` already does this from 512x512 pixels up)."""
        self._vae_tiling = max(1, int(band_mib * 2 ** 18))

    def disable_vae_tiling(self) -> None:
        self._vae_tiling = None

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep the networks on the CPU and move each to `device` only while it runs (for small GPUs)."""
        self._offload = torch.device(device)
        self.to("cpu")

    def enable_sequential_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep every weight on the CPU; each layer's own weights move to `device` just for its forward
        and back after it. The least device memory (one layer's weights), and the slowest."""
        self.enable_model_cpu_offload(device)
        self._sequential = True
        target = torch.device(device)

        def move(module: torch.nn.Module, to: torch.device) -> None:
            for p in module._parameters.values():
                if p is not None:
                    p.data = p.data.to(to)
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = b.to(to)

        for model in (self.text_encoder, self.unet, self.vae):
            for module in model.modules():
                if module._parameters or module._buffers:
                    module.register_forward_pre_hook(lambda m, args: move(m, target))
                    module.register_forward_hook(lambda m, args, out: move(m, torch.device("cpu")))

    def compile(self, backend: str | None = None, **options) -> "StableDiffusionPipeline":
        """The fast path. backend "pack" (the default on CPU): every network's convolutions and linear
        layers keep oneDNN-packed weights, wide 3x3 convolutions Winograd-transformed ones (see `packing`),
        ready in seconds, 1.1x the weights' size again in memory at 256², 1.6x once 512² has run. backend
        "inductor" (the default elsewhere): torch.compile the UNet, `options` passed on; on CUDA with no
        options, in mode="reduce-overhead" (CUDA graphs, about 3x eager's steps per second:
        docs/benchmarks.md); on CPU with frozen weights, which compiles for about a minute per shape and
        process."""
        backend = backend or ("pack" if self.execution_device.type == "cpu" else "inductor")
        if backend == "pack":
            if options:
                raise InputError(f"compile options {sorted(options)} are torch.compile's; they apply with "
                                 f"pipe.compile(backend='inductor')")
            if not packing.available():
                raise InputError("this torch build has no oneDNN, so weights cannot be packed; "
                                 "use pipe.compile(backend='inductor')")
            for model in (self.text_encoder, self.unet, self.vae):
                packing.pack(model)
        elif backend == "inductor":
            if self.execution_device.type == "cpu":
                import torch._inductor.config as inductor
                inductor.freezing = True  # weights become constants, which lets oneDNN pre-pack them
            elif self.execution_device.type == "cuda" and not options:
                options = {"mode": "reduce-overhead"}  # eager, a step's kernels wait on Python and launches
            self._compiled = torch.compile(self.unet, dynamic=False, **options)
        else:
            raise InputError(f"unknown compile backend {backend!r}; use 'pack' or 'inductor'")
        return self

    @contextlib.contextmanager
    def _placed(self, module: torch.nn.Module):
        """Run `module` on the offload device when offloading is on."""
        if self._offload is None or self._sequential:
            yield
            return
        module.to(self._offload)
        try:
            yield
        finally:
            module.to("cpu")

    @property
    def execution_device(self) -> torch.device:
        return self._offload or self.device

    # -- steps ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> (B, 77, D) last hidden states of the text encoder."""
        with self._placed(self.text_encoder):
            ids = self.tokenizer.encode(prompts).input_ids.to(self.execution_device)
            return self.text_encoder(ids).last_hidden_state

    def _check(self, prompts, negatives, height, width, steps, guidance, n) -> None:
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

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, height: int | None = None,
                 width: int | None = None, num_images_per_prompt: int = 1, generator=None, seed: int | None = None,
                 scheduler: str | None = None, karras: bool | None = None, output_type: str = "pil",
                 callback_on_step_end=None, latents: torch.Tensor | None = None, **_ignored) -> PipelineOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = None if negative_prompt is None else (
            [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt))
        native = self.unet.config.sample_size * self.vae_scale_factor
        height, width = native if height is None else height, native if width is None else width
        self._check(prompts, negatives, height, width, num_inference_steps, guidance_scale, num_images_per_prompt)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InputError(f"output_type must be pil, np, pt or latent (got {output_type!r})")
        sampling = Sampling.create(scheduler or self.scheduler.sampler_id, self.scheduler._raw, num_inference_steps,
                                   karras=self.scheduler.karras if karras is None else karras)
        batch = len(prompts) * num_images_per_prompt
        if seed is not None:
            generator = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
        if isinstance(generator, list) and len(generator) != batch:
            raise InputError(f"got {len(generator)} generators for a batch of {batch} images; pass one per image")

        guided = guidance_scale > 1
        cond = self.encode_prompt(prompts).repeat_interleave(num_images_per_prompt, dim=0)  # (B, 77, D)
        if guided:
            uncond = self.encode_prompt(negatives or [""] * len(prompts)).repeat_interleave(num_images_per_prompt, 0)
            context = torch.cat([uncond, cond])  # (2B, 77, D)
        else:
            context = cond

        f = self.vae_scale_factor
        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        # (B, C, H/f, W/f): drawn on the CPU generator in float32, so a seed gives the same image on any device
        x = randn(shape, generator, "cpu") if latents is None else latents.float().cpu()
        x = x.to(self.execution_device) * sampling.init_noise_sigma
        unet = self.unet if self._compiled is None else self._compiled

        def model(x_in: torch.Tensor, t) -> torch.Tensor:
            x_in, t = x_in.to(self.dtype), torch.as_tensor(t, device=x_in.device)  # a tensor t: no recompiles
            # a copy in float32: CUDA graphs (compile() on a GPU) overwrite their output at the next call
            if not guided:
                return unet(x_in, t, encoder_hidden_states=context).to(torch.float32, copy=True)
            out_uncond, out_cond = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=context).to(
                torch.float32, copy=True).chunk(2)
            return out_uncond + guidance_scale * (out_cond - out_uncond)

        bar = tqdm(total=len(sampling.schedule), **{"disable": False, **self._progress})
        self._interrupt = False

        def on_step(i, t, latents):
            if bar.n < bar.total:  # Heun calls the model twice per step
                bar.update(1)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {"latents": latents})
            if self.interrupt:
                raise _Interrupted(latents)

        noise = lambda like: randn(like.shape, generator, like.device)
        try:
            with self._placed(self.unet):
                x = run(sampling.start(x, noise), model, sampling.prediction_type, on_step)
        except _Interrupted as stop:
            x = stop.latents
        finally:
            bar.close()
        if output_type == "latent":
            return PipelineOutput(x)
        image = self.decode(x)
        if output_type == "pt":
            return PipelineOutput(image)
        array = image.permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "np":
            return PipelineOutput(array)
        from PIL import Image
        return PipelineOutput([Image.fromarray((a * 255).round().astype(np.uint8)) for a in array])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) latents -> (B, 3, H, W) images in [0, 1]. NaN/Inf triggers one float32 re-decode."""
        z = latents / self.vae.config.scaling_factor
        with self._placed(self.vae):
            decode = (lambda z: self.vae.decode_tiled(z, self._vae_tiling)) if self._vae_tiling else self.vae.decode
            image = decode(z.to(self.execution_device, self.vae.dtype))
            if not torch.isfinite(image).all() and self.vae.dtype != torch.float32:
                dtype = self.vae.dtype
                self.vae.float()
                try:
                    image = decode(z.float().to(self.execution_device))
                finally:
                    self.vae.to(dtype)
        if not torch.isfinite(image).all():
            raise NumericalError("the VAE decoded NaN or Inf values even in float32; the latents are invalid "
                                 "(check the model weights and the guidance scale)")
        return (image.float() / 2 + 0.5).clamp(0, 1)
