"""`pipe.compile()`: weights packed for the CPU (`packing`), or torch.compile of the UNet."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from . import packing


def compile_networks(models: list[nn.Module], unet: nn.Module, device: torch.device, backend: str | None = None,
                     **options):
    """Apply backend "pack" (the default on CPU) to every network of `models`, in place, and return None;
    or with "inductor" (the default elsewhere), return torch.compile(unet) with `options` passed on: on CUDA
    with no options, in mode="reduce-overhead" (CUDA graphs); on CPU with frozen weights (constants, which
    lets oneDNN pre-pack them), which compiles once per shape and process (its cost: docs/benchmarks.md)."""
    backend = backend or ("pack" if device.type == "cpu" else "inductor")
    if backend == "pack":
        if options:
            raise InputError(f"compile options {sorted(options)} are torch.compile's; they apply with "
                             f"pipe.compile(backend='inductor')")
        if not packing.available():
            raise InputError("this torch build has no oneDNN, so weights cannot be packed; "
                             "use pipe.compile(backend='inductor')")
        for model in models:
            packing.pack(model)
        return None
    if backend == "inductor":
        if device.type == "cpu" and not {"mode", "options"} & set(options):
            options = {**options, "options": {"freezing": True}}  # inductor's config, for this compile only
        elif device.type == "cuda" and not options:
            options = {"mode": "reduce-overhead"}  # eager, a step's kernels wait on Python and launches
        return torch.compile(unet, dynamic=False, **options)
    raise InputError(f"unknown compile backend {backend!r}; use 'pack' or 'inductor'")
