"""`lora`: LoRA and LyCORIS files applied as diffusers + peft apply them, strictly, and removed exactly."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sumie.errors import InputError
from sumie.pipeline import StableDiffusionPipeline

RANK, ALPHA = 4, 2.0
# (component, our module path, kind): linear layers, a 1x1 convolution (SD 1's proj_in), a 3x3 one (LoCon)
LAYERS = [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "linear"),
          ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "linear"),
          ("unet", "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2", "linear"),
          ("unet", "mid_block.attentions.0.proj_in", "conv1"),
          ("unet", "down_blocks.1.resnets.0.conv1", "conv3"),
          ("text_encoder", "encoder.layers.1.self_attn.v_proj", "linear")]


def factors(module, generator):
    """(down, up) of rank RANK for `module`'s weight."""
    w = module.weight
    if w.ndim == 2:
        shapes = (RANK, w.shape[1]), (w.shape[0], RANK)
    else:
        shapes = (RANK, w.shape[1], *w.shape[2:]), (w.shape[0], RANK, 1, 1)
    return [torch.randn(s, generator=generator) * 0.3 for s in shapes]


def write_lora(pipe, path, fmt, layers=LAYERS, seed=0):
    """A LoRA for `layers` of `pipe` in Kohya's names (with alpha) or diffusers/PEFT's (without: alpha = rank)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for component, name, _ in layers:
        down, up = factors(getattr(pipe, component).get_submodule(name), g)
        inner = "text_model." if component == "text_encoder" else ""
        if fmt == "kohya":
            key = ("lora_te_" if component == "text_encoder" else "lora_unet_") + (inner + name).replace(".", "_")
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(ALPHA)})
        else:
            key = f"{component}.{inner}{name}"
            state.update({f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up})
    save_file(state, path)
    return path


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def pipe(sd1_folder):
    p = StableDiffusionPipeline.from_pretrained(sd1_folder)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_a_lora_changes_the_weights_as_diffusers_and_peft_do(pipe, sd1_folder, tmp_path, fmt):
    """Kohya's names for the UNet's layers (diffusers 0.42 cannot convert a Kohya text-encoder LoRA under
    transformers 5: its rule is checked below against the definition), diffusers/PEFT's for both networks."""
    import diffusers
    layers = [l for l in LAYERS if fmt == "peft" or l[0] == "unet"]
    path = write_lora(pipe, tmp_path / f"{fmt}.safetensors", fmt, layers)
    base = {name: weights(getattr(pipe, name)) for name in ("unet", "text_encoder")}
    pipe.load_lora_weights(path)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(sd1_folder, safety_checker=None)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_lora_weights(str(path))
    theirs.fuse_lora()
    theirs.unload_lora_weights()  # keeps the fused weights
    for name in ("unet", "text_encoder"):
        ours, ref = weights(getattr(pipe, name)), weights(getattr(theirs, name))
        ref = {k.removeprefix("text_model."): v for k, v in ref.items()}
        changed = [k for k in ours if not torch.equal(ours[k], base[name][k])]
        assert sorted(changed) == sorted(f"{m}.weight" for c, m, _ in layers if c == name), name
        for k in ours:
            assert torch.allclose(ours[k], ref[k], atol=1e-6), k
    kw = dict(prompt="a red circle", num_inference_steps=3, output_type="np")
    a = theirs(**kw, generator=torch.Generator().manual_seed(1)).images
    b = pipe(**kw, generator=torch.Generator().manual_seed(1)).images
    assert np.abs(a - b).max() * 255 <= 2


def test_the_text_encoder_update_and_its_scale(pipe, tmp_path):
    """alpha / rank scales dW = up @ down; the multiplier of set_adapters and a call's scale multiply it."""
    layer = [l for l in LAYERS if l[0] == "text_encoder"]
    path = write_lora(pipe, tmp_path / "te.safetensors", "kohya", layer)
    module = pipe.text_encoder.get_submodule(layer[0][1])
    w0 = module.weight.detach().clone()
    down, up = factors(module, torch.Generator().manual_seed(0))
    pipe.load_lora_weights(path, adapter_name="te")
    assert torch.allclose(module.weight, w0 + ALPHA / RANK * up @ down, atol=1e-6)
    pipe.set_adapters("te", 0.5)
    assert torch.allclose(module.weight, w0 + 0.5 * ALPHA / RANK * up @ down, atol=1e-6)
    pipe.fuse_lora(lora_scale=2.0)
    assert torch.allclose(module.weight, w0 + 1.0 * ALPHA / RANK * up @ down, atol=1e-6)
    pipe.unfuse_lora()
    assert pipe.get_active_adapters() == ["te"]
    pipe.unload_lora_weights()
    assert torch.equal(module.weight, w0) and pipe.get_active_adapters() == []


def test_loading_and_unloading_a_hundred_times_leaves_every_weight_bit_identical(pipe, tmp_path):
    paths = [write_lora(pipe, tmp_path / f"{i}.safetensors", "kohya", seed=i) for i in range(2)]
    before = {name: weights(getattr(pipe, name)) for name in ("unet", "text_encoder")}
    storage = {name: [p.data_ptr() for p in getattr(pipe, name).parameters()] for name in ("unet", "text_encoder")}
    for i in range(100):
        pipe.load_lora_weights(paths[i % 2], adapter_name="a")
        if i % 3 == 0:
            pipe.load_lora_weights(paths[(i + 1) % 2], adapter_name="b")
            pipe.set_adapters(["a", "b"], [0.7, 1.3])
        pipe.unload_lora_weights()
    for name, state in before.items():
        after = weights(getattr(pipe, name))
        assert all(torch.equal(after[k], state[k]) for k in state), name
    for name, pointers in storage.items():  # the very tensors, not copies: no second copy of the model is held
        assert [p.data_ptr() for p in getattr(pipe, name).parameters()] == pointers, name


