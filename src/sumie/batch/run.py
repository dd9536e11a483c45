"""A batch run: skip what the manifest says is done, make the rest (here or on Ray), record each image."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from .jobs import Failure, Task
from .output import Output
from .render import Renderer, failure_entry, model_key

Runner = Callable[[list[Task]], Iterable[dict]]  # tasks -> their manifest entries, as they land


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0  # already in the manifest and on disk
    failed: int = 0  # images, or jobs that could not be read
    failed_lines: set[int] = field(default_factory=set)

    def __str__(self) -> str:
        lines = sorted(self.failed_lines)
        lines = f" (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))})" if lines else ""
        return f"{self.done} done, {self.skipped} skipped (already done), {self.failed} failed{lines}"


def jsonable(value):
    return json.loads(json.dumps(value))


def todo(tasks: list[Task], out: Output) -> list[Task]:
    """The tasks whose image is not both in the manifest, made from the same settings, and in the folder.
    Sorted by model, so that each model loads once."""
    done = {(e["line"], e["index"]): e for e in out.read_manifest() if "file" in e}  # the last entry wins
    left = []
    for task in tasks:
        entry = done.get((task.line, task.index))
        if not (entry and entry["file"] == task.file and entry["params"] == jsonable(task.settings)
                and out.exists(task.file)):
            left.append(task)
    return sorted(left, key=lambda t: model_key(t.settings))


def local(out: Output, *, allow_pickle: bool = False) -> Runner:
    """Make the tasks in this process, one after another."""
    def run(tasks: list[Task]) -> Iterator[dict]:
        renderer = Renderer(out, allow_pickle=allow_pickle)
        for task in tasks:
            yield renderer(task)
    return run


def run(tasks: list[Task], failures: list[Failure], out: Output, runner: Runner, *, quiet: bool = False) -> Summary:
    """Record the unreadable jobs, then make every image not yet done, appending each entry as it lands."""
    from tqdm import tqdm
    left = todo(tasks, out)
    summary = Summary(skipped=len(tasks) - len(left))

    def record(entry: dict) -> None:
        out.append(entry)
        if "error" in entry:
            summary.failed += 1
            summary.failed_lines.add(entry["line"])
            bar.write(f"sumie: line {entry['line']}: {entry['error']}")
        else:
            summary.done += 1
    try:
        with tqdm(total=len(left), unit="img", desc="batch", disable=quiet, dynamic_ncols=True) as bar:
            for f in failures:
                record(failure_entry(f.line, f.job, f.error))
            for entry in runner(left) if left else ():
                record(entry)
                bar.update()
    finally:
        out.flush()
    return summary
