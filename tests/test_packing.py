"""`speed.packing`: packed weights follow edits, serve every row count, and take the algorithm tuned for each shape."""

import pytest
import torch

from sumie.speed.kernels import onednn_bfloat16


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


def test_packed_weights_follow_lora_switching():
    """LoRAs replace a layer's weight by a new tensor and free the one before (`lora.LoRAs.apply`: the
    originals back, then original + multiplier x delta). The allocator may place a new weight where a freed
    one was, at the same address and version: it must not run on the copy packed from the old weight."""
    from sumie.speed import packing
    from sumie.speed.allocator import keep_freed_memory
    keep_freed_memory()  # as a pipeline does: freed blocks are reused, which is when addresses repeat
    torch.manual_seed(0)
    layers = [packing.pack(torch.nn.Linear(256, 256)) for _ in range(6)]
    originals = [layer.weight.data for layer in layers]
    deltas = [torch.randn(256, 4) @ torch.randn(4, 256) for _ in layers]
    x = torch.randn(4, 256)
    with torch.no_grad():
        for i in range(60):
            for layer, original in zip(layers, originals):
                layer.weight.data = original
            for layer, original, delta in zip(layers, originals, deltas):
                layer.weight.data = original + (0.25, 0.5, 1.0)[i % 3] * delta
            for layer in layers:
                assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-3)


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


@pytest.mark.parametrize("algorithm", ["onednn", "im2col", "winograd2", "winograd4", "winograd2 batched",
                                       "winograd4 batched", "winograd4 per call"])
def test_each_packed_algorithm_keeps_its_weight_and_equals_the_plain_one(force, algorithm):
    """A packed 3x3 convolution runs by the algorithm tuning chose and keeps only that one's weight (none
    for im2col and F(4x4, 3x3) per call), remade after an in-place edit; 1x1 convolutions keep oneDNN's
    packing."""
    from sumie.speed import packing
    force(algorithm)
    torch.manual_seed(0)
    conv, pointwise = torch.nn.Conv2d(192, 256, 3, padding=1), torch.nn.Conv2d(256, 64, 1)
    with torch.no_grad():
        for batch, size in ((2, 8), (1, 33)):
            x = torch.randn(batch, conv.in_channels, size, size)
            plain = pointwise(conv(x))
            packing.pack(conv), packing.pack(pointwise)
            assert torch.allclose(pointwise(conv(x)), plain, atol=1e-4 if algorithm.startswith("winograd4") else 1e-5)
            assert conv.__dict__["_packed"][0][0] == algorithm and pointwise.__dict__["_packed"][0][0] == "onednn"
            conv.weight[0].zero_()  # an in-place edit: the kept copy is remade
            assert conv(x)[:, 0].sub(conv.bias[0]).abs().max() < 1e-6
            packing.unpack(conv), packing.unpack(pointwise)


