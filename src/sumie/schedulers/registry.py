"""The samplers by id: each one's function, schedule, names (A1111's, diffusers' class) and options."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from ..errors import InputError
from . import ddim as _ddim
from . import dpm as _dpm
from . import euler as _euler
from . import lcm as _lcm
from .schedule import sigma_schedule, vp_schedule


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
    options: Callable = lambda cfg: {}  # (SchedulerConfig) -> the sampler function's keyword arguments


def _clip(cfg) -> dict:
    """DDIM's and DDPM's clipping of x0 to [-range, range] (diffusers' clip_sample)."""
    return {"clip": cfg.clip_sample_range} if cfg.clip_sample else {}


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
                 karras=False, options=lambda cfg: {"v_prediction": cfg.prediction_type == "v_prediction"}),
    "ddim": Spec(_ddim.ddim, _discrete, "DDIM", "DDIMScheduler",
                 "denoising diffusion implicit models, deterministic (Song et al. 2021)",
                 ("set_alpha_to_one", "clip_sample", "clip_sample_range", "thresholding", "rescale_betas_zero_snr"),
                 dict(timestep_spacing="leading", clip_sample=True), karras=False, options=_clip),
    "ddpm": Spec(_ddim.ddpm, _discrete, "DDPM", "DDPMScheduler",
                 "ancestral sampling of the trained Markov chain, stochastic (Ho et al. 2020)",
                 ("clip_sample", "clip_sample_range", "variance_type", "thresholding", "rescale_betas_zero_snr"),
                 dict(timestep_spacing="leading", clip_sample=True), karras=False, stochastic=True, options=_clip),
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
                  tuple(f for f in _DPM_FIELDS if f != "algorithm_type") + ("predict_x0", "disable_corrector"),
                  options=lambda cfg: {"bh": cfg.solver_type}),
    "lcm": Spec(_lcm.lcm, _lcm.lcm_schedule, "LCM", "LCMScheduler",
                "latent consistency sampling, for LCM models and LCM-LoRA at 4-8 steps (Luo et al. 2023)",
                ("original_inference_steps", "timestep_scaling", "clip_sample", "clip_sample_range",
                 "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr"),
                dict(timestep_spacing="leading"), karras=False, stochastic=True,
                options=lambda cfg: {**_clip(cfg), "timestep_scaling": cfg.timestep_scaling}),
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
