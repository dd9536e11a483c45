"""Parity of sumie's networks with the oracles (diffusers / transformers) on small random folders."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from sumie.weights import load_component

TOL = 1e-4


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def oracles():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    return {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}


def ref(oracles, folder, name):
    return oracles[name].from_pretrained(folder, subfolder=name).eval()


def test_text_encoder_hidden_states(model_folder, oracles):
    ours = load_component(model_folder, "text_encoder")
    theirs = ref(oracles, model_folder, "text_encoder")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49406, (3, 77), generator=g)
    ids[:, 0], ids[0, 9:], ids[1, 40:], ids[2, 76] = 49406, 49407, 49407, 49407
    with torch.no_grad():
        a = ours(ids, output_hidden_states=True)
        b = theirs(ids, output_hidden_states=True)
    assert max_diff(a.last_hidden_state, b.last_hidden_state) <= TOL
    assert max_diff(a.pooler_output, b.pooler_output) <= TOL
    assert len(a.hidden_states) == len(b.hidden_states)
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert max_diff(x, y) <= TOL
    assert a.last_hidden_state.abs().mean() > 0.1  # not a degenerate comparison


def test_text_encoder_published_key_layout(sd1_folder, tmp_path):
    """transformers < 5.6 (every published SD folder) stores the keys under `text_model.`; both load."""
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(sd1_folder / "text_encoder", folder / "text_encoder")
    path = folder / "text_encoder" / "model.safetensors"
    state = load_file(path)
    save_file({"text_model." + k: v for k, v in state.items()}, path)
    a = load_component(folder, "text_encoder")
    b = load_component(sd1_folder, "text_encoder")
    ids = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 73])
    assert torch.equal(a(ids).last_hidden_state, b(ids).last_hidden_state)


@pytest.mark.parametrize("hw", [(8, 8), (16, 12), (13, 9), (65, 90)])
def test_unet_noise_prediction(model_folder, oracles, hw):
    ours = load_component(model_folder, "unet")
    theirs = ref(oracles, model_folder, "unet")
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


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_vae_encode_decode(sd1_folder, oracles, hw):
    ours = load_component(sd1_folder, "vae")
    theirs = ref(oracles, sd1_folder, "vae")
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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_loads_and_runs(sd1_folder, dtype):
    unet = load_component(sd1_folder, "unet", dtype=dtype)
    assert all(p.dtype == dtype for p in unet.parameters())
    x = torch.randn(1, 4, 8, 8, dtype=dtype)
    ref32 = load_component(sd1_folder, "unet")(x.float(), 10, encoder_hidden_states=torch.ones(1, 3, 32))
    out = unet(x, 10, encoder_hidden_states=torch.ones(1, 3, 32, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref32).abs().mean() < 0.05 * ref32.abs().mean()
