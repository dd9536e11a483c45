import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)
os.environ["SUMIE_CACHE_DIR"] = tempfile.mkdtemp(prefix="sumie-cache-")  # kernel choices: never the user's
# Kernel tuning off (oneDNN everywhere) unless a test turns it on: timing every new shape of every small
# model cost minutes on a slow CPU. The candidates are tested equal in test_kernels/test_packing (`force`),
# the tuner in test_tuning.
os.environ.setdefault("SUMIE_TUNE", "0")


from oracle import write_model_folder  # noqa: E402


@pytest.fixture(scope="session")
def sd1_folder(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("sd1"), "sd1", seed=0)


@pytest.fixture(scope="session")
def sd2_folder(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("sd2"), "sd2", seed=10)


@pytest.fixture(params=["sd1", "sd2"])
def model_folder(request, sd1_folder, sd2_folder):
    return {"sd1": sd1_folder, "sd2": sd2_folder}[request.param]


@pytest.fixture
def copy(sd1_folder, tmp_path):
    """A copy of the small SD 1 folder that a test may break."""
    dst = tmp_path / "model"
    shutil.copytree(sd1_folder, dst)
    return dst


@pytest.fixture(scope="session")
def single_files(sd1_folder, sd2_folder, tmp_path_factory):
    """The small SD 1 and SD 2 folders as original-layout single files."""
    from sumie.weights import convert
    out = tmp_path_factory.mktemp("single")
    return {kind: convert(folder, out / f"{kind}.safetensors") for kind, folder in
            (("sd1", sd1_folder), ("sd2", sd2_folder))}


KW = dict(prompt="a cat", num_inference_steps=3, seed=1, output_type="np", height=64, width=64)


@pytest.fixture
def plain_and(sd1_folder):
    """enable -> (the small SD 1 pipeline's images before `enable(pipe)`, and after)."""
    from sumie.pipeline import StableDiffusionPipeline

    def run(enable):
        pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
        pipe.set_progress_bar_config(disable=True)
        plain = pipe(**KW).images
        enable(pipe)
        return plain, pipe(**KW).images
    return run


@pytest.fixture
def error_of():
    """fn -> the one-line message of the SumieError that fn() raises."""
    from sumie.errors import SumieError

    def message(fn):
        with pytest.raises(SumieError) as info:
            fn()
        text = str(info.value)
        assert "\n" not in text and len(text) < 600
        return text
    return message


@pytest.fixture
def force(monkeypatch):
    """name -> every tuned choice (`speed.tuning`) is `name` where it is a candidate, else the reference."""
    from sumie.speed import tuning

    def choose(key, names, candidates):
        return forced[0] if forced[0] in names else names[0]
    forced = [None]
    monkeypatch.setattr(tuning, "choose", choose)
    return lambda name: forced.__setitem__(0, name)
