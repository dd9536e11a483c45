"""Keep freed memory in the process: glibc malloc settings for inference on the CPU.

torch allocates every CPU tensor with the C library's malloc. glibc gives memory back to the kernel in two
ways: a block above its mmap threshold (128 KiB at first, rising to at most 32 MiB as such blocks are
freed) is a mapping of its own, unmapped when freed, and free space at the top of the heap beyond its trim
threshold is returned. Either way the next tensor that size takes a page fault for every 4 KiB page it
touches. A UNet step allocates and frees its activations (10-80 MB each) over and over, so it keeps paying
those faults (counted in docs/benchmarks.md, "Allocator"). AUTOMATIC1111's launcher preloads tcmalloc for the
same reason.

`keep_freed_memory()` sets glibc's M_MMAP_MAX to 0 (every block comes from the heap) and M_TRIM_THRESHOLD
to 2 GiB (the heap's top is returned only when more than that is free), so freed activations are reused. Peak
memory grows a little, and what the process holds after a peak is not given back until it exits. It applies
to the whole process, is called when a pipeline is made, and does nothing on other C libraries or when the
environment sets SUMIE_KEEP_FREED_MEMORY=0.

Long-lived blocks would fragment such a heap: a packed weight copy (`packing`) remade for another image size
is freed in the middle of it, and its replacement, often of another size, goes elsewhere. `own_mappings()`
lets the blocks of at least OWN_MAPPING_BYTES made inside it take mappings of their own (M_MMAP_MAX above 0
and a fixed M_MMAP_THRESHOLD while it lasts), which go back to the kernel when freed. Its effect on peak
memory: docs/benchmarks.md, "Engine targets".
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt parameters, glibc's malloc.h
TRIM_BYTES = 2**31 - 1  # the largest trim threshold mallopt takes
TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={TRIM_BYTES}"  # the same, as GLIBC_TUNABLES
OWN_MAPPING_BYTES = 1 << 20  # inside own_mappings(), blocks from this size get a mapping of their own
MAPPINGS = 1 << 16  # M_MMAP_MAX inside own_mappings(): glibc's default
_done = False
_inside, _lock = 0, threading.Lock()  # own_mappings() in progress, over all threads


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (module docstring). True if it is set."""
    global _done
    if not _done and os.environ.get("SUMIE_KEEP_FREED_MEMORY", "1") != "0" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        _done = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    return _done


@contextlib.contextmanager
def own_mappings():
    """Inside, blocks of at least OWN_MAPPING_BYTES are mappings of their own, given back to the kernel when freed
    (module docstring); elsewhere, or where `keep_freed_memory` is not set, it changes nothing."""
    global _inside
    with _lock:
        counted = _done
        if counted:
            if not _inside:
                libc = ctypes.CDLL(None)
                libc.mallopt(M_MMAP_THRESHOLD, OWN_MAPPING_BYTES)
                libc.mallopt(M_MMAP_MAX, MAPPINGS)
            _inside += 1
    try:
        yield
    finally:
        if counted:
            with _lock:
                _inside -= 1
                if not _inside:
                    ctypes.CDLL(None).mallopt(M_MMAP_MAX, 0)
