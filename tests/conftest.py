import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)

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
