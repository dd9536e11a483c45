"""`lora`: LoRA and LyCORIS files applied as diffusers + peft apply them, strictly, and removed exactly."""

import base64
import hashlib
import io
import json
import struct
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from cli_util import cli_in_process
from server_util import Server

from sumie.errors import InputError
from sumie.images import parse_parameters, read_parameters
from sumie.lora import Library, prompt_tags, short_hash
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


KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te_"}  # SDXL's: lora_te1_, lora_te2_


def write_lora(pipe, path, fmt, layers=LAYERS, seed=0, *, kohya=KOHYA, alpha=ALPHA, original_layout=False):
    """A LoRA for `layers` ((component, module path, ...)) of `pipe` in Kohya's names (prefixes `kohya`, with
    `alpha`; the UNet's in the original layout with `original_layout`) or diffusers/PEFT's (alpha = rank)."""
    from sumie.weights.original import original_names
    g = torch.Generator().manual_seed(seed)
    state = {}
    for component, name, *_ in layers:
        down, up = factors(getattr(pipe, component).get_submodule(name), g)
        inner = "" if component == "unet" else "text_model."
        if fmt == "kohya":
            if original_layout and component == "unet":
                name = original_names("unet", pipe.unet.config, [name + ".weight"])[name + ".weight"][:-len(".weight")]
            key = kohya[component] + (inner + name).replace(".", "_")
            state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                          f"{key}.alpha": torch.tensor(alpha)})
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


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
@pytest.mark.parametrize("fmt", ["kohya", "peft"])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_a_lora_changes_the_weights_as_diffusers_and_peft_do(sd1_folder, sd2_folder, tmp_path, kind, fmt, scale):
    """Linear layers, a 1x1 convolution (SD 2: a linear proj_in) and a 3x3 one (LoCon), at two scales. Kohya's
    names for the UNet's layers (diffusers 0.42 cannot convert a Kohya text-encoder LoRA under transformers 5: its
    rule is checked below against the definition), diffusers/PEFT's for both networks."""
    import diffusers
    folder = {"sd1": sd1_folder, "sd2": sd2_folder}[kind]
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    layers = [l for l in LAYERS if fmt == "peft" or l[0] == "unet"]
    path = write_lora(pipe, tmp_path / f"{fmt}.safetensors", fmt, layers)
    base = {name: weights(getattr(pipe, name)) for name in ("unet", "text_encoder")}
    pipe.load_lora_weights(path)
    pipe.fuse_lora(lora_scale=scale)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_lora_weights(str(path))
    theirs.fuse_lora(lora_scale=scale)
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


def test_kohya_names_in_the_original_layout_name_the_same_layers(pipe, tmp_path):
    from sumie.weights.original import original_names
    path = write_lora(pipe, tmp_path / "d.safetensors", "kohya", [l for l in LAYERS if l[0] == "unet"])
    theirs = original_names("unet", pipe.unet.config, [f"{name}.weight" for _, name, _ in LAYERS])
    rename = {"lora_unet_" + name.replace(".", "_"): "lora_unet_" + theirs[f"{name}.weight"][:-7].replace(".", "_")
              for _, name, _ in LAYERS}
    state = load_file(path)
    save_file({rename[k.split(".")[0]] + k[len(k.split(".")[0]):]: v for k, v in state.items()}, tmp_path / "o.safetensors")
    pipe.load_lora_weights(path, adapter_name="d")
    diffusers_named = weights(pipe.unet)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(tmp_path / "o.safetensors")
    assert all(torch.equal(v, diffusers_named[k]) for k, v in weights(pipe.unet).items())


def test_loading_and_unloading_a_hundred_times_leaves_every_weight_bit_identical(pipe, tmp_path):
    paths = [write_lora(pipe, tmp_path / f"{i}.safetensors", "kohya", seed=i) for i in range(2)]
    before = {name: weights(getattr(pipe, name)) for name in ("unet", "text_encoder")}
    storage = {name: [p.data_ptr() for p in getattr(pipe, name).parameters()] for name in ("unet", "text_encoder")}
    for i in range(100):
        pipe.load_lora_weights(paths[i % 2], adapter_name="a")
        if i % 3 == 0:
            pipe.load_lora_weights(paths[(i + 1) % 2], adapter_name="b")
            pipe.set_adapters(["a", "b"], [0.7, 1.3])
        if i % 2 == 0:
            pipe.fuse_lora(lora_scale=0.8)
            pipe.unfuse_lora()
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


