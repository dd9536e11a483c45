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


MAPPINGS = r"""
import torch
from sumie.speed import allocator
assert allocator.keep_freed_memory()


def where(t):  # the /proc/self/maps line of the mapping that holds t's memory
    address = t.data_ptr()
    for line in open("/proc/self/maps"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= address < hi:
            return line.split(None, 5)[5].strip() if len(line.split()) > 5 else "", (lo, hi)


on_heap = torch.ones(2**21)  # 8 MiB
with allocator.own_mappings():
    own = torch.ones(2**21)
    small = torch.ones(1000)
after = torch.ones(2**21)
own_range = where(own)[1]
del own
print(where(on_heap)[0], where(small)[0], where(after)[0], own_range[1] - own_range[0] >= 8 * 2**20,
      not any(line.startswith(f"{own_range[0]:x}-") for line in open("/proc/self/maps")))
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc settings")
def test_blocks_made_inside_own_mappings_leave_the_heap_alone():
    """With freed memory kept (every block on the heap), a block of 8 MiB made inside `own_mappings()` is a
    mapping of its own, unmapped when freed; a small one inside, and large ones before and after, are on the
    heap (packed weight copies are made inside it, `speed.packing`)."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", MAPPINGS], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[heap]", "[heap]", "[heap]", "True", "True"], done.stdout
