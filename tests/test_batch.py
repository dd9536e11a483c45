"""`sumie batch` through a real subprocess on sumie-tiny: the images `sumie generate` makes, a manifest, resume
after SIGTERM, bad lines recorded, and the same run on a local Ray instance with two actors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import test_lora
from sumie import cli
from sumie.batch import jobs
from sumie.batch.output import pixels_hash
from sumie.images import read_parameters

SMALL = {"steps": 3, "width": 64, "height": 64}


def sumie(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sumie.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A LoRA for sumie-tiny (in loras/ beside the output folders) and an init image."""
    from sumie.pipeline import StableDiffusionPipeline
    root = tmp_path_factory.mktemp("batch")
    pipe = StableDiffusionPipeline.from_pretrained("sumie-tiny")
    layers = [("unet", name, "linear") for name, _ in pipe.unet.named_modules() if name.endswith("attn2.to_k")]
    (root / "loras").mkdir()
    test_lora.write_lora(pipe, root / "loras" / "pinkish.safetensors", "kohya", layers=layers, seed=3)
    init = np.zeros((64, 64, 3), np.uint8)
    init[16:48, 8:40] = (220, 30, 30)
    Image.fromarray(init).save(root / "init.png")
    return root


def job_lines(assets):
    """12 lines: ten jobs with mixed settings, a sampler that does not exist, and a line that is not JSON."""
    return [
        {"prompt": "a red circle"},
        {"prompt": "a blue square", "seed": 11, "n": 2, "negative_prompt": "red", "guidance": 7},
        {"prompt": "a green triangle", "scheduler": "euler-a", "steps": 4},
        {"prompt": "a red square", "sampler_name": "DPM++ 2M Karras", "seed": 3},
        {"prompt": "a blue circle", "size": "64x48"},
        {"prompt": "a (green:1.4) circle", "clip_skip": 2, "seed": 8},
        {"prompt": "a red circle <lora:pinkish:1>", "seed": 8},
        {"prompt": "x", "scheduler": "euler-ancestral-typo"},
        {"prompt": "a blue triangle", "init_image": str(assets / "init.png"), "strength": 0.6, "seed": 2},
        "{not json",
        {"prompt": "a green square", "cfg_scale": 3, "steps": 2, "karras": True, "scheduler": "dpm++2m"},
        {"prompt": "a red triangle", "prompt_syntax": "plain", "seed": 99},
    ]


@pytest.fixture(scope="module")
def local_run(assets):
    """The 12-line file through `sumie batch` here: (jobs file, output folder, the run's result)."""
    path = assets / "jobs.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in job_lines(assets)))
    out = assets / "local"
    defaults = [f"--{k}" if isinstance(v, bool) else f"--{k}={v}" for k, v in SMALL.items()]
    return path, out, sumie("batch", path, "--outdir", out, "--quiet", "--threads", 1, *defaults)


def test_a_jsonl_batch_makes_generates_images_and_records_bad_lines(assets, local_run):
    path, out, r = local_run
    assert r.returncode == 1, r.stderr  # two lines failed
    assert "11 done, 0 skipped (already done), 2 failed (lines 8, 10)" in r.stdout
    entries = manifest(out)
    failed = {e["line"]: e["error"] for e in entries if "error" in e}
    assert set(failed) == {8, 10}
    assert "unknown scheduler 'euler-ancestral-typo'" in failed[8] and "not JSON" in failed[10]
    images = [e for e in entries if "file" in e]
    assert sorted((e["line"], e["index"]) for e in images) == [
        (1, 0), (2, 0), (2, 1), (3, 0), (4, 0), (5, 0), (6, 0), (7, 0), (9, 0), (11, 0), (12, 0)]
    lines = job_lines(assets)
    for e in images:
        job = lines[e["line"] - 1]
        assert e["job"] == job
        assert e["seed"] == job.get("seed", jobs.derived_seed(0, e["line"])) + e["index"]
        # `sumie generate` with the job's own options gives the same pixels and the same A1111 parameters
        options = {**SMALL, **{k: v for k, v in job.items() if k != "prompt"}, "seed": e["seed"]}
        if "size" in options:
            options["width"], options["height"] = map(int, options.pop("size").split("x"))
        if "sampler_name" in options:
            options.pop("sampler_name")
            options.update(scheduler="dpm++2m", karras=True)
        if "cfg_scale" in options:
            options["guidance"] = options.pop("cfg_scale")
        argv = ["generate", job["prompt"], "--outdir", str(assets / "generated"), "--quiet", "--lora-dir",
                str(assets / "loras"), "--threads", "1"]  # a CPU's pixels can depend on the thread count
        for k, v in options.items():
            if k != "n":
                argv += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
        generated = assets / "generated"
        before = set(generated.glob("*.png")) if generated.exists() else set()
        try:
            assert cli.main(argv) == 0
        finally:
            torch.set_num_threads(2)
        [made] = set(generated.glob("*.png")) - before
        mine = Image.open(out / e["file"])
        assert np.array_equal(np.asarray(mine), np.asarray(Image.open(made))), e["line"]
        assert read_parameters(out / e["file"]) == read_parameters(made)
        assert e["pixels_sha256"] == pixels_hash(mine)
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


