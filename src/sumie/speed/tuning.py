"""Algorithm choice by measurement, on the machine that runs: the first time a layer shape meets an input
shape, each exact candidate is timed and the fastest is kept, and the choices are cached on disk.

Which 3x3 convolution is fastest (oneDNN's direct one, im2col, Winograd) depends on the CPU: a threshold
measured on an Intel Xeon lost on an AMD EPYC (docs/benchmarks.md, "Kernel tuning"). So nothing here is a
constant about speed:

- a call is named by a key: the mode ("eager", "packed"), the channels, the image's size and the padding,
  never the batch. The candidates are timed on the same two images whatever the batch (`sample`), so the
  choice, and an image's pixels, do not depend on the batch it is made in;
- the first candidate is the reference (oneDNN's, what diffusers runs). Another is kept only when it takes
  at most MARGIN of the reference's time, and again when the two are timed once more in turns
  (CONFIRMATIONS): on a busy machine one lucky call can make a loser look fast. So a choice does not lose
  to the reference beyond noise;
- tuning is bounded: a large image is timed on a band of its rows (`sample`: at most SAMPLE_POSITIONS
  positions), a call whose reference takes under MIN_SECONDS keeps the reference untried, a candidate whose
  first call takes over twice the best time so far is dropped, and calls over LONG_SECONDS are timed once
  after their first;
- the choices go to `cache_dir() / "kernels.json"`, under the name of the machine (`machine()`: CPU model,
  ISA, torch version, threads, and CANDIDATES, so that choices made among fewer candidates are measured
  again), so the next process on this machine starts with them;
- SUMIE_TUNE=0 turns tuning off: the reference everywhere, diffusers' kernels exactly.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Callable

import torch

MARGIN = 0.95  # another candidate must take at most this share of the reference's time
MIN_SECONDS = 1e-3  # calls faster than this keep the reference: tuning them costs more than it can save
TIMED_CALLS = 2  # timed calls per candidate after its first (its warm-up); the minimum counts
LONG_SECONDS = 0.05  # a first call this long is followed by one timed call, not TIMED_CALLS
CONFIRMATIONS = 2  # rounds that time the winner and the reference again, in turns (one where calls are long)
AGAIN = "again: "  # the confirmation's times, in `fastest`'s timings, under this prefix and the candidate's name
CANDIDATES = 4  # raised whenever what is timed changes (2: eager F(4x4, 3x3), Linear, two images;
#                3: packed Winograd by oneDNN products, the confirmation; 4: packed F(4x4, 3x3) kept up to C = H W)
SAMPLE_POSITIONS, SAMPLE_ROWS = 64 * 64, 16  # a tuning input's positions at most, whole rows, at least 16 rows
SAMPLE_IMAGES = 2  # a tuning input's images: a guided step's pair

Candidates = dict[str, Callable[[], object]]  # name -> one call on the tuning input; the reference first


def enabled() -> bool:
    return os.environ.get("SUMIE_TUNE", "1") != "0"


def cache_dir() -> Path:
    """SUMIE_CACHE_DIR, else $XDG_CACHE_HOME/sumie, else ~/.cache/sumie."""
    if os.environ.get("SUMIE_CACHE_DIR"):
        return Path(os.environ["SUMIE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sumie"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """What a choice holds for: the CPU model, the ISA torch and oneDNN use, torch's version and threads, and
    the candidates' generation."""
    isa = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        isa += f", oneDNN up to {os.environ['ONEDNN_MAX_CPU_ISA']}"
    threads = torch.get_num_threads()
    return f"{cpu_model()} | {isa} | torch {torch.__version__} | {threads} threads | candidates {CANDIDATES}"


def sample(x: torch.Tensor) -> torch.Tensor:
    """What the candidates for x (B, C, H, W) are timed on, whatever x's batch: two images, as a guided step
    runs them (x's first two, or its first twice), each cut to its first rows where the two have more than
    SAMPLE_POSITIONS positions (past that, a convolution's time per position hardly changes). Not one image:
    where a layer is bound by reading its weights, a second image costs the candidates differently."""
    return images(x[:, :, :max(SAMPLE_ROWS, SAMPLE_POSITIONS // (SAMPLE_IMAGES * x.shape[-1]))])


def images(x: torch.Tensor) -> torch.Tensor:
    """x's first SAMPLE_IMAGES images, or its first repeated: (B, ...) -> (SAMPLE_IMAGES, ...)."""
    first = x[:SAMPLE_IMAGES]
    return first if len(first) == SAMPLE_IMAGES else first.expand(SAMPLE_IMAGES, *first.shape[1:]).contiguous()


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _best(call: Callable[[], object], first: float) -> float:
    """The best of a first call's `first` seconds and of the timed calls after it (TIMED_CALLS, or one
    after a first call over LONG_SECONDS)."""
    more = 1 if first > LONG_SECONDS else TIMED_CALLS
    return min(first, *(_seconds(call) for _ in range(more)))


def fastest(candidates: Candidates) -> tuple[str, dict[str, float]]:
    """The name of the candidate to keep (module docstring), and the seconds each timed one took (the best
    call; the confirmation's under AGAIN)."""
    reference, *others = candidates
    took = {reference: _best(candidates[reference], _seconds(candidates[reference]))}
    if took[reference] < MIN_SECONDS:  # the best call, not the first: a first call can be slow for other reasons
        return reference, took
    best = reference
    for name in others:
        first = _seconds(candidates[name])
        if first > 2 * took[best]:
            continue  # dropped after one call
        took[name] = _best(candidates[name], first)
        if took[name] < took[best]:
            best = name
    if took[best] > MARGIN * took[reference]:
        return reference, took
    again = {reference: [], best: []}  # the confirmation: both once more, in turns
    for _ in range(1 if took[reference] > LONG_SECONDS else CONFIRMATIONS):
        for name, seconds in again.items():
            seconds.append(_seconds(candidates[name]))
    took |= {f"{AGAIN}{name}": min(seconds) for name, seconds in again.items()}
    return (best if took[AGAIN + best] <= MARGIN * took[AGAIN + reference] else reference), took


class Tuner:
    """The choices of this machine, read from `path` when first needed and written back as each is made."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.choices: dict[str, str] | None = None
        self.timings: dict[str, dict[str, float]] = {}  # key -> seconds per candidate, for keys tuned here
        self._lock = threading.Lock()

    def choose(self, key: str, names: tuple[str, ...], candidates: Callable[[], Candidates]) -> str:
        """The one of `names` (the reference first) kept for `key`; `candidates()`, the calls to time by
        name, is made only when the key has no choice among them yet."""
        if not enabled():
            return names[0]
        known = (self.choices or {}).get(key)  # every call of every step: no lock once the choice is made
        if known in names:
            return known
        with self._lock:
            if self.choices is None:
                self.choices = self._read().get(machine(), {})
            if self.choices.get(key) not in names:
                self.choices[key], self.timings[key] = fastest(candidates())
                self._write(key)
            return self.choices[key]

    def _file(self) -> Path:
        return self.path or cache_dir() / "kernels.json"

    def _read(self) -> dict:
        try:
            return json.loads(self._file().read_text())
        except (OSError, ValueError):
            return {}

    def _write(self, key: str) -> None:
        """Merge this choice into the file (other processes may have added theirs), atomically."""
        path = self._file()
        everything = self._read()
        everything.setdefault(machine(), {})[key] = self.choices[key]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(everything, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: the choices hold for this process only


TUNER = Tuner()


def choose(key: str, names: tuple[str, ...], candidates: Callable[[], Candidates]) -> str:
    return TUNER.choose(key, names, candidates)
