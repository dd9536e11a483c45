"""`speed.bands`: the VAE in bands of rows equals the one-call VAE, for every layer kind and dtype."""

import pytest
import torch

from sumie.speed import bands


@pytest.mark.parametrize("algorithm", ["onednn", "im2col", "winograd2", "winograd4", "winograd4 batched"])
def test_packed_convolutions_in_bands_equal_the_one_call(force, algorithm):
    """After compile(), the VAE's bands run each packed 3x3 conv by its tuned algorithm on each band (no
    vertical padding: the rows carry it) and give the one-call result."""
    from sumie.speed import packing
    force(algorithm)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    x = torch.randn(1, 256, 40, 36)
    with torch.no_grad():
        plain = conv(x)
        packing.pack(conv)
        for budget in (1, 256 * 36 * 7):  # bands of one row, and of seven
            banded = bands.conv_rows(conv, lambda lo, hi: x[:, :, lo:hi], 40, (1, 1), budget)
            assert conv.__dict__["_packed"][0][0] == algorithm
            assert banded.shape == plain.shape and torch.allclose(banded, plain, atol=1e-4)


def test_vae_bands_are_exact_for_every_layer_kind(sd1_folder):
    """decode_tiled/encode_tiled with 1-row bands against decode/encode: upsampling, stride-2 downsampling
    with its one-sided padding, shortcut convs and whole-tensor GroupNorm statistics all line up."""
    from sumie.weights import load_model
    vae = load_model(sd1_folder).vae
    g = torch.Generator().manual_seed(1)
    x, z = torch.rand(1, 3, 40, 24, generator=g) * 2 - 1, torch.randn(1, 4, 7, 5, generator=g)
    with torch.no_grad():
        for a, b in ((vae.encode(x).mean, bands.encode(vae, x, budget=1).mean),
                     (vae.decode(z), bands.decode(vae, z, budget=1))):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("budget", [1, 250, 1 << 22])  # statistics one group, two groups, all groups at a time
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_silu_equals_groupnorm_then_silu(monkeypatch, budget, dtype):
    """The bands' GroupNorm + SiLU, on a band of rows, equals torch's over the whole tensor (bfloat16: to its
    rounding), however many groups its statistics take at a time."""
    from sumie.speed.bands import norm_silu
    monkeypatch.setattr(bands, "BAND_BUDGET", budget)
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 8).to(dtype)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 8, 6, 5) * torch.arange(1, 9)[:, None, None] + torch.arange(8)[:, None, None]).to(dtype)
    with torch.no_grad():
        expected = torch.nn.functional.silu(norm(x))[:, :, 2:5].float()
        got = norm_silu(norm, x)(x[:, :, 2:5]).float()
    assert torch.allclose(got, expected, atol=1e-5 if dtype == torch.float32 else 5e-2), (got - expected).abs().max()


def test_vae_bands_take_group_statistics_in_float32(sd1_folder):
    """In half precision the bands' GroupNorm statistics are float32, as in GroupNorm itself: activations
    whose variance overflows float16 (here 300^2 > 65504) still decode like the one-call path."""
    from sumie.weights import load_model
    vae = load_model(sd1_folder).vae.to(torch.bfloat16)
    z = torch.randn(1, 4, 9, 7, generator=torch.Generator().manual_seed(2)) * 300
    from sumie.speed.bands import norm_silu
    norm = torch.nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 6, 5, generator=torch.Generator().manual_seed(3)) * 300
    with torch.no_grad():
        expected = torch.nn.functional.silu(norm(x))
        half = norm_silu(norm.half(), x.half())(x.half())
        assert torch.isfinite(half).all() and torch.allclose(half.float(), expected, atol=2e-2)
        one_call = vae.decoder(vae.post_quant_conv(z.bfloat16())).float()
        banded = bands.decode(vae, z.bfloat16(), budget=1).float()
    assert (banded - one_call).abs().mean() < 0.02 * one_call.abs().mean()
