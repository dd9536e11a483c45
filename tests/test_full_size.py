"""The slow tier: the full-size SD 1.5 and SD 2.1 architectures, with random weights, give diffusers' images.

    python -m pytest -m slow

Each test writes a 3.4-3.5 GB folder through the oracles, then runs one short guided generation in each
library from the same CPU generator.
"""

import numpy as np
import pytest
import torch
from oracle import write_full_size_folder

from sumie.pipeline import StableDiffusionPipeline


@pytest.mark.slow
@pytest.mark.parametrize("version", ["sd15", "sd21"])
def test_full_size_generation_equals_diffusers(version, tmp_path):
    import diffusers
    folder = write_full_size_folder(tmp_path / version, version)
    kw = dict(prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry", num_inference_steps=3,
              height=128, width=128, guidance_scale=7.5)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    theirs.set_progress_bar_config(disable=True)
    expected = {out: theirs(**kw, output_type=out, generator=torch.Generator().manual_seed(0)).images
                for out in ("latent", "np")}
    del theirs
    ours = StableDiffusionPipeline.from_pretrained(folder)
    ours.set_progress_bar_config(disable=True)
    latents = ours(**kw, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    images = ours(**kw, output_type="np", generator=torch.Generator().manual_seed(0)).images
    scale = expected["latent"].abs().max().item()
    assert (latents - expected["latent"]).abs().max().item() <= 1e-3 * scale
    assert np.abs(images - expected["np"]).max() * 255 <= 2
    assert expected["np"].std() * 255 > 1  # not a flat image: the comparison can fail