def test_a_rerun_skips_what_is_done(local_run):
    path, out, _ = local_run
    before = manifest(out)
    r = sumie("batch", path, "--outdir", out, "--quiet", "--steps=3", "--width=64", "--height=64", "--threads=2")
    assert r.returncode == 1 and "0 done, 11 skipped (already done), 2 failed (lines 8, 10)" in r.stdout
    assert manifest(out)[:len(before)] == before
    assert all("error" in e for e in manifest(out)[len(before):])


def test_a_batch_killed_by_sigterm_resumes_with_no_duplicates_and_no_gaps(tmp_path):
    prompts = ["a red circle", "a blue square", "a green triangle", "a red square", "a blue circle",
               "a green circle", "a red triangle", "a blue triangle", "a green square"]
    path = tmp_path / "prompts.txt"
    path.write_text("# shapes\n" + "\n".join(prompts) + "\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "sumie.cli", "batch", str(path), "--outdir", str(out), "--quiet", "--steps", "3",
            "--width", "64", "--height", "64", "--seed", "5"]
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if (out / "manifest.jsonl").exists() and len(manifest(out)) >= 5:
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    run.wait(60)
    assert run.returncode in (143, -signal.SIGTERM)
    killed = [e for e in manifest(out) if "file" in e]
    assert 5 <= len(killed) < len(prompts)
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"{len(prompts) - len(killed)} done, {len(killed)} skipped" in again.stdout
    done = [e for e in manifest(out) if "file" in e]
    assert sorted(e["line"] for e in done) == list(range(2, 2 + len(prompts)))  # each line once, none missing
    assert sorted(p.name for p in out.glob("*.png")) == sorted(e["file"] for e in done)
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]
    seeds = {e["line"]: e["seed"] for e in done}
    assert seeds == {line: jobs.derived_seed(5, line) for line in seeds}


def test_ray_with_two_actors_makes_the_same_images(assets, local_run):
    """Two actors of one CPU (one thread) each, against the local run's one thread: the same pixels."""
    pytest.importorskip("ray.data", reason='pip install "sumie[ray]"')
    path, local, _ = local_run
    out = assets / "ray"
    r = sumie("batch", path, "--outdir", out, "--quiet", "--steps=3", "--width=64", "--height=64", "--ray",
              "--workers", 2)
    assert r.returncode == 1 and "11 done, 0 skipped (already done), 2 failed (lines 8, 10)" in r.stdout, r.stderr
    first_run = [e for e in manifest(local)][:13]

    def comparable(entries):
        return sorted(json.dumps({k: v for k, v in e.items() if k != "worker"}, sort_keys=True) for e in entries)
    assert comparable(manifest(out)) == comparable(first_run)
    assert len({e["worker"] for e in manifest(out) if "worker" in e}) == 2  # two actor processes did work
    for e in manifest(out):
        if "file" in e:
            assert np.array_equal(np.asarray(Image.open(out / e["file"])), np.asarray(Image.open(local / e["file"])))


