"""`speed.packing`: packed weights follow edits, serve every row count, and take Winograd where it is faster."""

import torch


def test_packed_weights_follow_edits_and_step_aside_for_training():
    from sumie.speed import packing
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Flatten(2), torch.nn.Linear(36, 5))
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        plain = model(x)
        packing.pack(model)
        assert torch.allclose(model(x), plain, atol=1e-5) and "_packed" in model[0].__dict__
        model[0].weight.mul_(2)  # an in-place edit: the packed copy is remade
        model[2].weight.zero_()
        assert torch.allclose(model(x), model[2].bias.expand(2, 16, 5), atol=1e-6)
        packing.unpack(model)
        assert "_packed" not in model[0].__dict__
    packing.pack(model)
    model(x).sum().backward()  # with gradients the ordinary forward runs, so training still works
    assert model[0].weight.grad is not None


def test_a_packed_linear_weight_serves_every_row_count():
    """One packed copy per Linear, made once: other row counts (another image size) reuse it."""
    from sumie.speed import packing
    torch.manual_seed(0)
    linear = packing.pack(torch.nn.Linear(64, 48))
    with torch.no_grad():
        for rows in (2, 77, 1024):
            x = torch.randn(rows, 64)
            assert torch.allclose(linear(x), torch.nn.functional.linear(x, linear.weight, linear.bias), atol=1e-5)
            if rows == 2:
                first = linear.__dict__["_packed"][1]
            assert linear.__dict__["_packed"][1] is first


def test_packed_convolutions_take_winograd_where_it_is_faster():
    """Winograd's transformed weight at 8x8 and up from 256 channels (F(4x4, 3x3) from 32x32, there from 128
    channels), nothing kept where im2col pays, else oneDNN's packing."""
    from sumie.speed import packing
    torch.manual_seed(0)
    wide, narrow = torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.Conv2d(192, 192, 3, padding=1)
    wider = torch.nn.Conv2d(512, 512, 3, padding=1)  # 512 * 512 >= 6400 * 16: im2col at 4x4, batch 1
    with torch.no_grad():
        for conv, batch, size, kind in ((wide, 2, 8, ("winograd", 2)), (wide, 1, 16, ("winograd", 2)),
                                        (wide, 1, 32, ("winograd", 4)), (wide, 2, 4, (2, 256, 4, 4)),
                                        (narrow, 2, 8, (2, 192, 8, 8)), (narrow, 1, 32, ("winograd", 4)),
                                        (wider, 1, 4, None)):
            x = torch.randn(batch, conv.in_channels, size, size)
            plain = conv(x)
            packing.pack(conv)
            assert torch.allclose(conv(x), plain, atol=1e-4 if kind == ("winograd", 4) else 1e-5)
            assert (conv.__dict__["_packed"][0][2] if kind else conv.__dict__.get("_packed")) == kind
            conv.weight[0].zero_()  # an in-place edit: the transformed copy is remade
            assert conv(x)[:, 0].sub(conv.bias[0]).abs().max() < 1e-6
            packing.unpack(conv)
