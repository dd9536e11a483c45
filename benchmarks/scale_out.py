"""`sumie batch` throughput on this machine: local against Ray Data actors, and what the Ray path costs an image.

    python benchmarks/scale_out.py [--images 24] [--write]

sumie-tiny at its defaults (64², 20 steps), one prompt a line. Runs, each into a fresh folder:
- local, 1 thread and 2 threads (this process, the `sumie batch` code path);
- Ray, 1 actor of 1 CPU, and 2 actors of 1 CPU each, on a local Ray started once.
Steady rate: images after the first of each worker, over the time from that first image to the last (model
loads and Ray's start excluded). The Ray path's cost per image: one actor's steady time per image minus the
local 1-thread one (the same work, the same thread count).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sumie.batch import jobs, on_ray, run  # noqa: E402
from sumie.batch.output import Output  # noqa: E402
from sumie.cli import _job_options  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a red square", "a blue circle", "a green circle",
           "a red triangle", "a blue triangle"]


def timed(runner, tasks: list) -> tuple[float, list[tuple[float, str]]]:
    """(wall seconds, [(arrival time, worker)]) of one run of `tasks`."""
    start, arrivals = time.perf_counter(), []
    for entry in runner(tasks):
        assert "error" not in entry, entry
        arrivals.append((time.perf_counter() - start, entry.get("worker", "local")))
    return time.perf_counter() - start, arrivals


def steady(arrivals: list[tuple[float, str]]) -> float:
    """Images a minute, counting from each worker's first image (its model load excluded)."""
    firsts, later = {}, []
    for t, worker in arrivals:
        if worker in firsts:
            later.append(t)
        else:
            firsts[worker] = t
    if not later:
        return float("nan")
    return 60 * len(later) / (max(later) - min(firsts.values()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sumie-scale-"))
    path = root / "prompts.txt"
    path.write_text("\n".join(PROMPTS[i % len(PROMPTS)] for i in range(args.images)) + "\n")
    tasks, _ = jobs.read(path, {}, _job_options())
    rows, rates = [], {}
    for name, threads in (("local, 1 thread", 1), ("local, 2 threads", 2)):
        torch.set_num_threads(threads)
        wall, arrivals = timed(run.local(Output(root / name.replace(", ", "-").replace(" ", ""))), tasks)
        rates[name] = steady(arrivals)
        rows.append((name, wall, rates[name], 1))
    start = time.perf_counter()
    ray = on_ray.connect(None, workers=2, cpus=1, gpus=0)
    ray_start = time.perf_counter() - start
    for workers in (1, 2):
        name = f"Ray, {workers} actor{'s' if workers > 1 else ''} x 1 CPU"
        out = Output(root / f"ray{workers}")
        wall, arrivals = timed(on_ray.runner(out, address=None, workers=workers, cpus=1, gpus=0, threads=None,
                                             allow_pickle=False), tasks)
        rates[name] = steady(arrivals)
        rows.append((name, wall, rates[name], len({w for _, w in arrivals})))
    ray.shutdown()
    per_local, per_ray = 60 / rates["local, 1 thread"], 60 / rates["Ray, 1 actor x 1 CPU"]
    from doc import machine, report
    lines = [f"- Command: `python benchmarks/scale_out.py --images {args.images} --write` ({machine()}, "
             f"{torch.get_num_threads()} cores given to torch, torch {torch.__version__}); sumie-tiny, 64², 20 steps, "
             "one prompt a line",
             "",
             "| run | wall, model loads included (s) | steady images / min | workers that made images |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {wall:.1f} | {rate:.1f} | {n} |" for name, wall, rate, n in rows]
    lines += ["",
              f"- Starting a local Ray (`ray.init`): {ray_start:.1f} s, once per run.",
              f"- The Ray path's cost per image (scheduling, serialization, the manifest entry's round trip): "
              f"{(per_ray - per_local) * 1000:.0f} ms against {per_local:.2f} s for the image itself "
              f"(one actor's steady time per image minus the local one-thread time)."]
    report("## Batch jobs and Ray (issue 25)", lines, args.write)


if __name__ == "__main__":
    main()