def _resident_pages(t: torch.Tensor) -> int:
    """How many whole pages inside t's memory are resident in this process (pagemap's present bit)."""
    from sumie.speed import pages
    start = -(-t.data_ptr() // pages.PAGE) * pages.PAGE
    entries = pages._entries(start, (t.data_ptr() + t.nbytes - start) // pages.PAGE)
    return int(((entries & pages.np.uint64(pages.PRESENT)) != 0).sum())


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="pagemap is Linux's")
def test_packing_gives_back_a_mapped_weights_pages_but_never_a_written_one(tmp_path):
    """Once a packed copy is made, the memory-mapped original's pages leave the process and come back from
    the file when read; a weight written in place since loading keeps its pages, so the write is not lost."""
    from safetensors.torch import save_file

    from sumie.speed import packing
    from sumie.weights.files import read_safetensors
    torch.manual_seed(0)
    save_file({"a": torch.randn(256, 1024), "b": torch.randn(256, 1024)}, tmp_path / "w.safetensors")
    weights = read_safetensors(tmp_path / "w.safetensors")
    x = torch.randn(3, 1024)
    with torch.no_grad():
        for name, edit in (("a", False), ("b", True)):
            linear = torch.nn.Linear(1024, 256, bias=False)
            linear.weight = torch.nn.Parameter(weights[name], requires_grad=False)
            if edit:
                linear.weight[128, 0] += 1  # a write: that page is now the process's own
            expected = torch.nn.functional.linear(x, linear.weight)
            assert _resident_pages(linear.weight) > 0
            packing.pack(linear)
            assert torch.allclose(linear(x), expected, rtol=1e-5, atol=1e-4)
            assert (_resident_pages(linear.weight) == 0) is not edit
            packing.unpack(linear)
            assert torch.equal(linear(x), expected)  # read back from the file, or kept with the write


def test_winograd4_is_kept_where_its_copy_is_small_and_made_per_call_where_eager_would(force, monkeypatch):
    """F(4x4, 3x3) on a kept copy where that copy is small beside one image's output (no more channels than
    positions: 64 at 16x16, 512 at 32x32); made on each call, as eager convolution does, where only its transient
    copy is small (512 channels at 16x16: 37.7 MB); neither at 768 channels (85 MB)."""
    from sumie.speed import packing, tuning
    offered = []
    monkeypatch.setattr(tuning, "choose", lambda key, names, candidates: offered.append(set(candidates())) or names[0])
    torch.manual_seed(0)
    with torch.no_grad():
        for channels, size in ((64, 16), (512, 32), (512, 16), (768, 4)):
            packing.pack(torch.nn.Conv2d(channels, channels, 3, padding=1))(torch.randn(1, channels, size, size))
    base = {"onednn", "im2col", "winograd2", "winograd2 batched"}
    kept = base | {"winograd4", "winograd4 batched"}
    assert offered == [kept, kept, base | {"winograd4 per call"}, base]


@pytest.mark.skipif(not onednn_bfloat16(), reason="oneDNN computes no bfloat16 on this CPU")
@pytest.mark.parametrize("algorithm", ["onednn", "im2col", "winograd2", "winograd2 batched"])
def test_bfloat16_is_packed_by_each_algorithm_but_winograd4(force, monkeypatch, algorithm):
    """bfloat16 layers keep packed weights as float32 ones do, within bfloat16's rounding of float64. F(4x4, 3x3)
    is never offered in bfloat16: its error there was about 30x the direct convolution's."""
    from sumie.speed import packing, tuning
    offered = []
    force(algorithm)
    forced = tuning.choose
    monkeypatch.setattr(tuning, "choose", lambda key, names, candidates: offered.append(sorted(candidates()))
                        or forced(key, names, candidates))
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Linear(64, 32)  # sizes where float32 offers
    x = torch.randn(1, 64, 16, 16, dtype=torch.bfloat16)                              # winograd4
    with torch.no_grad():
        for m in (conv, linear):
            packing.pack(m.to(torch.bfloat16))
        exact = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        y = conv(x)
        assert conv.__dict__["_packed"][0][0] == algorithm
        assert offered == [["im2col", "onednn", "winograd2", "winograd2 batched"]]
        assert y.dtype == torch.bfloat16 and (y.double() - exact).abs().max() < 1.5e-2 * exact.abs().max()
        rows = x[0, :, 0].t()  # (16, 64)
        exact = torch.nn.functional.linear(rows.double(), linear.weight.double(), linear.bias.double())
        assert (linear(rows).double() - exact).abs().max() < 1.5e-2 * exact.abs().max()
        assert linear.__dict__["_packed"][0][0] == "linear"


def test_bfloat16_without_onednn_takes_the_ordinary_forward():
    """Capped at AVX2 (ONEDNN_MAX_CPU_ISA), oneDNN has no bfloat16 reorder: a packed bfloat16 model then runs
    nn's forwards and keeps no copy, instead of failing."""
    import os
    import subprocess
    import sys
    code = """
import torch
from sumie.speed import kernels, packing
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Flatten(2), torch.nn.Linear(36, 5))
model = model.to(torch.bfloat16)
x = torch.randn(2, 8, 6, 6, dtype=torch.bfloat16)
with torch.no_grad():
    plain = model(x)
    packing.pack(model)
    assert torch.equal(model(x), plain)
assert not kernels.onednn_bfloat16() and "_packed" not in model[0].__dict__ and "_packed" not in model[2].__dict__
"""
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr

