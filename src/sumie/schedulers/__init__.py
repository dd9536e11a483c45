"""The sampler family, by id. `Sampling` binds one sampler to a model folder's scheduler config.

    >>> s = Sampling.create("dpm++2m", folder_config, steps=20, karras=True)
    >>> latents = run(s.start(noise * s.init_noise_sigma, noise_fn), model, s.prediction_type)

Switching sampler keeps the model's schedule: every field of the folder's `scheduler_config.json`
that the new sampler takes is kept (betas, spacing, offset, prediction type ...), the rest take the new
sampler's own defaults; this is what diffusers' `NewScheduler.from_config(folder_config)` does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from ..errors import ConfigError, InputError
from . import ddim as _ddim
from . import dpm as _dpm
from . import euler as _euler
from .protocol import Eval, Prediction, predict, randn, run
from .schedule import Schedule, check_steps, sigma_schedule, vp_schedule


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """The scheduler fields sumie honours (diffusers' names); defaults are diffusers' per-class defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    skip_prk_steps: bool = True
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    use_karras_sigmas: bool = False
    solver_type: str = "bh2"


COMMON = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
          "timestep_spacing", "steps_offset")
# Fields a diffusers class takes that sumie implements at one value only.
FIXED = {
    "rescale_betas_zero_snr": (False,), "thresholding": (False,), "interpolation_type": ("linear",),
    "timestep_type": ("discrete",), "final_sigmas_type": ("zero",), "variance_type": (None, "fixed_small"),
    "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,), "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,), "euler_at_final": (False,), "lower_order_final": (True,), "solver_order": (2,),
    "predict_x0": (True,), "lambda_min_clipped": (-math.inf,), "skip_prk_steps": (True,), "sigma_min": (None,),
    "sigma_max": (None,), "use_dynamic_shifting": (False,), "disable_corrector": ([],), "solver_p": (None,),
}


@dataclass(frozen=True)
class Spec:
    """One sampler: its maths, schedule, names, and the config fields its diffusers class takes."""

    fn: Callable
    schedule: Callable  # (config, steps, karras) -> Schedule
    a1111: str
    diffusers: str
    summary: str
    fields: tuple = ()  # beyond COMMON
    defaults: dict = field(default_factory=dict)
    karras: bool = True
    stochastic: bool = False
    order: int = 1  # diffusers' `scheduler.order`


def _discrete(cfg, n, karras):
    if karras:
        raise InputError("karras applies to sigma-based samplers; DDIM, PLMS and DDPM use the training timesteps")
    return _ddim.discrete_schedule(cfg, n, final_alpha=1.0 if cfg.set_alpha_to_one else None)


def _vp(round_karras):
    return lambda cfg, n, karras: vp_schedule(cfg, n, karras, round_karras=round_karras or
                                              cfg.beta_schedule != "squaredcos_cap_v2")


_DPM_FIELDS = ("use_karras_sigmas", "solver_order", "algorithm_type", "solver_type", "lower_order_final",
               "euler_at_final", "final_sigmas_type", "lambda_min_clipped", "thresholding", "use_lu_lambdas",
               "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas", "variance_type",
               "rescale_betas_zero_snr", "use_dynamic_shifting")
