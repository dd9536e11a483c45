"""Scheduler configs: the fields of a folder's scheduler_config.json that sumie honours, checked against
the sampler they are used with.

Switching sampler keeps the model's schedule: every field of the folder's config that the new sampler
takes is kept (betas, spacing, offset, prediction type ...), the rest take the new sampler's own defaults;
this is what diffusers' `NewScheduler.from_config(folder_config)` does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..errors import ConfigError, InputError
from .registry import SAMPLERS, spec_for


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
    original_inference_steps: int = 50  # LCM's distillation grid
    timestep_scaling: float = 10.0  # LCM's boundary scalings


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