def test_a_compiled_pipeline_follows_lora_switching(pipe, sd1_folder, tmp_path):
    """With compile() (packed weights on a CPU), switching an adapter's weight gives what the plain pipeline
    gives: every changed layer's packed copy is remade, also when the new weight lands where the old one was."""
    kw = dict(prompt="a red circle", num_inference_steps=2, seed=0, output_type="latent")
    packed = StableDiffusionPipeline.from_pretrained(sd1_folder)
    packed.set_progress_bar_config(disable=True)
    packed.compile()
    path = write_lora(pipe, tmp_path / "l.safetensors", "kohya")
    for p in (pipe, packed):
        p.load_lora_weights(path, adapter_name="a")
    for weight in (0.5, 2.0, 0.5, 1.0):
        for p in (pipe, packed):
            p.set_adapters(["a"], [weight])
        assert torch.allclose(packed(**kw).images, pipe(**kw).images, atol=1e-3), weight


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
    image = pipe("a red circle", num_inference_steps=2, seed=0, output_type="np").images  # end to end
    pipe.unload_lora_weights()
    plain = pipe("a red circle", num_inference_steps=2, seed=0, output_type="np").images
    assert np.isfinite(image).all() and np.abs(image - plain).max() * 255 >= 1


@pytest.mark.parametrize("prompt,text,tags", [  # A1111's forms of the tag
    ("a cat <lora:pop:0.5>", "a cat ", [("pop", 0.5, 0.5)]),
    ("<lora:pop>a cat", "a cat", [("pop", 1.0, 1.0)]),
    ("a <lora:pop:1:0.3> cat", "a  cat", [("pop", 1.0, 0.3)]),
    ("<lora:pop:te=0.2:unet=0.7>", "", [("pop", 0.2, 0.7)]),
    ("<lyco:old:0.8>, <lora:b:-1>", ", ", [("old", 0.8, 0.8), ("b", -1.0, -1.0)]),
    ("a <cat> and <dog:1>", "a <cat> and <dog:1>", []),  # other tags are text
])
def test_prompt_tags(prompt, text, tags):
    assert prompt_tags(prompt) == (text, tags)


def test_a_prompt_tag_applies_its_lora_for_that_call_only(pipe, tmp_path):
    folder = tmp_path / "loras"
    (folder / "styles").mkdir(parents=True)
    write_lora(pipe, folder / "styles" / "pop_art.safetensors", "kohya")
    kw = dict(num_inference_steps=2, seed=0, output_type="latent", prompt_syntax="a1111")
    base = {name: weights(getattr(pipe, name)) for name in ("unet", "text_encoder")}
    plain = pipe("a red circle", **kw).images
    with pytest.raises(InputError, match="no LoRA folder is set: pass --lora-dir"):
        pipe("a red circle <lora:pop_art:0.6>", **kw)
    pipe.lora_library = Library(folder)
    tagged = pipe("a red circle <lora:pop_art:0.6:0.9>", **kw).images
    for name, state in base.items():  # nothing leaks into the next call
        assert all(torch.equal(v, state[k]) for k, v in weights(getattr(pipe, name)).items()), name
    pipe.load_lora_weights(folder / "styles" / "pop_art.safetensors")
    pipe.loras.set_active({"pop_art": (0.6, 0.9)})
    assert torch.equal(tagged, pipe("a red circle", **kw).images) and not torch.equal(tagged, plain)
    with pytest.raises(InputError, match="no LoRA named 'pop_arts'.*did you mean pop_art"):
        pipe("<lora:pop_arts:1> a red circle", **kw)


