"""The diffusers scheduler interface, as a thin stateful shell over the pure samplers.

For hand-written loops:

    scheduler.set_timesteps(25)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(latents, t), t, ...)
        latents = scheduler.step(out, t, latents).prev_sample

For img2img, `set_begin_index(t_start * scheduler.order)` after set_timesteps starts the sampler at
`timesteps[t_start * order]`, from a latent `add_noise` brought to that timestep (diffusers' order of calls).

The adapter runs the sampler generator one model call at a time: `step` sends it the prediction made
from `out` and returns the sample at which the sampler next wants the model (its `prev_sample`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config import read_json
from ..errors import ConfigError, InputError
from . import BY_DIFFUSERS_CLASS, Sampling, noised, parse_config, predict, randn, spec_for
from .schedule import alphas_cumprod_for, sigma_init_noise, sigma_schedule, train_sigmas


class FrozenConfig(dict):
    """A read-only dict whose keys also read as attributes (`scheduler.config.num_train_timesteps`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class Scheduler:
    """One sampler id with diffusers' `set_timesteps` / `scale_model_input` / `step` protocol."""

    sampler_id: str = "euler"

    def __init__(self, sampler_id: str | None = None, *, karras: bool = False, **config):
        self.sampler_id = sampler_id or type(self).sampler_id
        spec_for(self.sampler_id)
        self.karras = karras
        defaults = set(config.get("_use_default_values", ()))
        raw = {k: v for k, v in config.items() if not k.startswith("_") and k not in defaults}
        parsed = parse_config(raw, self.sampler_id, karras=karras).__dict__
        # As in diffusers, fields filled by default are listed so that from_config does not pass them on.
        self.config = FrozenConfig({**parsed, **raw, "_class_name": spec_for(self.sampler_id).diffusers,
                                    "_use_default_values": [k for k in parsed if k not in raw]})
        self._raw = raw
        self.order = spec_for(self.sampler_id).order
        self.sampling: Sampling | None = None
        self.timesteps = torch.tensor([])

    @classmethod
    def from_config(cls, config, sampler_id: str | None = None, **overrides) -> "Scheduler":
        """Build from another scheduler's `.config` or a config dict, keeping its schedule fields."""
        merged = {**dict(config), **overrides}
        merged["_use_default_values"] = [k for k in config.get("_use_default_values", ()) if k not in overrides]
        return cls(sampler_id, **merged)

    @classmethod
    def from_pretrained(cls, folder: str | Path, subfolder: str | None = None, **overrides) -> "Scheduler":
        path = Path(folder) / (subfolder or "") / "scheduler_config.json"
        return cls.from_folder_config(read_json(path), source=str(path), **overrides)

    @classmethod
    def from_folder_config(cls, raw: dict, source: str = "scheduler_config.json", **overrides) -> "Scheduler":
        """From a folder's scheduler_config.json contents; the base class picks the sampler by `_class_name`."""
        sampler_id = None if cls is not Scheduler else BY_DIFFUSERS_CLASS.get(raw.get("_class_name"))
        if cls is Scheduler and sampler_id is None:
            raise ConfigError(f"{source}: scheduler class {raw.get('_class_name')!r} is not one sumie implements")
        return cls(sampler_id, **{**raw, **overrides})

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        self.sampling = Sampling.create(self.sampler_id, self._raw, num_inference_steps, karras=self.karras)
        self._whole = self.sampling  # set_begin_index cuts from this
        self.num_inference_steps = num_inference_steps
        self.timesteps, self._evals = self._visit()
        self.timesteps = self.timesteps.to(device or "cpu")
        self._sampler, self._request = None, None
        self._generator = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Sample from `timesteps[begin_index]` on, `timesteps` kept whole (diffusers' img2img: set_timesteps(n),
        then set_begin_index(t_start * scheduler.order), from a latent noised to that timestep by add_noise)."""
        self._require_timesteps()
        steps = len(self._whole.schedule)
        if begin_index % self.order or not 0 <= begin_index // self.order < steps:
            raise InputError(f"begin_index must be a multiple of {self.order} below {steps * self.order} "
                             f"(got {begin_index})")
        self.sampling = replace(self._whole, schedule=self._whole.schedule.after(begin_index // self.order))
        self._sampler, self._request = None, None

    def _visit(self) -> tuple[torch.Tensor, dict[float, object]]:
        """Dry-run the sampler on a dummy latent: every timestep the model is called at, in order (Heun and
        PLMS visit some twice), and the evaluation at each (its model-input scale and noise level, functions of the
        schedule only)."""
        dummy = torch.zeros(1)
        sampler = self.sampling.start(dummy, lambda like: torch.zeros_like(like))
        visited, evals, request = [], {}, next(sampler)
        while True:
            visited.append(float(request.timestep))
            evals.setdefault(float(request.timestep), request)
            try:
                request = sampler.send(predict(dummy, request, "epsilon"))
            except StopIteration:
                integer = self.sampling.schedule.timesteps.dtype == torch.int64
                return torch.tensor(visited, dtype=torch.int64 if integer else torch.float32), evals

    @property
    def init_noise_sigma(self) -> float:
        """The start latent's noise scale. Before set_timesteps it is diffusers' value for the full
        1000-step training schedule (the tutorial reads it then)."""
        if self.sampling is not None:
            return self.sampling.init_noise_sigma
        if spec_for(self.sampler_id).schedule is not sigma_schedule:
            return 1.0
        cfg = parse_config(self._raw, self.sampler_id, karras=self.karras)
        return sigma_init_noise(cfg, float(train_sigmas(alphas_cumprod_for(cfg)).max()))

    def _require_timesteps(self):
        if self.sampling is None:
            raise InputError("call scheduler.set_timesteps(num_inference_steps) before sampling")

    def _check_in_schedule(self, timestep) -> None:
        if float(timestep) not in self._evals:
            raise InputError(f"timestep {timestep!r} is not in this schedule; use the values of scheduler.timesteps")

    def _current(self, sample: torch.Tensor, timestep):
        self._require_timesteps()
        if self._sampler is None:
            noise = lambda like: randn(like.shape, self._generator, like.device, like.dtype)
            self._sampler = self.sampling.start(sample, noise)
            self._request = next(self._sampler)
        if self._request is None:
            raise InputError("the schedule is finished; call set_timesteps again to sample anew")
        self._check_in_schedule(timestep)
        if abs(float(timestep) - float(self._request.timestep)) > 1e-4:
            raise InputError(f"timestep {timestep!r} is out of order; expected {float(self._request.timestep):g}")
        return self._request

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """The UNet's input for `sample` (any batch size, e.g. doubled for guidance) at `timestep`."""
        self._require_timesteps()
        self._check_in_schedule(timestep)
        return sample * self._evals[float(timestep)].scale

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        self._generator = generator
        request = self._current(sample, timestep)
        p = predict(model_output.to(torch.float32), request, self.sampling.prediction_type, sample.to(torch.float32))
        try:
            self._request = self._sampler.send(p)
            prev = self._request.sample
        except StopIteration as done:
            self._request, prev = None, done.value
        prev = prev.to(model_output.dtype)
        return SchedulerOutput(prev, p.x0) if return_dict else (prev,)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x0) in the sampler's own space, as diffusers' add_noise: x0 + sigma * noise for the sigma-space
        samplers (Euler, Heun, LMS), sqrt(abar) x0 + sqrt(1 - abar) noise for the others (Ho et al. 2020, eq. 4).
        A timestep of the current schedule takes the schedule's own noise level (Karras too); any other, the
        training schedule's at that integer timestep. One timestep for the batch, or one per image."""
        steps = timesteps.reshape(-1).tolist()
        if len(set(steps)) > 1:
            return torch.cat([self.add_noise(original[i:i + 1], noise[i:i + 1], torch.tensor([t]))
                              for i, t in enumerate(steps)])
        request = self._evals.get(float(steps[0])) if self.sampling is not None else None
        if request is not None:
            return noised(original, noise, request)
        a = float(alphas_cumprod_for(parse_config(self._raw, self.sampler_id))[int(steps[0])])
        if spec_for(self.sampler_id).schedule is sigma_schedule:
            return original + ((1 - a) / a) ** 0.5 * noise
        return a ** 0.5 * original + (1 - a) ** 0.5 * noise
