"""`sumie train-lora`: Kohya's file and metadata, deterministic and resumable runs, the model's own objective, a
LoRA diffusers draws the same images with, and bad input in one line."""

import hashlib
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cli_util import cli_in_process
from sumie import StableDiffusionPipeline, tiny
from sumie import train_lora as L
from sumie.lora import metadata
from sumie.tiny.data import Scene

QUICK = L.Options(rank=2, alpha=2.0, lr=1e-3, steps=4, batch_size=2, resolution=64, save_every=2)
SCENES = [Scene("white", "red", "circle", "large", "center"), Scene("black", "blue", "square", "small", "top left"),
          Scene("green", "yellow", "triangle", "large", "bottom right")]


@pytest.fixture
def data(tmp_path):
    """Two captioned images in data/, and one without a caption in data/3_red shapes (Kohya's repeat count 3)."""
    folder = tmp_path / "data"
    (folder / "3_red shapes").mkdir(parents=True)
    for i, scene in enumerate(SCENES):
        where = folder / "3_red shapes" if i == 2 else folder
        Image.fromarray(scene.render()).save(where / f"{i}.png")
        if i < 2:
            (where / f"{i}.txt").write_text(scene.caption() + ", flat")
    return folder


def train(data, out, options=QUICK, **kw):
    return L.train("sumie-tiny", data, out, options, quiet=True, say=lambda text: None, **kw)


