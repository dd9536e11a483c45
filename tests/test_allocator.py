"""`speed.allocator`: a pipeline sets glibc's malloc to keep freed memory."""

import pytest


FAULTS = r"""
import resource, sys
import torch
from sumie.pipeline import StableDiffusionPipeline
StableDiffusionPipeline.from_pretrained(sys.argv[1])
counts = []
for i in range(9):  # 64 MiB, made and freed: over glibc's largest mmap threshold; faults of each
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
print(sorted(counts)[4])  # the median: now and then a small block lands in the freed one and a new one is made
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc settings")
def test_a_pipeline_keeps_freed_memory_for_reuse(sd1_folder):
    """Making a pipeline sets glibc's malloc to reuse freed blocks (sumie.allocator): 64 MiB made and
    freed again and again takes no page faults (median over the calls); SUMIE_KEEP_FREED_MEMORY=0 leaves
    glibc as it is: a fault per page, every call."""
    import os
    import subprocess
    import sys
    faults = {}
    for setting in ("1", "0"):
        env = dict(os.environ, SUMIE_KEEP_FREED_MEMORY=setting)
        done = subprocess.run([sys.executable, "-c", FAULTS, str(sd1_folder)], capture_output=True, text=True,
                              env=env, check=True)
        faults[setting] = int(done.stdout.split()[-1])
    pages = 16 * 2**20 * 4 // 4096
    assert faults["1"] < 0.1 * pages < 0.9 * pages <= faults["0"], faults
