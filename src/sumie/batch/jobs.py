"""A batch's jobs file -> the images to make (`Task`) and the lines that cannot be read (`Failure`).

Formats, by suffix:
- `.txt`: one prompt a line; blank lines and lines that start with `#` are skipped;
- `.jsonl`: one JSON object a line, keyed by `sumie generate`'s option names (`negative_prompt`, `steps`,
  `guidance`, `scheduler`, `karras`, `width`, `height`, `seed`, `n`, `model`, `init_image`, ...), plus `size`
  ("WxH") and A1111's names `cfg_scale`, `sampler_name`, `denoising_strength`; blank lines are skipped;
- `.csv`: a header of those names, then one job a row; an empty cell takes the command line's value.

A job is numbered by its line in the file (a CSV job by its row, the header being row 1). The number names its
images (`Task.file`) and, for a job without a seed, derives one from the base seed (`derived_seed`), so that a
rerun makes the same images.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError, SumieError
from ..generate import resolve

SUFFIXES = (".txt", ".jsonl", ".csv")
ALIASES = {"cfg_scale": "guidance", "denoising_strength": "strength", "sampler": "scheduler"}


@dataclass(frozen=True)
class Option:
    """How a setting's value is read: `kind` converts text (as argparse's `type`); `flag`: a yes/no option."""
    kind: Callable[[str], Any] | None = None
    choices: tuple | None = None
    flag: bool = False


@dataclass(frozen=True)
class Task:
    """One image of one job."""
    line: int  # the job's line (or CSV row) in the jobs file, from 1
    index: int  # the image's place in its job, from 0 (the job's `n` images)
    seed: int  # the image's seed: the job's seed + index
    settings: dict  # the job's settings, resolved (`generate.resolve`), with its seed
    job: Any  # the job as read: a prompt (.txt) or an object (.jsonl, .csv)

    @property
    def file(self) -> str:
        return f"{self.line:05d}-{self.index:02d}-{self.seed}.png"


@dataclass(frozen=True)
class Failure:
    """A job that makes no image: its line, the job as read, and why."""
    line: int
    job: Any
    error: str
    index: int | None = None  # the image that failed, when the job's others may not


def derived_seed(base: int, line: int) -> int:
    """The seed of a job without one: a hash of the base seed and the job's line, below 2**32 like A1111's."""
    return int.from_bytes(hashlib.sha256(f"sumie batch {base} {line}".encode()).digest()[:4], "big")


def read(path: str | Path, defaults: dict, options: dict[str, Option], base_seed: int = 0
         ) -> tuple[list[Task], list[Failure]]:
    """The images of every job in `path`, over `defaults` (the command line's settings), and the failed jobs."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"{path}: a jobs file ends in .txt (prompts), .jsonl or .csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such jobs file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the jobs file ({e})") from None
    tasks, failures = [], []
    for line, job, unreadable in _jobs(text, path.suffix.lower()):
        try:
            if unreadable:
                raise InputError(unreadable)
            settings = {**defaults, **(settings_of(job, options) if isinstance(job, dict) else {"prompt": job})}
            settings.setdefault("seed", derived_seed(base_seed, line))
            settings = resolve(settings)
        except SumieError as e:
            failures.append(Failure(line, job, str(e)))
            continue
        tasks += [Task(line, i, settings["seed"] + i, settings, job) for i in range(settings["n"])]
    if not tasks and not failures:
        raise InputError(f"{path}: no jobs in the file; write one prompt a line (.txt), one JSON object a line "
                         f"(.jsonl) or a header and rows (.csv)")
    return tasks, failures


def _jobs(text: str, suffix: str):
    """(line number, job, None) for each job, a prompt (str) or a dict; (line number, text, why) for one that
    cannot be read."""
    if suffix == ".csv":
        for number, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            if None in row:
                yield number, row[None], f"row {number} has more cells than the header"
            elif any(v and v.strip() for v in row.values()):
                yield number, {k.strip(): v for k, v in row.items() if k and v and v.strip()}, None
        return
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or (suffix == ".txt" and raw.lstrip().startswith("#")):
            continue
        if suffix == ".txt":
            yield number, raw.strip(), None
            continue
        try:
            job = json.loads(raw)
        except json.JSONDecodeError as e:
            yield number, raw, f"line {number} is not JSON ({e.msg} at column {e.colno})"
            continue
        yield (number, job, None) if isinstance(job, dict) else (number, raw, f"line {number} is not a JSON object")


def settings_of(job: dict, options: dict[str, Option]) -> dict:
    """A job's keys and values -> settings, converted as the command line converts them."""
    out = {}
    for key, value in job.items():
        key = key.strip().replace("-", "_")
        if key == "size":
            out["width"], out["height"] = _size(value)
            continue
        if key == "sampler_name":  # A1111's sampler name, "Karras" included or not
            from ..schedulers import from_a1111
            out["scheduler"], karras = from_a1111(str(value))
            out["karras"] = out.get("karras", False) or karras
            continue
        key = ALIASES.get(key, key)
        if key not in options:
            raise InputError(f"unknown setting {key!r}; use sumie generate's option names: "
                             f"{', '.join(sorted(options))}")
        out[key] = _value(key, value, options[key])
    return out


def _size(value) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in str(value).lower().split("x"))
        return w, h
    except ValueError:
        raise InputError(f"size {value!r}: write it as WIDTHxHEIGHT, e.g. 512x768") from None


def _value(key: str, value, option: Option):
    if value is None:
        raise InputError(f"{key}: null; leave the setting out to take the default")
    if option.flag:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{key} {value!r}: expected true or false")
    kind = option.kind or str
    if isinstance(value, (bool, dict, list)) or (isinstance(value, float) and kind is not float and
                                                 not value.is_integer()):
        raise InputError(f"{key} {value!r}: expected {_NAMES.get(kind, 'a whole number')}")
    try:
        value = kind(int(value) if isinstance(value, float) and kind is not float else value)
    except Exception:  # argparse's types raise ValueError or ArgumentTypeError
        raise InputError(f"{key} {value!r}: expected {_NAMES.get(kind, 'a whole number')}") from None
    if option.choices is not None and value not in option.choices:
        raise InputError(f"{key} {value!r}: choose one of {', '.join(map(str, option.choices))}")
    return value


_NAMES = {float: "a number", str: "text"}
