"""`speed.texts`: cross-attention's keys and values reused across steps, bit for bit what computing them gives."""

import pytest
import torch

from sumie.speed import texts
from sumie.weights import load_model


@pytest.fixture
def unets(sd1_folder):
    """(a UNet that remembers, the same weights plain, a count of to_k calls in the first's cross-attentions)."""
    remembering, plain = (load_model(sd1_folder).unet for _ in range(2))
    texts.remember(remembering)
    calls = []
    for name, m in remembering.named_modules():
        if name.endswith("attn2.to_k"):
            m.register_forward_hook(lambda *args: calls.append(1))
    return remembering, plain, calls


def test_keys_and_values_are_computed_once_per_text_and_equal_computing_them(unets):
    remembering, plain, calls = unets
    layers = sum(name.endswith("attn2") for name, _ in plain.named_modules())
    torch.manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    other = text.clone()
    other[1, 5, 0] += 1e-3
    with torch.no_grad():
        for step, (t, context) in enumerate([(999, text), (500, text.clone()), (1, text.clone()), (1, other)]):
            out = remembering(x, t, encoder_hidden_states=context)
            assert torch.equal(out, plain(x, t, encoder_hidden_states=context)), step
            assert len(calls) == layers * (1 if step < 3 else 2), step  # the same text: nothing recomputed
        remembering.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v.weight.mul_(2)  # an in-place edit
        plain.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v.weight.mul_(2)
        assert torch.equal(remembering(x, 1, encoder_hidden_states=other), plain(x, 1, encoder_hidden_states=other))
        for unet in (remembering, plain):  # a new tensor, as a LoRA gives
            to_k = unet.up_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k
            to_k.weight.data = to_k.weight.data * 0.5
        assert torch.equal(remembering(x, 1, encoder_hidden_states=other), plain(x, 1, encoder_hidden_states=other))
    before = len(calls)
    remembering(x, 1, encoder_hidden_states=other)  # with gradients (training): computed
    assert len(calls) == before + layers


def test_a_text_edited_in_place_is_seen(unets):
    """A caller that writes the next text into the same tensor gets that text's keys and values."""
    remembering, plain, _ = unets
    torch.manual_seed(0)
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        remembering(x, 500, encoder_hidden_states=context)
        context.mul_(-1)
        assert torch.equal(remembering(x, 500, encoder_hidden_states=context),
                           plain(x, 500, encoder_hidden_states=context))
