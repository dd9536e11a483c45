"""`text_encoder`: the CLIP text transformer equals transformers' on small random folders, loads the published
key layout, and has the reference's full-size structure."""

import shutil

import pytest
import torch
from oracle import TOL, full_size_pair, max_diff, reference, shapes
from safetensors.torch import load_file, save_file

from sumie.config import SD15, SD21
from sumie.weights import load_component


def test_text_encoder_hidden_states(model_folder):
    ours = load_component(model_folder, "text_encoder")
    theirs = reference(model_folder, "text_encoder")
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
    folder = tmp_path / "m"
    shutil.copytree(sd1_folder / "text_encoder", folder / "text_encoder")
    path = folder / "text_encoder" / "model.safetensors"
    state = load_file(path)
    save_file({"text_model." + k: v for k, v in state.items()}, path)
    a = load_component(folder, "text_encoder")
    b = load_component(sd1_folder, "text_encoder")
    ids = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 73])
    assert torch.equal(a(ids).last_hidden_state, b(ids).last_hidden_state)


@pytest.mark.parametrize("preset", [SD15, SD21], ids=lambda p: p.name)
def test_full_size_structure(preset):
    """Built on the meta device from its preset, the full-size network has exactly transformers' parameter names
    and shapes. No weights needed."""
    ours, theirs = full_size_pair("text_encoder", preset)
    assert shapes(ours) == shapes(theirs)
    if preset is SD15:
        assert round(sum(p.numel() for p in ours.parameters()) / 1e6) == 123
