"""Samplers over the discrete training timesteps, in VP space (x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps):
DDIM, PLMS (PNDM without Runge-Kutta warm-up steps) and DDPM ancestral sampling.

As in diffusers, DDIM and PLMS step from t to t - T // N whatever the spacing, and the last step
lands on `final_alpha` (1, or alphas_cumprod[0] when `set_alpha_to_one` is false).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .protocol import Eval, Noise, Sampler
from .schedule import Schedule, alphas_cumprod_for, spaced, train_sigmas


def discrete_schedule(cfg, n: int, *, final_alpha: float | None) -> Schedule:
    """Integer timesteps by `cfg.timestep_spacing`, a stride of T // n, and the alpha the last step lands on."""
    ac = alphas_cumprod_for(cfg)
    ts = spaced(cfg, n).round().astype(np.int64)
    T = cfg.num_train_timesteps
    if ts.max() >= T:  # "leading" spacing plus steps_offset can step past the last training timestep
        most = next(m for m in range(n - 1, 0, -1) if spaced(cfg, m).round().max() < T)
        raise InputError(f"num_inference_steps={n} is too many for this scheduler: its first step would be "
                         f"timestep {ts.max()}, past the last trained one ({T - 1}); use at most {most} steps")
    final = ac[0] if final_alpha is None else torch.tensor(final_alpha)
    sigmas = train_sigmas(ac)[ts]
    return Schedule(torch.from_numpy(ts), torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)), ac,
                    1.0, step_ratio=T // n, final_alpha=final)


def _alpha(s: Schedule, t: int) -> torch.Tensor:
    return s.alphas_cumprod[t] if t >= 0 else s.final_alpha


def _vp(x: torch.Tensor, s: Schedule, t: int) -> Eval:
    return Eval(x, t, 1.0, s.alphas_cumprod[t])


def _transfer(x0: torch.Tensor, eps: torch.Tensor, a_to) -> torch.Tensor:
    """The deterministic DDIM update (Song et al. 2021, eq. 12 with sigma_t = 0)."""
    return a_to ** 0.5 * x0 + (1 - a_to) ** 0.5 * eps


def ddim(x: torch.Tensor, s: Schedule, noise: Noise | None = None, clip: float | None = None) -> Sampler:
    """Denoising diffusion implicit models, eta = 0 (Song et al. 2021, eq. 12)."""
    for t in s.timesteps.tolist():
        p = yield _vp(x, s, t)
        x0 = p.x0.clamp(-clip, clip) if clip else p.x0
        x = _transfer(x0, p.eps, _alpha(s, t - s.step_ratio))
    return x


def _plms_eps(history: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the last 1-4 model outputs (Liu et al. 2022, eq. 12)."""
    e = history[::-1]
    if len(e) == 1:
        return e[0]
    if len(e) == 2:
        return (3 * e[0] - e[1]) / 2
    if len(e) == 3:
        return (23 * e[0] - 16 * e[1] + 5 * e[2]) / 12
    return (55 * e[0] - 59 * e[1] + 37 * e[2] - 9 * e[3]) / 24


def plms(x: torch.Tensor, s: Schedule, noise: Noise | None = None, v_prediction: bool = False) -> Sampler:
    """Pseudo linear multistep (Liu et al. 2022, "PNDM", alg. 2 with `skip_prk_steps`): the first step
    averages the predictions at both ends (a Heun-like warm-up), later ones use up to 4 past steps.

    As diffusers does, the raw model outputs are combined, and only then turned into noise at the
    sample and timestep being stepped from (this matters for v-prediction)."""
    ts, r = s.timesteps.tolist(), s.step_ratio
    history: list[torch.Tensor] = []

    def step(x, out, t_from, t_to):
        a = s.alphas_cumprod[t_from]
        eps = a ** 0.5 * out + (1 - a) ** 0.5 * x if v_prediction else out
        return _transfer((x - (1 - a) ** 0.5 * eps) / a ** 0.5, eps, _alpha(s, t_to))

    for i, t in enumerate(ts):
        if i == 1 and not s.repeat_warmup:
            continue
        p = yield _vp(x, s, t)
        if i == 0 and len(ts) > 1:
            p2 = yield _vp(step(x, p.output, t, t - r), s, ts[1])
            history = [p.output]
            x = step(x, (p.output + p2.output) / 2, ts[1] + r, ts[1])
        else:
            history = (history + [p.output])[-4:]
            x = step(x, _plms_eps(history), t, t - r)
    return x


def ddpm(x: torch.Tensor, s: Schedule, noise: Noise, clip: float | None = None) -> Sampler:
    """Ancestral sampling from the posterior q(x_prev | x_t, x0) (Ho et al. 2020, eqs. 6-7; "fixed_small" variance)."""
    ts = s.timesteps.tolist()
    for i, t in enumerate(ts):
        a, a_prev = s.alphas_cumprod[t], (s.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0))
        p = yield _vp(x, s, t)
        x0 = p.x0.clamp(-clip, clip) if clip else p.x0
        beta = 1 - a / a_prev
        x = (a_prev ** 0.5 * beta / (1 - a)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)) * x
        if t > 0:
            x = x + torch.clamp((1 - a_prev) / (1 - a) * beta, min=1e-20) ** 0.5 * noise(x)
    return x
