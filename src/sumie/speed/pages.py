"""Give back the memory of a memory-mapped weight that a packed copy has replaced (Linux).

A model loaded from .safetensors views the file through a private mapping (`weights.files.read_safetensors`):
reading a weight brings its pages into the process's resident memory, where they stay. Once `packing` keeps a
copy of the weight in another layout, the original is not read again for inference, yet both copies count.
`release(weight)` drops the original's pages from the process (madvise MADV_DONTNEED); the page cache keeps
them, and touching the weight again (a LoRA, `unpack`, a new input shape) reads them back from the file.

Only pages that are the file's own are dropped. A page written in place since loading is an anonymous copy
in a private mapping, and dropping it would lose the write, so a weight with any such page (or not mapped
from a file at all) is left alone. /proc/self/pagemap tells the two apart (bit 61: a file page;
Documentation/admin-guide/mm/pagemap.rst). SUMIE_RELEASE_PAGES=0 turns this off.
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import torch

MADV_DONTNEED = 4  # <sys/mman.h>
PRESENT, FILE_PAGE = 1 << 63, 1 << 61  # pagemap entry bits
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _madvise


def _entries(start: int, count: int) -> np.ndarray | None:
    """pagemap entries (uint64) of the `count` pages from address `start`, or None where pagemap is unreadable."""
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(start // PAGE * 8)
            raw = f.read(count * 8)
    except OSError:
        return None
    return np.frombuffer(raw, dtype=np.uint64) if len(raw) == count * 8 else None


def release(weight: torch.Tensor) -> bool:
    """Drop the whole pages inside `weight`'s memory from the process if every resident one is an unwritten
    page of a mapped file. True if they were dropped."""
    if not sys.platform.startswith("linux") or os.environ.get("SUMIE_RELEASE_PAGES", "1") == "0" \
            or weight.device.type != "cpu":
        return False
    address = weight.data_ptr()
    start = -(-address // PAGE) * PAGE  # pages wholly inside the tensor: a neighbour's page is left alone
    end = (address + weight.numel() * weight.element_size()) // PAGE * PAGE
    if end <= start:
        return False
    entries = _entries(start, (end - start) // PAGE)
    if entries is None:
        return False
    present = entries[(entries & np.uint64(PRESENT)) != 0]
    if present.size == 0 or ((present & np.uint64(FILE_PAGE)) == 0).any():
        return False  # nothing to drop, or a page this process wrote (or anonymous memory)
    return _libc_madvise()(start, end - start, MADV_DONTNEED) == 0
