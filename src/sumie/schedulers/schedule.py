"""Noise schedules: betas -> alphas_cumprod -> the timesteps and sigmas a sampler visits.

Conventions (k-diffusion / Karras et al. 2022): a latent at noise level sigma is x = x0 + sigma * eps,
with sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]). "VP" samplers (DDIM, PLMS, DDPM,
DPM-Solver, UniPC) keep x_vp = x / sqrt(1 + sigma^2) instead, as the UNet sees it.

The spacing rules and float32 rounding points follow diffusers' schedulers, so that each sampler
visits exactly the timesteps diffusers visits for the same config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, InputError


def betas_for(cfg) -> torch.Tensor:
    """(T,) float32 betas from a scheduler config (Ho et al. 2020 sec. 4; Nichol & Dhariwal 2021 eq. 17)."""
    T = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        return torch.tensor(cfg.trained_betas, dtype=torch.float32)
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float32)
    if cfg.beta_schedule == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        return torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, T, dtype=torch.float32) ** 2
    if cfg.beta_schedule == "squaredcos_cap_v2":  # cosine schedule, betas capped at 0.999
        abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float32)
    raise ConfigError(f"scheduler: beta_schedule={cfg.beta_schedule!r} is not supported "
                      f"(linear, scaled_linear or squaredcos_cap_v2)")


def alphas_cumprod_for(cfg) -> torch.Tensor:
    return torch.cumprod(1.0 - betas_for(cfg), dim=0)


def train_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """(T,) float32 sigma of every training timestep, ascending in t."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


def check_steps(n: int, cfg) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= cfg.num_train_timesteps:
        raise InputError(f"num_inference_steps must be an integer from 1 to {cfg.num_train_timesteps} (got {n!r})")


def spaced(cfg, n: int, *, extra: int = 0) -> np.ndarray:
    """`n` descending float timesteps by `cfg.timestep_spacing` (Lin et al. 2024, table 2).

    `extra=1` spaces n+1 points and drops the last (DPM-Solver / UniPC's convention)."""
    T, spacing = cfg.num_train_timesteps, cfg.timestep_spacing
    if spacing == "linspace":
        return np.linspace(0, T - 1, n + extra)[::-1][: n].copy()
    if spacing == "leading":
        return (np.arange(0, n + extra) * (T // (n + extra))).round()[::-1][: n] + cfg.steps_offset
    if spacing == "trailing":
        return np.arange(T, 0, -T / n).round() - 1
    raise ConfigError(f"scheduler: timestep_spacing={spacing!r} is not supported (leading, trailing or linspace)")


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: n sigmas evenly spaced in sigma^(1/rho), from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def sigma_to_t(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timesteps whose log-sigma, interpolated linearly between training steps, equals log(sigma)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_train_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_train_sigmas) - 2)
    lo, hi = log_train_sigmas[low], log_train_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


@dataclass(frozen=True)
class Schedule:
    """What one sampling run visits.

    timesteps: (N,) the UNet's timestep at each step (what diffusers calls `scheduler.timesteps`,
        without Heun's / PLMS's repeated entries). sigmas: (N+1,) float32 noise levels, the last the
        final one (0, or sigma_min for DDIM-style "final alpha"). init_noise_sigma: the factor on unit
        noise for the starting latent, in the sampler's own space. step_ratio and final_alpha: the
        discrete samplers' (DDIM, PLMS) stride in training timesteps, and the alpha their last step lands on.
        skipped_sigmas: the levels before the first step, when img2img starts part-way (`after`).
        repeat_warmup: PLMS evaluates its second timestep again after its warm-up step (False: as diffusers'
        img2img, whose cut of PNDM's timestep list drops that repeat; see `Sampling.from_strength`).
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    alphas_cumprod: torch.Tensor
    init_noise_sigma: float
    step_ratio: int | None = None
    final_alpha: torch.Tensor | None = None
    skipped_sigmas: torch.Tensor | None = None
    repeat_warmup: bool = True

    def __len__(self) -> int:
        return len(self.timesteps)

    def after(self, k: int) -> "Schedule":
        """The schedule from step k on (img2img's start part-way down, diffusers' set_begin_index)."""
        return dataclasses.replace(self, timesteps=self.timesteps[k:], sigmas=self.sigmas[k:],
                                   skipped_sigmas=self.sigmas[:k])


def sigma_schedule(cfg, n: int, karras: bool) -> Schedule:
    """The schedule of the sigma-space samplers (Euler, Euler a, Heun, LMS)."""
    ac = alphas_cumprod_for(cfg)
    ts = spaced(cfg, n).astype(np.float32)
    all_sigmas = train_sigmas(ac)
    sigmas = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    if karras:
        sigmas = karras_sigmas(sigmas[0].item(), sigmas[-1].item(), n)
        ts = sigma_to_t(sigmas, np.log(all_sigmas))
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return Schedule(torch.from_numpy(ts.astype(np.float32)), torch.from_numpy(sigmas), ac,
                    sigma_init_noise(cfg, float(sigmas.max())))


def sigma_init_noise(cfg, top_sigma: float) -> float:
    """The start latent's noise scale for the sigma-space samplers, as diffusers' Euler-family schedulers
    set it: the top sigma, or for "leading" spacing sqrt(sigma^2 + 1)."""
    return top_sigma if cfg.timestep_spacing in ("linspace", "trailing") else (top_sigma ** 2 + 1) ** 0.5


def vp_schedule(cfg, n: int, karras: bool, *, extra: int = 1, round_karras: bool = True) -> Schedule:
    """The schedule of DPM-Solver / UniPC: integer timesteps, sigmas ending at 0, unit initial noise."""
    ac = alphas_cumprod_for(cfg)
    all_sigmas = train_sigmas(ac)
    ts = spaced(cfg, n, extra=extra).round().astype(np.int64)
    if karras:
        sigmas = karras_sigmas(all_sigmas[-1].item(), all_sigmas[0].item(), n)
        ts = sigma_to_t(sigmas, np.log(all_sigmas))
        ts = ts.round() if round_karras else ts
    else:
        sigmas = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return Schedule(torch.from_numpy(np.asarray(ts).astype(np.int64)), torch.from_numpy(sigmas), ac, 1.0)
