"""`vae`: the autoencoder equals diffusers' on small random folders and has the reference's full-size structure."""

import pytest
import torch
from oracle import TOL, full_size_pair, max_diff, reference, shapes

from sumie.config import SD15, SD21
from sumie.weights import load_component


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_vae_encode_decode(sd1_folder, hw):
    ours = load_component(sd1_folder, "vae")
    theirs = reference(sd1_folder, "vae")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, *hw, generator=g) * 2 - 1
    with torch.no_grad():
        post_a, post_b = ours.encode(x), theirs.encode(x).latent_dist
        assert max_diff(post_a.mean, post_b.mean) <= TOL
        assert max_diff(post_a.std, post_b.std) <= TOL
        za = post_a.sample(torch.Generator().manual_seed(5))
        zb = post_b.sample(torch.Generator().manual_seed(5))
        assert max_diff(za, zb) <= TOL
        z = torch.randn(2, 4, hw[0] // 2, hw[1] // 2, generator=g)
        a, b = ours.decode(z), theirs.decode(z).sample
    assert a.shape == b.shape == (2, 3, *hw)
    assert max_diff(a, b) <= TOL * max(1.0, b.abs().max().item())
    assert ours.config.scaling_factor == theirs.config.scaling_factor


@pytest.mark.parametrize("preset", [SD15, SD21], ids=lambda p: p.name)
def test_full_size_structure(preset):
    """Built on the meta device from its preset, the full-size network has exactly diffusers' parameter names
    and shapes. No weights needed."""
    ours, theirs = full_size_pair("vae", preset)
    assert shapes(ours) == shapes(theirs)
    if preset is SD15:
        assert round(sum(p.numel() for p in ours.parameters()) / 1e6) == 84
