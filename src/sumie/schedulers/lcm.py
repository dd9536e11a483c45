"""Latent consistency models' multistep sampling: LCM, and LCM-LoRA on any SD 1/2 model.

A consistency model maps a noisy latent at any timestep straight to its clean latent (Song et al. 2023,
"Consistency Models"). Latent consistency models distil one from a latent diffusion model on a coarse grid
of the training timesteps (Luo et al. 2023, "Latent Consistency Models", sec. 4); LCM-LoRA distils the
same into a LoRA (Luo et al. 2023, "LCM-LoRA"). Sampling (Luo et al. 2023, alg. 1) alternates: predict the
clean latent with the consistency function, then noise it again to the next, lower timestep.

The consistency function keeps the boundary condition f(x, 0) = x with
    f(x, t) = c_skip(t) x + c_out(t) x0(x, t),  c_skip = s^2 / ((k t)^2 + s^2),  c_out = k t / sqrt((k t)^2 + s^2)
where s = 0.5 (sigma_data) and k = `timestep_scaling` (10), as diffusers' LCMScheduler computes it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .protocol import Eval, Noise, Sampler
from .schedule import Schedule, alphas_cumprod_for, train_sigmas

SIGMA_DATA = 0.5


def lcm_schedule(cfg, n: int, karras: bool) -> Schedule:
    """n of the distillation's `original_inference_steps` timesteps (every T // original - 1, ascending
    from T // original - 1), evenly spaced by index from the noisiest (Luo et al. 2023, sec. 4.3)."""
    if karras:
        raise InputError("karras applies to sigma-based samplers; LCM uses the timesteps it was distilled on")
    original, T = cfg.original_inference_steps, cfg.num_train_timesteps
    if n > original:
        raise InputError(f"num_inference_steps={n} is too many for LCM: at most original_inference_steps="
                         f"{original} (LCM and LCM-LoRA run best at 4-8 steps)")
    grid = (np.arange(1, original + 1) * (T // original) - 1)[::-1]  # (original,) descending
    ts = grid[np.floor(np.linspace(0, original, n, endpoint=False)).astype(np.int64)]
    ac = alphas_cumprod_for(cfg)
    sigmas = np.concatenate([train_sigmas(ac)[ts], [0.0]]).astype(np.float32)
    return Schedule(torch.from_numpy(ts.copy()), torch.from_numpy(sigmas), ac, 1.0)


def boundary_scalings(t: int, timestep_scaling: float) -> tuple[float, float]:
    """(c_skip, c_out) at timestep t (module docstring)."""
    kt = torch.tensor(t * timestep_scaling, dtype=torch.float32)
    return (SIGMA_DATA ** 2 / (kt ** 2 + SIGMA_DATA ** 2),
            kt / (kt ** 2 + SIGMA_DATA ** 2) ** 0.5)


def lcm(x: torch.Tensor, s: Schedule, noise: Noise, clip: float | None = None,
        timestep_scaling: float = 10.0) -> Sampler:
    """Multistep latent consistency sampling (Luo et al. 2023, "Latent Consistency Models", alg. 1)."""
    ts = s.timesteps.tolist()
    for i, t in enumerate(ts):
        p = yield Eval(x, t, 1.0, s.alphas_cumprod[t])
        x0 = p.x0.clamp(-clip, clip) if clip else p.x0
        c_skip, c_out = boundary_scalings(t, timestep_scaling)
        denoised = c_out * x0 + c_skip * x
        if i + 1 == len(ts):
            return denoised
        a = s.alphas_cumprod[ts[i + 1]]
        x = a ** 0.5 * denoised + (1 - a) ** 0.5 * noise(x)
    return x