def test_two_adapters_add(pipe, tmp_path):
    a, b = (write_lora(pipe, tmp_path / f"{i}.safetensors", "kohya", seed=i) for i in range(2))
    w0 = weights(pipe.unet)
    deltas = []
    for path in (a, b):
        pipe.load_lora_weights(path, adapter_name="x")
        deltas.append({k: v - w0[k] for k, v in weights(pipe.unet).items()})
        pipe.unload_lora_weights()
    pipe.load_lora_weights(a, adapter_name="a")
    pipe.load_lora_weights(b, adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.5, 2.0])
    both = weights(pipe.unet)
    for k in both:
        assert torch.allclose(both[k], w0[k] + 0.5 * deltas[0][k] + 2.0 * deltas[1][k], atol=1e-5), k


def test_a_call_scale_applies_for_that_call_only(pipe, tmp_path):
    kw = dict(prompt="a red circle", num_inference_steps=2, seed=0, output_type="latent")
    plain = pipe(**kw).images
    pipe.load_lora_weights(write_lora(pipe, tmp_path / "l.safetensors", "kohya"))
    full = pipe(**kw).images
    assert torch.equal(pipe(**kw, cross_attention_kwargs={"scale": 0.0}).images, plain)
    assert torch.equal(pipe(**kw).images, full) and not torch.equal(full, plain)


def test_a_lora_for_another_model_is_refused_and_nothing_is_applied(pipe, sd2_folder, tmp_path):
    other = StableDiffusionPipeline.from_pretrained(sd2_folder)  # SD 2: 48-wide cross-attention, linear proj_in
    layers = [("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "linear"),
              ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "linear")]
    path = write_lora(other, tmp_path / "sd2.safetensors", "kohya", layers)
    w0 = weights(pipe.unet)
    with pytest.raises(InputError, match="made for another model"):
        pipe.load_lora_weights(path)
    assert all(torch.equal(v, w0[k]) for k, v in weights(pipe.unet).items()) and pipe.get_active_adapters() == []
    state = {"lora_unet_no_such_layer.lora_down.weight": torch.zeros(4, 768),
             "lora_unet_no_such_layer.lora_up.weight": torch.zeros(32, 4),
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768)}
    save_file(state, tmp_path / "sd1-768.safetensors")
    with pytest.raises(InputError, match=r"2 keys that name no layer of this model \(lora_unet_no_such_layer"):
        pipe.load_lora_weights(tmp_path / "sd1-768.safetensors")


def test_locon_loha_and_lokr_follow_their_definitions(pipe, tmp_path):
    """LoCon with a Tucker core (lora_mid), LoHa and LoKr, against dW written out from their definitions."""
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    conv = pipe.unet.get_submodule("down_blocks.1.resnets.0.conv1")  # (64, 32, 3, 3)
    linear = pipe.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v")  # (32, 32)
    ff = pipe.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2")  # (32, 128)
    O, C = conv.weight.shape[:2]
    down, mid, up = r(RANK, C, 1, 1), r(RANK, RANK, 3, 3), r(O, RANK, 1, 1)
    w1a, w1b, w2a, w2b = r(32, RANK), r(RANK, 32), r(32, RANK), r(RANK, 32)
    k1, k2a, k2b = r(4, 8), r(8, RANK), r(RANK, 16)
    state = {
        "lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight": down,
        "lora_unet_down_blocks_1_resnets_0_conv1.lora_mid.weight": mid,
        "lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight": up,
        "lora_unet_down_blocks_1_resnets_0_conv1.alpha": torch.tensor(1.0),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.hada_w1_a": w1a,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.hada_w1_b": w1b,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.hada_w2_a": w2a,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.hada_w2_b": w2b,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v.alpha": torch.tensor(2.0),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.lokr_w1": k1,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.lokr_w2_a": k2a,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.lokr_w2_b": k2b,
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.alpha": torch.tensor(8.0),
    }
    save_file(state, tmp_path / "lyco.safetensors")
    w = {m: m.weight.detach().clone() for m in (conv, linear, ff)}
    pipe.load_lora_weights(tmp_path / "lyco.safetensors")
    locon = torch.zeros(O, C, 3, 3)
    for o in range(O):
        for c in range(C):
            locon[o, c] = sum(up[o, i, 0, 0] * mid[i, j] * down[j, c, 0, 0] for i in range(RANK) for j in range(RANK))
    assert torch.allclose(conv.weight, w[conv] + locon / RANK, atol=1e-5)
    assert torch.allclose(linear.weight, w[linear] + (w1a @ w1b) * (w2a @ w2b) * 2.0 / RANK, atol=1e-5)
    w2 = k2a @ k2b  # (8, 16); dW's block (i, j) is k1[i, j] * w2
    blocks = torch.cat([torch.cat([k1[i, j] * w2 for j in range(8)], 1) for i in range(4)], 0)
    assert torch.allclose(ff.weight, w[ff] + blocks * 8.0 / RANK, atol=1e-5)
