"""`speed.tuning`: algorithms chosen by measurement, never a slow one, kept on disk for the next process."""

import json
import time

import pytest
import torch

from sumie.speed import kernels, tuning


def slowed(run, seconds=0.05):
    return lambda *a: (time.sleep(seconds), run(*a))[1]


@pytest.fixture(autouse=True)
def tuning_on(monkeypatch):
    monkeypatch.setenv("SUMIE_TUNE", "1")  # conftest turns it off for the other tests


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    t = tuning.Tuner(tmp_path / "kernels.json")
    monkeypatch.setattr(tuning, "TUNER", t)
    return t


def conv_once(channels=256, size=16, batch=2):
    torch.manual_seed(0)
    conv = kernels.by_shape(torch.nn.Conv2d(channels, channels, 3, padding=1))
    with torch.no_grad():
        conv(torch.randn(batch, channels, size, size))
    return f"eager 3x3 {channels}x{size}x{size}->{channels} pad 1,1"


@pytest.mark.parametrize("slow", ["direct", "im2col", "winograd"])
def test_a_forced_slow_candidate_is_never_chosen(tuner, monkeypatch, slow):
    """With one algorithm made 50 ms slower than itself, the tuner keeps another; which one it keeps
    otherwise is the machine's business, so only the slow one is ruled out."""
    monkeypatch.setitem(kernels.EAGER, slow, slowed(kernels.EAGER[slow]))
    key = conv_once()
    assert tuner.choices[key] != slow and len(tuner.timings) == 1


def test_the_reference_is_kept_unless_another_is_clearly_faster(tuner, monkeypatch):
    """Candidates both slowed: oneDNN's direct convolution, the reference, stays."""
    for name in ("im2col", "winograd"):
        monkeypatch.setitem(kernels.EAGER, name, slowed(kernels.EAGER[name]))
    key = conv_once()
    assert tuner.choices[key] == "direct"


def test_a_winner_is_kept_only_when_it_wins_again():
    """A candidate fast on its first calls only (a lucky moment on a busy machine) loses the confirmation, timed
    in turns with the reference, and the reference stays; one fast throughout is kept."""
    calls = []

    def lucky():
        calls.append(None)
        time.sleep(0.002 if len(calls) <= 1 + tuning.TIMED_CALLS else 0.02)

    def reference():
        time.sleep(0.01)
    name, took = tuning.fastest({"reference": reference, "lucky": lucky})
    assert took["lucky"] < 0.5 * took["reference"] and took[tuning.AGAIN + "lucky"] > took[tuning.AGAIN + "reference"]
    assert name == "reference"
    assert tuning.fastest({"reference": reference, "fast": lambda: time.sleep(0.002)})[0] == "fast"


def test_choices_are_read_back_by_the_next_process_and_ignore_the_batch(tuner, tmp_path, monkeypatch):
    """The file holds the choice under this machine's name; a new tuner (a new process) serves it without
    measuring, for any batch."""
    key = conv_once()
    chosen = tuner.choices[key]
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved == {tuning.machine(): {key: chosen}}
    again = tuning.Tuner(tmp_path / "kernels.json")
    monkeypatch.setattr(tuning, "TUNER", again)
    monkeypatch.setattr(tuning, "fastest", lambda candidates: pytest.fail("timed again"))
    conv_once(batch=1), conv_once(batch=3)
    assert again.choices == {key: chosen} and again.timings == {}


def test_sumie_tune_0_takes_the_reference_everywhere(tuner, tmp_path, monkeypatch):
    """SUMIE_TUNE=0: diffusers' kernel (F.conv2d) even where it is made the slowest, and nothing is written."""
    monkeypatch.setenv("SUMIE_TUNE", "0")
    taken = []
    for name, run in kernels.EAGER.items():
        monkeypatch.setitem(kernels.EAGER, name, lambda *a, _run=run, _name=name: taken.append(_name) or _run(*a))
    monkeypatch.setitem(kernels.EAGER, "direct", slowed(kernels.EAGER["direct"]))
    conv_once()
    assert taken == ["direct"] and not (tmp_path / "kernels.json").exists()


def test_small_calls_are_not_tuned():
    """A reference that takes under MIN_SECONDS is kept without timing the others (bounded cost). (A real
    small convolution is no test of this: oneDNN took 24 ms for an 8-channel 4x4 one on an AMD EPYC.)"""
    name, took = tuning.fastest({"reference": lambda: None, "other": lambda: pytest.fail("timed a small call")})
    assert name == "reference" and list(took) == ["reference"]


def test_an_unwritable_cache_keeps_choices_in_the_process(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    t = tuning.Tuner(blocker / "kernels.json")  # its folder is a file
    monkeypatch.setattr(tuning, "TUNER", t)
    key = conv_once()
    assert key in t.choices and len(t.timings) == 1


def test_eager_winograd4_is_a_candidate_in_float32_where_its_copy_is_small(tuner, monkeypatch):
    """F(4x4, 3x3) is timed where its transformed weight, made on each call, is small (64 channels), not where it
    would be over WINOGRAD4_MAX_BYTES (768 channels: 85 MB), nor in bfloat16."""
    offered = []
    real = tuning.fastest
    monkeypatch.setattr(tuning, "fastest", lambda candidates: offered.append(tuple(candidates)) or real(candidates))
    torch.manual_seed(0)
    for channels, size, dtype in ((64, 32, torch.float32), (768, 4, torch.float32), (64, 32, torch.bfloat16)):
        conv = kernels.by_shape(torch.nn.Conv2d(channels, channels, 3, padding=1)).to(dtype)
        with torch.no_grad():
            conv(torch.randn(1, channels, size, size, dtype=dtype))
    assert "winograd4" in offered[0] and all("winograd4" not in names for names in offered[1:]), offered


@pytest.mark.skipif(not kernels.onednn_linear(), reason="this torch has no oneDNN linear")
@pytest.mark.parametrize("slow", ["blas", "onednn"])
def test_a_forced_slow_linear_is_never_chosen(tuner, monkeypatch, slow):
    """A Linear's two algorithms, one made 50 ms slower: the other is kept, under a key naming the rows of one
    image and not the batch."""
    monkeypatch.setitem(kernels.LINEAR, slow, slowed(kernels.LINEAR[slow]))
    torch.manual_seed(0)
    layer = kernels.by_shape(torch.nn.Sequential(torch.nn.Linear(640, 640)))
    with torch.no_grad():
        layer(torch.randn(2, 1024, 640))
    assert tuner.choices == {"eager linear 640->640 rows 1024": {"blas": "onednn", "onednn": "blas"}[slow]}
