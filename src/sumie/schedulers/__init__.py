"""The sampler family, by id. `Sampling` binds one sampler to a model folder's scheduler config.

    >>> s = Sampling.create("dpm++2m", folder_config, steps=20, karras=True)
    >>> latents = run(s.start(noise * s.init_noise_sigma, noise_fn), model, s.prediction_type)

Read in this order: `protocol` (how a sampler talks to the model), `schedule` (betas to sigmas), the samplers
(`euler`, `ddim`, `dpm`), `registry` (ids, names, options), `config` (a folder's fields), `adapter` (diffusers'
stateful interface).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from .config import SchedulerConfig, parse_config
from .protocol import Eval, Prediction, noised, predict, randn, run
from .registry import BY_DIFFUSERS_CLASS, IDS, SAMPLERS, describe, from_a1111, spec_for
from .schedule import Schedule, check_steps, sigma_schedule


@dataclass(frozen=True)
class Sampling:
    """One sampler bound to its config and schedule for a number of steps."""

    sampler_id: str
    config: SchedulerConfig
    schedule: Schedule

    @classmethod
    def create(cls, sampler_id: str, raw_config: dict, steps: int, *, karras: bool = False) -> "Sampling":
        cfg = parse_config(raw_config, sampler_id, karras=karras)
        check_steps(steps, cfg)
        return cls(sampler_id, cfg, spec_for(sampler_id).schedule(cfg, steps, cfg.use_karras_sigmas))

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    @property
    def init_noise_sigma(self) -> float:
        return self.schedule.init_noise_sigma

    def from_strength(self, strength: float, *, exact_plms: bool = False) -> "Sampling":
        """The last int(steps * strength) steps, as diffusers' img2img keeps them (get_timesteps).

        PLMS: diffusers cuts PNDM's timestep list [t0, t1, t1, t2, ...] (its warm-up repeats t1) at the same index,
        so from the second step on it starts one step early, loses the repeat, and then steps each latent as if it
        were one timestep further down. By default that is what runs here too (diffusers' images); `exact_plms`
        starts PLMS exactly at the kept steps instead."""
        n = len(self.schedule)
        begin = n - min(int(n * strength), n)
        if begin >= n:
            raise InputError(f"strength {strength} leaves no steps of {n}: use a strength of at least {1 / n:.3g} "
                             f"or more steps")
        if self.sampler_id != "pndm" or exact_plms or begin == 0 or n < 2:
            return dataclasses.replace(self, schedule=self.schedule.after(begin))
        s = self.schedule.after(begin - 1)  # diffusers' list from index `begin`: t[begin-1], t[begin], ...
        if begin == 1:  # ... or, cut just after t0, [t1, t1, t2, ...]
            s = dataclasses.replace(s, timesteps=torch.cat([s.timesteps[1:2], s.timesteps[1:]]),
                                    sigmas=torch.cat([s.sigmas[1:2], s.sigmas[1:]]))
        return dataclasses.replace(self, schedule=dataclasses.replace(s, repeat_warmup=False))

    def _cutoff(self, fraction: float) -> int:
        """diffusers' discrete_timestep_cutoff: the training timestep below which the last `1 - fraction` of the
        denoising lies (SDXL's ensemble of experts, Podell et al. 2023, sec. 2.5: base above it, refiner below)."""
        if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise InputError(f"denoising_start and denoising_end must be between 0 and 1 (got {fraction!r})")
        if SAMPLERS[self.sampler_id].order != 1:
            raise InputError(f"denoising_start and denoising_end need a sampler with one model call per step, "
                             f"not {self.sampler_id}")
        n = self.config.num_train_timesteps
        return int(round(n - fraction * n))

    def steps_until(self, denoising_end: float) -> int:
        """The number of steps at timesteps at or above the cutoff (diffusers' denoising_end)."""
        return int((self.schedule.timesteps >= self._cutoff(denoising_end)).sum())

    def from_denoising_start(self, denoising_start: float) -> "Sampling":
        """The steps at timesteps below the cutoff (diffusers' img2img with denoising_start)."""
        kept = int((self.schedule.timesteps < self._cutoff(denoising_start)).sum())
        if kept == 0:
            raise InputError(f"denoising_start {denoising_start} leaves no steps of {len(self.schedule)}")
        return dataclasses.replace(self, schedule=self.schedule.after(len(self.schedule) - kept))

    def noised(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A clean latent noised to the schedule's first level, in the sampler's own space (diffusers'
        scheduler.add_noise): x0 + sigma * noise, divided by sqrt(1 + sigma^2) for the VP samplers."""
        sigma = self.schedule.sigmas[0]
        x = x0 + sigma * noise
        return x if spec_for(self.sampler_id).schedule is sigma_schedule else x / (1 + sigma ** 2) ** 0.5

    def start(self, x, noise: Callable | None = None):
        """The sampler as a generator (see protocol.py), starting from latent `x` (already scaled)."""
        spec = spec_for(self.sampler_id)
        return spec.fn(x, self.schedule, noise, **spec.options(self.config))


__all__ = ["BY_DIFFUSERS_CLASS", "Eval", "IDS", "Prediction", "SAMPLERS", "Sampling", "Schedule", "SchedulerConfig",
           "describe", "from_a1111", "noised", "parse_config", "predict", "randn", "run", "spec_for"]
