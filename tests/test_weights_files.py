"""`weights.files`: safetensors memory-mapped and checked, pickles refused unless asked, and a corpus of bad
files refused in one line."""

import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from cli_util import cli_in_process
from safetensors.torch import load_file

from sumie.errors import WeightsError
from sumie.weights import load_component, load_folder, read_checkpoint


def test_tensor_pickle_loads_only_when_allowed(single_files, tmp_path):
    state = load_file(single_files["sd1"])
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "model.ckpt")
    with pytest.raises(WeightsError, match="pickle, which can run arbitrary code"):
        read_checkpoint(tmp_path / "model.ckpt")
    loaded = read_checkpoint(tmp_path / "model.ckpt", allow_pickle=True)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


class Payload:
    """Unpickling this would run code (touch a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_inputs(root, sd1_folder, sd2_folder):
    """name -> (path given as --model, expected words)."""
    root.mkdir()
    marker = root / "PWNED"
    cases = {}
    for suffix in (".ckpt", ".bin"):
        p = root / f"evil{suffix}"
        p.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
        cases[f"pickle{suffix}"] = (p, "pickle")
    (root / "empty.safetensors").write_bytes(b"")
    cases["zero bytes"] = (root / "empty.safetensors", "too short")
    (root / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 4\n")
    cases["lfs pointer"] = (root / "lfs.safetensors", "git-lfs pointer")
    (root / "random.safetensors").write_bytes(os.urandom(4096))
    cases["random bytes"] = (root / "random.safetensors", "not a valid safetensors")
    (root / "past.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    cases["header past EOF"] = (root / "past.safetensors", "header claims")
    whole = (sd1_folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    (root / "cut.safetensors").write_bytes(whole[: len(whole) // 3])
    cases["truncated"] = (root / "cut.safetensors", "truncated")
    (root / "no_index").mkdir()
    cases["no model_index"] = (root / "no_index", "no model_index.json")
    shutil.copytree(sd1_folder, root / "broken_config")
    (root / "broken_config" / "vae" / "config.json").write_text("{nope")
    cases["broken config"] = (root / "broken_config", "not valid JSON")
    shutil.copytree(sd1_folder, root / "other_arch")
    shutil.copy(sd2_folder / "unet" / "diffusion_pytorch_model.safetensors", root / "other_arch" / "unet")
    cases["other architecture"] = (root / "other_arch", "mis-shaped")
    cases["missing path"] = (root / "nope.safetensors", "does not exist")
    return cases, marker


def test_bad_inputs_are_refused_in_one_line(sd1_folder, sd2_folder, tmp_path):
    cases, marker = bad_inputs(tmp_path / "bad", sd1_folder, sd2_folder)
    for i, (name, (path, words)) in enumerate(cases.items()):
        for extra in ([], ["--allow-pickle"]) if name.startswith("pickle") else ([],):
            if i == 0:  # one in a real process, the others in this one (the same code, no interpreter start)
                r = subprocess.run([sys.executable, "-m", "sumie.cli", "generate", "x", "--model", str(path),
                                    "--quiet", *extra], capture_output=True, text=True, timeout=120)
                code, stderr = r.returncode, r.stderr
            else:
                code, _, stderr = cli_in_process("generate", "x", "--model", path, "--quiet", *extra)
            assert code == 2, (name, stderr)
            assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, (name, stderr)
            assert words in stderr or (extra and "refused" in stderr), (name, stderr)
    assert not marker.exists()  # no code ran
    r = subprocess.run([sys.executable, "-m", "sumie.cli", "info", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "is a folder" in r.stderr  # a directory where a file is expected


def test_truncated_safetensors(copy, error_of):
    path = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in error_of(lambda: load_folder(copy))


@pytest.mark.parametrize("content,needle", [
    (b"", "too short"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-lfs pointer"),
    (bytes(range(256)) * 4, "header claims"),
    ((10 ** 9).to_bytes(8, "little") + b"{}", "header claims"),
    ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    ((4).to_bytes(8, "little") + b"nope", "not JSON"),
])
def test_broken_weight_files(copy, content, needle, error_of):
    (copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(content)
    assert needle in error_of(lambda: load_component(copy, "vae"))


def mapped_ranges(path):
    """Address ranges where `path` is memory-mapped into this process (Linux /proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_weights_are_memory_mapped(sd1_folder):
    """float32 on CPU: the parameters are views of the mapped file, not copies."""
    path = (sd1_folder / "unet" / "diffusion_pytorch_model.safetensors").resolve()
    unet = load_component(sd1_folder, "unet")
    ranges = mapped_ranges(path)
    assert ranges
    assert all(any(lo <= p.data_ptr() < hi for lo, hi in ranges) for p in unet.parameters())
    half = load_component(sd1_folder, "unet", dtype=torch.float16)  # a dtype change must copy
    assert not any(lo <= half.conv_in.weight.data_ptr() < hi for lo, hi in mapped_ranges(path))