_SIGMA_FIELDS = ("use_karras_sigmas", "interpolation_type", "timestep_type", "final_sigmas_type",
                 "rescale_betas_zero_snr", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min", "sigma_max")

SAMPLERS: dict[str, Spec] = {
    "pndm": Spec(_ddim.plms, _discrete, "PLMS", "PNDMScheduler",
                 "pseudo linear multistep (PLMS), the SD 1.x default (Liu et al. 2022)",
                 ("set_alpha_to_one", "skip_prk_steps"), dict(timestep_spacing="leading", set_alpha_to_one=False),
                 karras=False),
    "ddim": Spec(_ddim.ddim, _discrete, "DDIM", "DDIMScheduler",
                 "denoising diffusion implicit models, deterministic (Song et al. 2021)",
                 ("set_alpha_to_one", "clip_sample", "clip_sample_range", "thresholding", "rescale_betas_zero_snr"),
                 dict(timestep_spacing="leading", clip_sample=True), karras=False),
    "ddpm": Spec(_ddim.ddpm, _discrete, "DDPM", "DDPMScheduler",
                 "ancestral sampling of the trained Markov chain, stochastic (Ho et al. 2020)",
                 ("clip_sample", "clip_sample_range", "variance_type", "thresholding", "rescale_betas_zero_snr"),
                 dict(timestep_spacing="leading", clip_sample=True), karras=False, stochastic=True),
    "lms": Spec(_euler.lms, sigma_schedule, "LMS", "LMSDiscreteScheduler",
                "4th-order linear multistep in sigma (Karras et al. 2022)", _SIGMA_FIELDS),
    "euler": Spec(_euler.euler, sigma_schedule, "Euler", "EulerDiscreteScheduler",
                  "Euler on the probability-flow ODE (Karras et al. 2022, alg. 2)", _SIGMA_FIELDS),
    "euler-a": Spec(_euler.euler_ancestral, sigma_schedule, "Euler a", "EulerAncestralDiscreteScheduler",
                    "Euler with ancestral noise, stochastic (k-diffusion)", ("rescale_betas_zero_snr",),
                    stochastic=True),
    "heun": Spec(_euler.heun, sigma_schedule, "Heun", "HeunDiscreteScheduler",
                 "Heun's 2nd-order method, two model calls per step (Karras et al. 2022, alg. 1)",
                 _SIGMA_FIELDS, order=2),
    "dpm++2m": Spec(_dpm.dpmpp_2m, _vp(False), "DPM++ 2M", "DPMSolverMultistepScheduler",
                    "DPM-Solver++(2M), fast 2nd-order multistep (Lu et al. 2022)", _DPM_FIELDS),
    "dpm++2m-sde": Spec(partial(_dpm.dpmpp_2m, sde=True), _vp(False), "DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                        "SDE-DPM-Solver++(2M), stochastic (Lu et al. 2022)", _DPM_FIELDS,
                        stochastic=True),
    "unipc": Spec(_dpm.unipc, _vp(True), "UniPC", "UniPCMultistepScheduler",
                  "UniPC-2 predictor-corrector, bh2 (Zhao et al. 2023)",
                  tuple(f for f in _DPM_FIELDS if f != "algorithm_type") + ("predict_x0", "disable_corrector")),
}
IDS = tuple(SAMPLERS)
BY_DIFFUSERS_CLASS = {spec.diffusers: i for i, spec in SAMPLERS.items() if i != "dpm++2m-sde"}


def spec_for(sampler_id: str) -> Spec:
    if sampler_id not in SAMPLERS:
        raise InputError(f"unknown scheduler {sampler_id!r}; choose one of: {', '.join(IDS)}")
    return SAMPLERS[sampler_id]


def describe() -> list[tuple[str, str]]:
    """(id, one-line description) for every sampler."""
    return [(i, f"{s.summary} [A1111: {s.a1111}]") for i, s in SAMPLERS.items()]


def from_a1111(name: str) -> tuple[str, bool]:
    """An AUTOMATIC1111 sampler name ("Euler a", or the old combined "DPM++ 2M Karras") -> (id, karras)."""
    karras = name.endswith(" Karras")
    base = name[: -len(" Karras")] if karras else name
    for sampler_id, spec in SAMPLERS.items():
        if spec.a1111.lower() == base.strip().lower():
            return sampler_id, karras
    raise InputError(f"unknown sampler {name!r}; choose one of: {', '.join(s.a1111 for s in SAMPLERS.values())}")


def parse_config(raw: dict, sampler_id: str, *, karras: bool = False) -> SchedulerConfig:
    """The config `sampler_id` runs with, given a folder's scheduler_config.json (see module docstring)."""
    spec = spec_for(sampler_id)
    values = {**spec.defaults}
    for key, value in raw.items():
        if key not in COMMON + spec.fields:
            continue
        if (key in FIXED and value not in FIXED[key]) or (key == "solver_type" and value == "heun"):
            raise ConfigError(f"scheduler_config: {key}={value!r} is not supported with {sampler_id} "
                              f"(supported: {' or '.join(map(repr, FIXED.get(key, ('midpoint',))))})")
        if key in {f.name for f in dataclasses.fields(SchedulerConfig)}:
            values[key] = tuple(value) if isinstance(value, list) else value
    if sampler_id == "unipc":
        values["solver_type"] = values.get("solver_type") if values.get("solver_type") in ("bh1", "bh2") else "bh2"
    if karras:
        if not spec.karras:
            raise InputError(f"karras sigmas do not apply to {sampler_id}; use them with "
                             f"{', '.join(i for i, s in SAMPLERS.items() if s.karras)}")
        values["use_karras_sigmas"] = True
    cfg = SchedulerConfig(**values)
    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"scheduler_config: prediction_type={cfg.prediction_type!r} is not supported "
                          f"(epsilon or v_prediction)")
    return cfg


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

    def start(self, x, noise: Callable | None = None):
        """The sampler as a generator (see protocol.py), starting from latent `x` (already scaled)."""
        spec = spec_for(self.sampler_id)
        kwargs = {}
        if self.sampler_id in ("ddim", "ddpm") and self.config.clip_sample:
            kwargs["clip"] = self.config.clip_sample_range
        if self.sampler_id == "unipc":
            kwargs["bh"] = self.config.solver_type
        if self.sampler_id == "pndm":
            kwargs["v_prediction"] = self.prediction_type == "v_prediction"
        return spec.fn(x, self.schedule, noise, **kwargs)


__all__ = ["Eval", "IDS", "Prediction", "SAMPLERS", "Sampling", "Schedule", "SchedulerConfig", "describe", "from_a1111",
           "parse_config", "predict", "randn", "run", "spec_for"]