def test_csv_and_txt_jobs_are_read_as_the_command_line_reads_options():
    options = cli._job_options()
    rows = "prompt,steps,karras,size,sampler_name\n\"a red, round circle\",4,yes,64x48,Euler a\n,,,,\nsquare,,,,\n"
    import tempfile
    from pathlib import Path
    folder = Path(tempfile.mkdtemp())
    (folder / "jobs.csv").write_text(rows)
    tasks, failures = jobs.read(folder / "jobs.csv", {"steps": 2}, options, base_seed=1)
    assert not failures
    assert [t.line for t in tasks] == [2, 4]
    first = tasks[0].settings
    assert (first["prompt"], first["steps"], first["karras"], first["width"], first["height"], first["scheduler"]) \
        == ("a red, round circle", 4, True, 64, 48, "euler-a")
    assert tasks[1].settings["steps"] == 2 and tasks[1].seed == jobs.derived_seed(1, 4)
    (folder / "p.txt").write_text("one\n\n# a comment\ntwo\n")
    tasks, _ = jobs.read(folder / "p.txt", {"n": 2}, options)
    assert [(t.line, t.index, t.settings["prompt"]) for t in tasks] == [(1, 0, "one"), (1, 1, "one"), (4, 0, "two"),
                                                                       (4, 1, "two")]
    (folder / "bad.jsonl").write_text('{"prompt": "a", "steps": 2.5}\n{"prompt": "a", "stepz": 2}\n[1]\n'
                                      '{"prompt": "a", "karras": "maybe"}\n{"steps": 3}\n')
    tasks, failures = jobs.read(folder / "bad.jsonl", {}, options)
    assert not tasks
    assert [(f.line, f.error.split(":")[0]) for f in failures] == [
        (1, "steps 2.5"), (2, "unknown setting 'stepz'; use sumie generate's option names"),
        (3, "line 3 is not a JSON object"),
        (4, "karras 'maybe'"), (5, "give a prompt")]


@pytest.mark.parametrize("setup,args,needle", [
    (None, ["missing.jsonl"], "missing.jsonl: no such jobs file"),
    ("", ["jobs.txt"], "jobs.txt: no jobs in the file"),
    ("a\n", ["jobs.yaml"], "a jobs file ends in .txt (prompts), .jsonl or .csv"),
    ("a\n", ["jobs.txt", "--outdir", "nosuch://bucket/x"], "not a URI fsspec knows"),
    ("a\n", ["jobs.txt", "--outdir", "/proc/sumie"], "--outdir /proc/sumie: cannot write there"),
    ("a\n", ["jobs.txt", "--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: nothing answers at 127.0.0.1:1"),
    ("a\n", ["jobs.txt", "--workers", "0"], "--workers must be from 1 to 1024"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, setup, args, needle):
    if setup is not None:
        (tmp_path / args[0]).write_text(setup)
    argv = ["batch", str(tmp_path / args[0]), *args[1:]]
    if "--outdir" not in argv:
        argv += ["--outdir", str(tmp_path / "out")]
    r = sumie(*argv, timeout=30)  # an address that does not answer fails fast, it does not hang
    assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_ray_address_that_accepts_but_never_answers_fails_within_30_s(tmp_path):
    pytest.importorskip("ray", reason='pip install "sumie[ray]"')
    listener = socket.create_server(("127.0.0.1", 0))  # accepts connections (the backlog), never speaks
    try:
        (tmp_path / "p.txt").write_text("a red circle\n")
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        r = sumie("batch", tmp_path / "p.txt", "--outdir", tmp_path / "out", "--ray", address, timeout=30)
        assert r.returncode == 2 and f"--ray {address}:" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    finally:
        listener.close()


def test_ray_missing_says_how_to_install_it(monkeypatch):
    from sumie.batch import on_ray
    from sumie.errors import InputError
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r'pip install "sumie\[ray\]"'):
        on_ray.connect(None, workers=1, cpus=1, gpus=0)


def test_an_fsspec_uri_gets_the_images_and_the_manifest(tmp_path):
    """An object-store-like URI (fsspec's in-memory filesystem, in this process): whole objects, the manifest
    written at the end, and a rerun that skips what is there."""
    fsspec = pytest.importorskip("fsspec")
    from cli_util import cli_in_process
    path = tmp_path / "p.txt"
    path.write_text("a red circle\na blue square\n")
    argv = ["batch", path, "--outdir", "memory://sumie-test/run", "--quiet", "--steps", 2, "--threads", 1]
    try:
        code, stdout, stderr = cli_in_process(*argv)
        assert code == 0 and "2 done" in stdout, stderr
        fs = fsspec.filesystem("memory")
        entries = [json.loads(line) for line in fs.cat_file("/sumie-test/run/manifest.jsonl").decode().splitlines()]
        assert sorted(e["line"] for e in entries) == [1, 2]
        for e in entries:
            with fs.open(f"/sumie-test/run/{e['file']}", "rb") as f:
                assert pixels_hash(Image.open(f).convert("RGB")) == e["pixels_sha256"]
        code, stdout, _ = cli_in_process(*argv)
        assert code == 0 and "0 done, 2 skipped" in stdout
    finally:
        torch.set_num_threads(2)
