"""Exponential-integrator samplers in VP space, stepping in lambda = log(alpha / sigma):
DPM-Solver++(2M) (Lu et al. 2022, alg. 2), its SDE variant, and UniPC (Zhao et al. 2023)."""

from __future__ import annotations

import torch

from .protocol import Eval, Noise, Sampler
from .schedule import Schedule


def _vp(sigma: torch.Tensor):
    """k-diffusion sigma -> (alpha_t, sigma_t) of the VP process, and lambda_t = log(alpha_t / sigma_t)."""
    alpha = 1 / (sigma ** 2 + 1) ** 0.5
    return alpha, sigma * alpha, torch.log(alpha) - torch.log(sigma * alpha)


def _eval(x: torch.Tensor, s: Schedule, i: int) -> Eval:
    return Eval(x, s.timesteps[i], 1.0, 1 / (s.sigmas[i] ** 2 + 1))


def dpmpp_2m(x: torch.Tensor, s: Schedule, noise: Noise | None = None, sde: bool = False) -> Sampler:
    """DPM-Solver++(2M) (Lu et al. 2022, alg. 2, midpoint form); `sde=True` gives SDE-DPM-Solver++(2M)
    (ibid., appendix; noise drawn at every step). First order on the first and the last step."""
    prev_x0, prev_lambda = None, None
    for i in range(len(s)):
        p = yield _eval(x, s, i)
        z = noise(x) if sde else None
        a_t, s_t, l_t = _vp(s.sigmas[i + 1])
        _, s_s, l_s = _vp(s.sigmas[i])
        h = l_t - l_s
        d = p.x0
        if prev_x0 is not None and i < len(s) - 1:
            d = p.x0 + 0.5 * (p.x0 - prev_x0) / ((l_s - prev_lambda) / h)
        if sde:
            x = s_t / s_s * torch.exp(-h) * x + a_t * (1 - torch.exp(-2.0 * h)) * d \
                + s_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * z
        else:
            x = s_t / s_s * x - a_t * (torch.exp(-h) - 1.0) * d
        prev_x0, prev_lambda = p.x0, l_s
    return x


def _bh_coefficients(h: torch.Tensor, order: int, bh: str):
    """UniPC's B(h) and the right-hand side b_k = phi_k(h) k! / B(h) (Zhao et al. 2023, eq. 7 and thm. 3.1)."""
    hh = -h
    phi_1 = torch.expm1(hh)
    b_h = hh if bh == "bh1" else phi_1
    phi_k, fact, b = phi_1 / hh - 1, 1, []
    for k in range(1, order + 1):
        b.append(phi_k * fact / b_h)
        fact *= k + 1
        phi_k = phi_k / hh - 1 / fact
    return b_h, phi_1, b


def unipc(x: torch.Tensor, s: Schedule, noise: Noise | None = None, bh: str = "bh2") -> Sampler:
    """UniPC-2 with data prediction (Zhao et al. 2023, alg. 1 + 2): a UniP predictor after every model
    call, and a UniC corrector that reuses that call to refine the previous step. First order at the end."""
    n = len(s)
    lam = [_vp(sig)[2] for sig in s.sigmas]
    m: list[torch.Tensor] = []  # x0 predictions, newest last
    last_x, last_order = None, 1
    for i in range(n):
        p = yield _eval(x, s, i)
        if i > 0:  # UniC: redo step i-1 -> i with the new prediction p.x0
            a_t, _, _ = _vp(s.sigmas[i])
            h = lam[i] - lam[i - 1]
            b_h, phi_1, b = _bh_coefficients(h, last_order, bh)
            x = _vp(s.sigmas[i])[1] / _vp(s.sigmas[i - 1])[1] * last_x - a_t * phi_1 * m[-1]
            if last_order == 1:
                x = x - a_t * b_h * 0.5 * (p.x0 - m[-1])
            else:
                r = (lam[i - 2] - lam[i - 1]) / h
                det = 1 - r  # solve [[1, 1], [r, 1]] rho = b
                rho0, rho1 = (b[0] - b[1]) / det, (b[1] - r * b[0]) / det
                x = x - a_t * b_h * (rho0 * (m[-2] - m[-1]) / r + rho1 * (p.x0 - m[-1]))
        m = (m + [p.x0])[-2:]
        order = min(2, n - i, i + 1)
        last_x, last_order = x, order
        a_t, s_t, _ = _vp(s.sigmas[i + 1])
        h = lam[i + 1] - lam[i]
        b_h, phi_1, _ = _bh_coefficients(h, order, bh)
        x = s_t / _vp(s.sigmas[i])[1] * x - a_t * phi_1 * m[-1]
        if order == 2:  # UniP-2: rho = 1/2
            r = (lam[i - 1] - lam[i]) / h
            x = x - a_t * b_h * 0.5 * (m[-2] - m[-1]) / r
    return x
