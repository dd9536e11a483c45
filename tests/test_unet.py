"""`unet`: the UNet equals diffusers' on small random folders, runs in low precision, and has the
reference's full-size structure."""

import pytest
import torch
from oracle import TOL, full_size_pair, max_diff, reference, shapes

from sumie.config import SD15, SD21
from sumie.weights import load_component


@pytest.mark.parametrize("hw", [(8, 8), (16, 12), (13, 9), (33, 45)])
def test_unet_noise_prediction(model_folder, hw):
    ours = load_component(model_folder, "unet")
    theirs = reference(model_folder, "unet")
    g = torch.Generator().manual_seed(hw[0])
    ctx_dim = ours.config.cross_attention_dim
    x = torch.randn(2, 4, *hw, generator=g)
    ctx = torch.randn(2, 7, ctx_dim, generator=g)
    for t in (torch.tensor(999), torch.tensor([1, 500]), 261):
        with torch.no_grad():
            a = ours(x, t, encoder_hidden_states=ctx)
            b = theirs(x, t, encoder_hidden_states=ctx).sample
        assert a.shape == b.shape == x.shape
        assert max_diff(a, b) <= TOL * max(1.0, b.abs().max().item()), t
    assert b.abs().mean() > 0.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_loads_and_runs(sd1_folder, dtype):
    unet = load_component(sd1_folder, "unet", dtype=dtype)
    assert all(p.dtype == dtype for p in unet.parameters())
    x = torch.randn(1, 4, 8, 8, dtype=dtype)
    ref32 = load_component(sd1_folder, "unet")(x.float(), 10, encoder_hidden_states=torch.ones(1, 3, 32))
    out = unet(x, 10, encoder_hidden_states=torch.ones(1, 3, 32, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref32).abs().mean() < 0.05 * ref32.abs().mean()


@pytest.mark.parametrize("preset", [SD15, SD21], ids=lambda p: p.name)
def test_full_size_structure(preset):
    """Built on the meta device from its preset, the full-size network has exactly diffusers' parameter names
    and shapes. No weights needed."""
    ours, theirs = full_size_pair("unet", preset)
    assert shapes(ours) == shapes(theirs)
    if preset is SD15:
        assert round(sum(p.numel() for p in ours.parameters()) / 1e6) == 860
