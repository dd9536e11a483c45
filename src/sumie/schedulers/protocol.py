"""How samplers talk to the model: each sampler is a generator function that *yields* an `Eval`
(where it wants the denoiser evaluated) and is *sent* back a `Prediction`; it returns the final latent.

This keeps every sampler a short piece of maths with no scheduler state (k-diffusion's samplers take a
denoiser callable; a generator gives the same code to both the pipeline's loop and the diffusers-style
stateful adapter, which must hand control back to a user's loop after every model call).
"""

from __future__ import annotations

from typing import Callable, Generator, NamedTuple

import torch


class Eval(NamedTuple):
    """Ask for the model at `sample` (in the sampler's own space). The UNet sees `sample * scale` at
    `timestep`; `alpha_bar` is the signal fraction used to turn its output into x0 / eps."""

    sample: torch.Tensor
    timestep: torch.Tensor | float
    scale: torch.Tensor | float
    alpha_bar: torch.Tensor | float
    sigma: torch.Tensor | None = None  # set for sigma-space samples: x0 is then computed as diffusers does there


class Prediction(NamedTuple):
    x0: torch.Tensor  # predicted clean latent
    eps: torch.Tensor  # predicted noise
    output: torch.Tensor | None = None  # the raw model output (eps or v), for samplers that combine those


Sampler = Generator[Eval, Prediction, torch.Tensor]
Noise = Callable[[torch.Tensor], torch.Tensor]  # like -> standard normal tensor of like's shape


def at_sigma(x: torch.Tensor, sigma: torch.Tensor, t) -> Eval:
    """An Eval for a sigma-space sample x = x0 + sigma * eps (Karras et al. 2022, table 1: c_in)."""
    return Eval(x, t, 1 / (sigma ** 2 + 1) ** 0.5, 1 / (sigma ** 2 + 1), sigma)


def predict(output: torch.Tensor, request: Eval, prediction_type: str, sample: torch.Tensor | None = None) -> Prediction:
    """Raw UNet output at `request` -> (x0, eps), for x_t = sqrt(a) x0 + sqrt(1-a) eps.

    epsilon: Ho et al. 2020, eq. 15. v_prediction: v = sqrt(a) eps - sqrt(1-a) x0 (Salimans & Ho 2022, sec. 4).
    Sigma-space samples (x = x0 + sigma eps) use the equivalent sigma form, which loses no precision at
    large sigma. `sample` overrides request.sample (the adapter passes the caller's).
    """
    x = request.sample if sample is None else sample
    a, sigma = request.alpha_bar, request.sigma
    if sigma is not None:
        if prediction_type == "epsilon":
            return Prediction(x - sigma * output, output, output)
        x0 = output * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
        return Prediction(x0, (x - x0) / sigma, output)
    if prediction_type == "epsilon":
        return Prediction((x - (1 - a) ** 0.5 * output) / a ** 0.5, output, output)
    return Prediction(a ** 0.5 * x - (1 - a) ** 0.5 * output, a ** 0.5 * output + (1 - a) ** 0.5 * x, output)


def noised(x0: torch.Tensor, noise: torch.Tensor, request: Eval) -> torch.Tensor:
    """Clean latent `x0` noised to the level at which `request` evaluates the model, in the sampler's own space
    (diffusers' scheduler.add_noise): x0 + sigma * noise, or sqrt(a) x0 + sqrt(1 - a) noise in VP space."""
    if request.sigma is not None:
        return x0 + request.sigma * noise
    return request.alpha_bar ** 0.5 * x0 + (1 - request.alpha_bar) ** 0.5 * noise


def run(sampler: Sampler, model: Callable[[torch.Tensor, object], torch.Tensor], prediction_type: str,
        on_step: Callable[[int, object, torch.Tensor], None] | None = None,
        between: Callable[[torch.Tensor, Eval | None], torch.Tensor] | None = None) -> torch.Tensor:
    """Drive `sampler` to the end: model(model_input, timestep) -> raw UNet output.

    between(x, request) -> x replaces each sample the sampler moves to, before the model sees it (`request`: the
    next evaluation, None after the last step); the sampler goes on from the replacement, as diffusers' inpainting
    loop changes the latents between scheduler steps. on_step(i, timestep, latents) runs after each model call."""
    request, i = next(sampler), 0
    while True:
        prediction = predict(model(request.sample * request.scale, request.timestep), request, prediction_type)
        t = request.timestep
        try:
            request = sampler.send(prediction)
        except StopIteration as done:
            x = done.value if between is None else between(done.value, None)
            if on_step is not None:
                on_step(i, t, x)
            return x
        if between is not None:  # in place: the yielded tensor is the sampler's own latent
            request.sample.copy_(between(request.sample, request))
        if on_step is not None:
            on_step(i, t, request.sample)
        i += 1


def randn(shape, generator: torch.Generator | list | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved (diffusers' `randn_tensor`
    semantics: a list of generators draws one batch item from each)."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([randn((1, *shape[1:]), g, device, dtype) for g in generator])
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
