"""Samplers in sigma space (x = x0 + sigma * eps): Euler, Euler ancestral, Heun, LMS.

Each is the k-diffusion formulation (Karras et al. 2022) on the schedule of `sigma_schedule`.
"""

from __future__ import annotations

import numpy as np
import torch

from .protocol import Noise, Sampler, at_sigma
from .schedule import Schedule


def euler(x: torch.Tensor, s: Schedule, noise: Noise | None = None) -> Sampler:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - x0) / sigma (Karras et al. 2022, alg. 2, no churn)."""
    for i in range(len(s)):
        sigma, nxt = s.sigmas[i], s.sigmas[i + 1]
        p = yield at_sigma(x, sigma, s.timesteps[i])
        x = x + (x - p.x0) / sigma * (nxt - sigma)
    return x


def euler_ancestral(x: torch.Tensor, s: Schedule, noise: Noise) -> Sampler:
    """Euler step to sigma_down, then fresh noise of std sigma_up (Karras et al. 2022, sec. 4 "ancestral";
    k-diffusion's get_ancestral_step with eta = 1)."""
    for i in range(len(s)):
        sigma, nxt = s.sigmas[i], s.sigmas[i + 1]
        p = yield at_sigma(x, sigma, s.timesteps[i])
        up = (nxt ** 2 * (sigma ** 2 - nxt ** 2) / sigma ** 2) ** 0.5
        down = (nxt ** 2 - up ** 2) ** 0.5
        x = x + (x - p.x0) / sigma * (down - sigma)
        x = x + noise(x) * up
    return x


def heun(x: torch.Tensor, s: Schedule, noise: Noise | None = None) -> Sampler:
    """Heun's 2nd-order method (Karras et al. 2022, alg. 1); a plain Euler step into sigma = 0."""
    for i in range(len(s)):
        sigma, nxt = s.sigmas[i], s.sigmas[i + 1]
        p = yield at_sigma(x, sigma, s.timesteps[i])
        d = (x - p.x0) / sigma
        if nxt == 0:
            x = x + d * (nxt - sigma)
            continue
        x2 = x + d * (nxt - sigma)
        p2 = yield at_sigma(x2, nxt, s.timesteps[i + 1])
        x = x + (d + (x2 - p2.x0) / nxt) / 2 * (nxt - sigma)
    return x


def lms_coefficient(sigmas: np.ndarray, i: int, j: int, order: int) -> float:
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of node sigma_{i-j}
    among the nodes sigma_i .. sigma_{i-order+1} (Adams-Bashforth in sigma; Karras et al. 2022, sec. 3)."""
    nodes = [sigmas[i - k] for k in range(order) if k != j]
    poly = np.polynomial.Polynomial.fromroots(nodes) if nodes else np.polynomial.Polynomial([1.0])
    poly = poly / np.prod([sigmas[i - j] - n for n in nodes])
    antiderivative = poly.integ()
    return float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i]))


def lms(x: torch.Tensor, s: Schedule, noise: Noise | None = None, order: int = 4) -> Sampler:
    """Linear multistep: the derivatives of the last `order` steps, weighted by integrated Lagrange polynomials.
    Started part-way (img2img), the polynomial's order counts the skipped steps too, as diffusers' does."""
    skipped = 0 if s.skipped_sigmas is None else len(s.skipped_sigmas)
    sigmas64 = (s.sigmas if not skipped else torch.cat([s.skipped_sigmas, s.sigmas])).double().numpy()
    ds = []
    for i in range(len(s)):
        sigma = s.sigmas[i]
        p = yield at_sigma(x, sigma, s.timesteps[i])
        ds = (ds + [(x - p.x0) / sigma])[-order:]
        k = min(skipped + i + 1, order)
        x = x + sum(lms_coefficient(sigmas64, skipped + i, j, k) * d for j, d in enumerate(reversed(ds)))
    return x
