"""`speed.compile`: pipe.compile()'s backends give the eager path's images."""

import re

import numpy as np
import pytest
import torch


def test_compile_matches_eager(plain_and):
    """On CPU, compile() packs every network's weights."""
    pipe = []
    plain, packed = plain_and(lambda p: (pipe.append(p), p.compile()))
    assert np.abs(plain - packed).max() * 255 <= 0.05
    packed_layers = [m for m in pipe[0].unet.modules() if "_packed" in m.__dict__]
    assert len(packed_layers) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in pipe[0].unet.modules())
    from sumie.errors import InputError
    for kwargs, needle in (({"backend": "jit"}, "unknown compile backend 'jit'"),
                           ({"mode": "max-autotune"}, "apply with pipe.compile(backend='inductor')")):
        with pytest.raises(InputError, match=re.escape(needle)):
            pipe[0].compile(**kwargs)


@pytest.mark.slow
def test_inductor_matches_eager(plain_and):
    """The inductor backend compiles the UNet (minutes of C++ compiling on a 2-core CPU: slow tier)."""
    plain, compiled = plain_and(lambda p: p.compile(backend="inductor"))
    assert np.abs(plain - compiled).max() * 255 <= 0.05
