"""`embeddings`: textual inversion in every format people share, equal to diffusers' load_textual_inversion,
and each bad file refused clearly in Python, the CLI (one line, exit 2) and the server (422)."""

import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from cli_util import cli_in_process
from safetensors.torch import save_file
from server_util import Server

from sumie.errors import SumieError
from sumie.pipeline import StableDiffusionPipeline

FORMATS = ["a1111.pt", "a1111.safetensors", "learned_embeds.bin", "learned_embeds.safetensors"]


def write(path, vectors, fmt, name="emb"):
    """`vectors` (n, D) as a file of format `fmt`."""
    if fmt == "a1111.pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name, "step": 500}, path)
    elif fmt == "a1111.safetensors":
        save_file({"emb_params": vectors.contiguous()}, path)
    elif fmt == "learned_embeds.bin":
        torch.save({name: vectors[0] if len(vectors) == 1 else vectors}, path)
    else:
        save_file({name: vectors.contiguous()}, path)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [1, 3])
def test_embedding_equals_diffusers(sd1_folder, tmp_path, fmt, n):
    import diffusers
    width = 32
    vectors = torch.randn(n, width, generator=torch.Generator().manual_seed(n)) * 3  # strong enough to show
    path = write(tmp_path / f"emb.{fmt.split('.')[-1]}", vectors, fmt)
    ours = StableDiffusionPipeline.from_pretrained(sd1_folder)
    ours.set_progress_bar_config(disable=True)
    without = ours.encode_prompt("a photo of <emb>", "blurry")[0]
    ours.load_textual_inversion(path, token="<emb>", allow_pickle=True)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(sd1_folder, safety_checker=None)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_textual_inversion(str(path), token="<emb>")  # not a word of the vocabulary
    ref = theirs.encode_prompt("a photo of <emb>", "cpu", 1, True, "blurry")
    cond, uncond = ours.encode_prompt("a photo of <emb>", "blurry")
    assert torch.allclose(cond, ref[0], atol=1e-5) and torch.allclose(uncond, ref[1], atol=1e-5)
    assert not torch.allclose(cond, without, atol=1e-2)  # the embedding changed the conditioning
    assert torch.equal(ours.encode_prompt("a photo of (<emb>:1)", prompt_syntax="a1111")[0], cond)
    kw = dict(prompt="a photo of <emb>", negative_prompt="blurry", num_inference_steps=3, output_type="np")
    a = theirs(**kw, generator=torch.Generator().manual_seed(2)).images
    b = ours(**kw, generator=torch.Generator().manual_seed(2)).images
    assert np.abs(a - b).max() * 255 <= 2


def test_multi_vector_embeddings_are_never_split_across_chunks(sd1_folder, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.load_textual_inversion(write(tmp_path / "e.safetensors", torch.randn(3, 32), "a1111.safetensors"),
                                token="trio")
    from sumie import prompts
    parts = prompts.chunks(pipe.tokenizer, prompts.parse_attention("cat " * 73 + "trio"), pipe.embeddings)
    assert [len(p.vectors) for p in parts] == [0, 1] and parts[1].vectors[0][0] == 1  # all 3 in chunk 2
    assert parts[0].tokens[74:] == [pipe.tokenizer.eos_token_id] * 3


def bad_files(folder, width=32):
    """name -> (file, words its refusal must contain); plus one good embedding, `good`."""
    folder.mkdir()
    write(folder / "good.safetensors", torch.randn(1, width), "a1111.safetensors")
    write(folder / "pickled.pt", torch.randn(1, width), "a1111.pt")
    write(folder / "wide.safetensors", torch.randn(2, width + 16), "a1111.safetensors")
    save_file({"a": torch.zeros(2, width), "b": torch.zeros(2, width)}, folder / "two.safetensors")
    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, folder / "xl.safetensors")
    return {"pickled": "--allow-pickle", "wide": f"width {width + 16}", "two": "not a tensor dict",
            "xl": "SDXL embedding"}


def test_bad_embeddings_are_refused_and_the_others_still_load(sd1_folder, tmp_path):
    cases = bad_files(tmp_path / "emb")
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    for name, words in cases.items():
        path = next((tmp_path / "emb").glob(f"{name}.*"))
        with pytest.raises(SumieError, match=words.replace("-", r"\-")):
            pipe.load_textual_inversion(path)
    pipe.embeddings.load_dir(tmp_path / "emb")
    assert set(pipe.embeddings.loaded) == {"good"} and set(pipe.embeddings.skipped) == set(cases)
    assert "text encoder is 32 wide" in pipe.embeddings.skipped["wide"]
    pipe.set_progress_bar_config(disable=True)
    pipe("a good cat", num_inference_steps=1, output_type="latent", prompt_syntax="a1111")
    for name, words in cases.items():
        with pytest.raises(SumieError, match=f"names embedding '{name}'"):
            pipe(f"a {name} cat", num_inference_steps=1, output_type="latent", prompt_syntax="a1111")


def test_cli_refuses_a_bad_embedding_in_one_line_and_keeps_what_was_written(sd1_folder, tmp_path):
    cases = bad_files(tmp_path / "emb")
    out = tmp_path / "out"
    run = lambda prompt, *extra: subprocess.run(
        [sys.executable, "-m", "sumie.cli", "generate", prompt, "--model", str(sd1_folder), "--outdir", str(out),
         "--embeddings", str(tmp_path / "emb"), "--steps", "1", "--seed", "1", "--quiet", *extra],
        capture_output=True, text=True, timeout=120)
    first = run("a good cat")
    assert first.returncode == 0, first.stderr
    written = sorted(p.name for p in out.iterdir())
    for i, (name, words) in enumerate(cases.items()):
        if i == 0:  # one in a real process, the others in this one (the same code, no interpreter start)
            r = run(f"a {name} cat")
            code, stderr = r.returncode, r.stderr
        else:
            code, _, stderr = cli_in_process("generate", f"a {name} cat", "--model", sd1_folder, "--outdir", out,
                                             "--embeddings", tmp_path / "emb", "--steps", 1, "--seed", 1, "--quiet")
        assert code == 2 and len(stderr.strip().splitlines()) == 1, (name, stderr)
        assert words in stderr and "Traceback" not in stderr, (name, stderr)
    assert run("a pickled cat", "--allow-pickle").returncode == 0  # with the flag, tensors only
    assert set(written) <= {p.name for p in out.iterdir()}


def test_server_lists_embeddings_and_refuses_a_bad_one_with_422(sd1_folder, tmp_path):
    cases = bad_files(tmp_path / "emb")
    s = Server("--model", sd1_folder, "--embeddings", tmp_path / "emb")
    try:
        listed = httpx.get(s.url + "/sdapi/v1/embeddings").json()
        assert set(listed["loaded"]) == {"good"} and set(listed["skipped"]) == set(cases)
        assert listed["loaded"]["good"]["shape"] == 32 and listed["loaded"]["good"]["vectors"] == 1
        body = {"steps": 1, "width": 32, "height": 32, "send_images": False}
        ok = httpx.post(s.url + "/sdapi/v1/txt2img", json={**body, "prompt": "a good cat"}, timeout=60)
        assert ok.status_code == 200
        for name, words in cases.items():
            r = httpx.post(s.url + "/sdapi/v1/txt2img", json={**body, "prompt": f"a ({name}:1.2) cat"}, timeout=60)
            assert r.status_code == 422 and words in r.json()["detail"], (name, r.text)
    finally:
        s.stop()