def test_lora_hashes_are_a1111s_and_the_cli_writes_and_reads_them(sd1_folder, pipe, tmp_path):
    (tmp_path / "loras").mkdir()
    path = write_lora(pipe, tmp_path / "loras" / "pop.safetensors", "kohya")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert short_hash(path) == hashlib.sha256(raw[8 + n:]).hexdigest()[:12]  # the data, not the header
    out = tmp_path / "out"
    run = lambda *a: subprocess.run([sys.executable, "-m", "sumie.cli", "generate", *map(str, a), "--model",
                                     str(sd1_folder), "--outdir", str(out), "--steps", "2", "--quiet"],
                                    capture_output=True, text=True, timeout=120)
    r = run("a cat <lora:pop:0.7>", "--seed", 3)
    assert r.returncode == 0, r.stderr  # loras/ beside the output folder is the default --lora-dir
    meta = parse_parameters(read_parameters(r.stdout.strip()))
    assert meta["Lora hashes"] == f"pop: {short_hash(path)}" and meta["Prompt"] == "a cat <lora:pop:0.7>"
    again = run("--params-from", r.stdout.strip())
    assert np.array_equal(np.asarray(Image.open(again.stdout.strip())), np.asarray(Image.open(r.stdout.strip())))
    bad = run("a cat <lora:poop:1>")
    assert bad.returncode == 2 and "did you mean pop" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_server_lists_loras_applies_tags_per_job_and_refreshes(sd1_folder, pipe, tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    path = write_lora(pipe, folder / "pop.safetensors", "kohya")
    save_file(load_file(path), folder / "meta.safetensors", metadata={"ss_network_dim": "4", "ss_base_model_version": "sd_v1"})
    s = Server("--model", sd1_folder, "--lora-dir", folder)
    try:
        listed = {item["name"]: item for item in httpx.get(s.url + "/sdapi/v1/loras").json()}
        assert set(listed) == {"pop", "meta"} and listed["meta"]["metadata"]["ss_network_dim"] == "4"
        body = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "seed": 1}
        post = lambda b: httpx.post(s.url + "/sdapi/v1/txt2img", json=b, timeout=60)
        image = lambda r: Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).tobytes()
        plain = post(body)
        tagged = post({**body, "prompt": "a red circle <lora:pop:1>"})
        after = post(body)
        assert image(after) == image(plain) != image(tagged)  # the job's LoRA did not leak into the next job
        assert "Lora hashes" in json.loads(tagged.json()["info"])["infotexts"][0]
        missing = post({**body, "prompt": "<lora:new:1> a red circle"})
        assert missing.status_code == 422 and "no LoRA named 'new'" in missing.text
        write_lora(pipe, folder / "new.safetensors", "kohya", seed=5)
        assert httpx.post(s.url + "/sdapi/v1/refresh-loras").status_code == 200
        assert post({**body, "prompt": "<lora:new:1> a red circle"}).status_code == 200
    finally:
        s.stop()


def bad_loras(folder, pipe, sd2_folder):
    """name -> words its refusal must hold: a file for the other model family, a truncated one, one that is no
    LoRA, a pickle, one with NaN weights."""
    folder.mkdir(exist_ok=True)
    other = StableDiffusionPipeline.from_pretrained(sd2_folder)
    write_lora(other, folder / "sd2.safetensors", "kohya", [l for l in LAYERS if "attn2" in l[1]])
    good = write_lora(pipe, folder / "good.safetensors", "kohya")
    (folder / "cut.safetensors").write_bytes(good.read_bytes()[:300])
    save_file({"emb_params": torch.zeros(1, 32)}, folder / "notalora.safetensors")
    torch.save(load_file(good), folder / "pickled.pt")
    state = load_file(good)
    state[next(k for k in state if k.endswith("lora_down.weight"))][0] = float("nan")
    save_file(state, folder / "nan.safetensors")
    return {"sd2": "made for another model", "cut": "truncated", "notalora": "name no layer of this model",
            "pickled": "--allow-pickle", "nan": "NaN", "missing": "no LoRA named 'missing'"}


def test_bad_loras_are_refused_in_one_line_with_nothing_applied(sd1_folder, sd2_folder, pipe, tmp_path):
    cases = bad_loras(tmp_path / "loras", pipe, sd2_folder)
    pipe.lora_library = Library(tmp_path / "loras")
    base = weights(pipe.unet)
    for name, words in cases.items():
        with pytest.raises(Exception, match=words.replace("-", r"\-")):
            pipe(f"a cat <lora:good:1> <lora:{name}:1>", num_inference_steps=1, output_type="latent",
                 prompt_syntax="a1111")
        assert all(torch.equal(v, base[k]) for k, v in weights(pipe.unet).items()), name
    out = tmp_path / "out"
    for i, (name, words) in enumerate(cases.items()):
        argv = ["generate", f"a cat <lora:{name}:1>", "--model", sd1_folder, "--outdir", out, "--steps", 1, "--quiet"]
        if i == 0:  # one in a real process, the others in this one (the same code, no interpreter start)
            r = subprocess.run([sys.executable, "-m", "sumie.cli", *map(str, argv)], capture_output=True, text=True,
                               timeout=120)
            code, stderr = r.returncode, r.stderr
        else:
            code, _, stderr = cli_in_process(*argv)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and words in stderr, (name, stderr)
    s = Server("--model", sd1_folder, "--lora-dir", tmp_path / "loras")
    try:
        for name, words in cases.items():
            r = httpx.post(s.url + "/sdapi/v1/txt2img", json={"prompt": f"<lora:{name}:1>", "steps": 1, "width": 32,
                                                              "height": 32}, timeout=60)
            assert r.status_code == 422 and words in r.json()["detail"], (name, r.text)
    finally:
        s.stop()