def test_a_kohya_lora_file_with_its_training_metadata(data, tmp_path):
    said = []
    out = L.train("sumie-tiny", data, tmp_path / "out" / "mine.safetensors", QUICK, quiet=True, say=said.append)
    assert len(said) == 1 and "1 of 3 images have no .txt caption" in said[0] and "'red shapes'" in said[0]
    tensors, meta = load_file(out), metadata(out)
    pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny")
    attention = [n for n, m in pipe.unet.named_modules()
                 if n.endswith(("to_q", "to_k", "to_v", "to_out.0")) and ".attn" in n]
    assert sorted(tensors) == sorted(f"lora_unet_{n.replace('.', '_')}.{s}" for n in attention
                                     for s in ("alpha", "lora_down.weight", "lora_up.weight"))
    assert all(t.shape[0] == 2 for k, t in tensors.items() if k.endswith("lora_down.weight"))
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "2.0" and meta["ss_steps"] == "4"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_v2"] == "False"
    assert meta["ss_num_train_images"] == "5"  # 1 + 1 + 3 repeats
    from sumie.weights import model_hash
    assert meta["ss_sd_model_hash"] == model_hash(tiny.MODEL_DIR)
    frequency = json.loads(meta["ss_tag_frequency"])
    assert frequency == {"data": {SCENES[0].caption(): 1, SCENES[1].caption(): 1, "flat": 2},
                         "3_red shapes": {"red shapes": 1}}
    raw = out.read_bytes()
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little"):]).hexdigest()
    rows = (tmp_path / "out" / "mine.loss.tsv").read_text().splitlines()
    assert rows[0] == "step\tloss" and [r.split("\t")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert any(not torch.equal(t, torch.zeros_like(t)) for k, t in tensors.items() if "lora_up" in k)


def test_a_run_is_deterministic_and_a_resumed_run_equals_an_unbroken_one(data, tmp_path):
    one = train(data, tmp_path / "a" / "lora.safetensors")
    two = train(data, tmp_path / "b" / "lora.safetensors")
    assert one.read_bytes() == two.read_bytes()
    broken = train(data, tmp_path / "c" / "lora.safetensors", replace(QUICK, steps=2))
    assert broken.read_bytes() != one.read_bytes()
    resumed = train(data, broken, resume=True)
    assert resumed.read_bytes() == one.read_bytes()
    assert (tmp_path / "c" / "lora.loss.tsv").read_text() == (tmp_path / "a" / "lora.loss.tsv").read_text()
    with pytest.raises(L.InputError, match="other options"):
        train(data, broken, replace(QUICK, rank=1), resume=True)


@pytest.mark.parametrize("model", ["sumie-tiny", "sd1"])
def test_the_loss_is_the_models_own_objective(data, model, sd1_folder):
    """sumie-tiny predicts v, the small SD 1 model epsilon: the step's loss is the mean squared error against that
    target, not the other one."""
    pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny" if model == "sumie-tiny" else sd1_folder)
    examples = L.read_folder(data)
    latents = L.encode(pipe.vae, examples, 64)
    ids = pipe.tokenizer([e.caption for e in examples], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    weights = torch.ones(len(examples))
    alpha_bar = L.alpha_bars(pipe)
    with torch.no_grad():
        loss = L.step_loss(pipe, latents, ids, weights, QUICK, 0, alpha_bar)
        generator, _ = L.step_generator(QUICK.seed, "lora", 0)
        index = torch.multinomial(weights, QUICK.batch_size, replacement=True, generator=generator)
        t = torch.randint(len(alpha_bar), (QUICK.batch_size,), generator=generator)
        noise = torch.randn(latents[index].shape, generator=generator)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        x0 = latents[index]
        pred = pipe.unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, pipe.text_encoder(ids[index]).last_hidden_state)
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
    right, wrong = (v, noise) if model == "sumie-tiny" else (noise, v)
    assert pipe.scheduler.config["prediction_type"] == ("v_prediction" if model == "sumie-tiny" else "epsilon")
    assert torch.allclose(loss, (pred - right).pow(2).mean(), rtol=1e-5)
    assert not torch.allclose(loss, (pred - wrong).pow(2).mean(), rtol=1e-2)


def test_diffusers_draws_the_trained_lora_as_sumie_does_and_weight_0_is_the_base(data, tmp_path):
    """A LoRA trained hard enough to change the images (a wrong key or scale in the file would show), loaded by
    diffusers' load_lora_weights onto sumie-tiny: its images within 2/255 of sumie's. At weight 0 sumie's images
    are bit-identical to the base model's."""
    from diffusers import StableDiffusionPipeline as Reference
    path = train(data, tmp_path / "hard.safetensors", replace(QUICK, lr=2e-2, steps=12, rank=4, alpha=4.0))
    kw = dict(num_inference_steps=8, guidance_scale=tiny.GUIDANCE, output_type="np")
    prompts = [s.caption() for s in SCENES[:2]]
    pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny")
    pipe.set_progress_bar_config(disable=True)
    base = pipe(prompts, seed=0, **kw).images
    pipe.load_lora_weights(path, adapter_name="hard")
    ours = pipe(prompts, seed=0, **kw).images
    assert np.abs(ours - base).max() * 255 > 20  # the LoRA changes the images
    ref = Reference.from_pretrained(tiny.MODEL_DIR, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(path))
    theirs = ref(prompts, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw).images
    assert np.abs(ours - theirs).max() * 255 <= 2
    pipe.set_adapters(["hard"], [0.0])
    assert np.array_equal(pipe(prompts, seed=0, **kw).images, base)


def test_bad_input_is_one_line_and_exit_2(data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    cases = {
        "holds no images": [empty, "--model", "sumie-tiny"],
        "--rank 40 is larger than layer": [data, "--model", "sumie-tiny", "--rank", "40"],
        "--allow-pickle": [data, "--model", tmp_path / "model.ckpt"],
    }
    for expected, args in cases.items():
        code, out, err = cli_in_process("train-lora", *args, "--out", tmp_path / "x.safetensors", "--resolution", "64",
                                        "--steps", "1", "--quiet")
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (expected, err)
        assert not (tmp_path / "x.safetensors").exists()
    r = subprocess.run([sys.executable, "-m", "sumie.cli", "train-lora", empty, "--model", "sumie-tiny", "--out",
                        tmp_path / "x.safetensors"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds no images" in r.stderr


def test_the_trained_layers_compute_what_the_saved_file_loads_as(tmp_path):
    """The parametrized model during training, and a fresh model with the written file loaded: the same UNet and
    text encoder outputs (the factors' scale and the Kohya names of both networks)."""
    options = replace(QUICK, text_encoder=True, targets="transformer")
    pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny")
    layers = L.targets({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, options)
    assert {c for c, _, _ in layers} == {"unet", "text_encoder"}
    assert any(n.endswith("proj_in") for _, n, _ in layers) and any(n.endswith("mlp.fc1") for _, n, _ in layers)
    loras = L.attach(layers, options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lora in loras.values():
            lora.up.copy_(torch.randn(lora.up.shape, generator=generator) * 0.1)
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    x, t = torch.randn(1, 4, 16, 16, generator=generator), torch.tensor([500])

    def outputs(p):
        with torch.no_grad():
            states = p.text_encoder(ids).last_hidden_state
            return states, p.unet(x, t, states)

    trained = outputs(pipe)
    path = tmp_path / "both.safetensors"
    L.write_safetensors(L.kohya_tensors(loras), path)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_") for k in load_file(path))
    fresh = StableDiffusionPipeline.from_pretrained("sumie-tiny")
    plain = outputs(fresh)
    fresh.load_lora_weights(path)
    for a, b, c in zip(outputs(fresh), trained, plain):
        assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-3)
    L.detach(layers)
    assert all(torch.equal(x, y) for x, y in zip(outputs(pipe), plain))


def test_diffusers_draws_the_shipped_demonstration_lora_as_sumie_does():
    """tests/data/tiny-diamond-lora.safetensors, `sumie train-tiny-lora`'s LoRA (docs/tiny.md; UNet and text
    encoder, Kohya's names), loaded by diffusers' load_lora_weights onto sumie-tiny: sumie's images within 2/255;
    and the new word draws diamonds: 6 of these 8 images (docs/tiny.md: 86% of 100 large ones), none without it."""
    from diffusers import StableDiffusionPipeline as Reference

    from sumie.tiny.evaluate import EXTENDED, read
    path = __import__("pathlib").Path(__file__).parent / "data" / "tiny-diamond-lora.safetensors"
    assert path.stat().st_size <= 2_000_000 and any(k.startswith("lora_te_") for k in load_file(path))
    prompts = ["a large red diamond in the center on a white background"] * 4 + \
        ["a large blue diamond in the top left corner on a yellow background"] * 4
    kw = dict(num_inference_steps=tiny.STEPS, guidance_scale=tiny.GUIDANCE, output_type="np")
    pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny")
    pipe.set_progress_bar_config(disable=True)
    base = pipe(prompts, seed=0, **kw).images
    pipe.load_lora_weights(path)
    ours = pipe(prompts, seed=0, **kw).images
    ref = Reference.from_pretrained(tiny.MODEL_DIR, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(path))
    theirs = ref(prompts, generator=[torch.Generator().manual_seed(i) for i in range(8)], **kw).images
    assert np.abs(ours - theirs).max() * 255 <= 2
    shapes = lambda images: [read((im * 255).round().astype(np.uint8), EXTENDED).shape for im in images]
    assert shapes(ours).count("diamond") >= 6 and "diamond" not in shapes(base)
