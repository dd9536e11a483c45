"""A batch on a Ray cluster: Ray Data maps the tasks over an actor pool, one model replica per actor.

Each actor (`_Worker`) holds a `Renderer`, so it loads a model once and writes its images straight to the
output (a shared folder or an object store); the driver only reads back the manifest entries and writes the
manifest. The images are the ones a local run makes: the same settings through the same `generate.render`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
from dataclasses import asdict
from typing import Iterator
from urllib.parse import urlsplit

from ..errors import InputError
from .jobs import Task
from .output import Output
from .render import Renderer

CONNECT_SECONDS = 10.0  # how long an address may take to accept a connection
JOIN_SECONDS = 15.0  # how long joining a cluster may take before the run gives up (a Ray client waits 30 s+)


class _Worker:
    """A Ray Data actor: a batch of tasks (as JSON) in, their manifest entries (as JSON) out."""

    def __init__(self, where: str, allow_pickle: bool, threads: int, device: str | None):
        import torch
        torch.set_num_threads(threads)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.renderer = Renderer(Output(where), allow_pickle=allow_pickle, device=device)

    def __call__(self, batch: dict) -> dict:
        entries = []
        for text in batch["task"]:
            entry = self.renderer(Task(**json.loads(text)))
            entries.append(json.dumps({**entry, "worker": self.name}))
        return {"entry": entries}


def _reachable(address: str) -> None:
    """Fail fast when nothing listens at `address` (a Ray client's first connection can wait for minutes)."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    host, port = parts.hostname, parts.port or (10001 if parts.scheme == "ray" else None)
    if not host or not port:
        raise InputError(f"--ray {address}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise InputError(f"--ray {address}: nothing answers at {host}:{port} ({e}); is the cluster up "
                         f"(ray start --head)?") from None


@contextlib.contextmanager
def _stderr_silenced():
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def connect(address: str | None, *, workers: int, cpus: float, gpus: float):
    """Ray, joined to the cluster at `address` (None: a local instance started for this run)."""
    try:
        import ray
    except ImportError:
        raise InputError('--ray needs Ray: pip install "sumie[ray]"') from None
    if ray.is_initialized():
        return ray
    quiet = dict(logging_level="ERROR", log_to_driver=False)
    if address is None:  # the pool must fit, or Ray Data would wait for it forever
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(workers * cpus)), include_dashboard=False, **quiet)
        return ray
    if address != "auto":
        _reachable(address)
    failed: list[BaseException] = []

    def join():
        try:
            ray.init(address=address, **quiet)
        except BaseException as e:  # noqa: BLE001 - reported below, on the caller's thread
            failed.append(e)
    joining = threading.Thread(target=join, daemon=True)  # a daemon: a join that hangs cannot keep us alive
    with _stderr_silenced():  # Ray's C++ client logs its retries there; a failure is reported below in one line
        joining.start()
        joining.join(JOIN_SECONDS)
    if joining.is_alive():
        raise InputError(f"--ray {address}: the cluster did not answer in {JOIN_SECONDS:.0f} s; check the address "
                         f"and that its port is open to this machine")
    if failed:
        raise InputError(f"--ray {address}: cannot join the cluster ({str(failed[0]).splitlines()[0]})")
    return ray


def runner(out: Output, *, address: str | None, workers: int, cpus: float, gpus: float, threads: int | None,
           allow_pickle: bool):
    """A `run.Runner` that maps the tasks over `workers` actors of `cpus` CPUs and `gpus` GPUs each, each actor
    running `threads` torch threads (default: its CPUs)."""
    ray = connect(address, workers=workers, cpus=cpus, gpus=gpus)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = context.print_on_execution_start = False  # the batch has its own bar

    def run(tasks: list[Task]) -> Iterator[dict]:
        rows = [{"task": json.dumps(asdict(t))} for t in tasks]
        entries = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _Worker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs=dict(where=out.where, allow_pickle=allow_pickle, threads=threads or max(1, int(cpus)),
                                       device="cuda" if gpus else None),
            num_cpus=cpus, num_gpus=gpus or None)
        for row in entries.iter_rows():
            yield json.loads(row["entry"])
    return run


def shutdown(address: str | None) -> None:
    """Stop the local Ray this run started (a cluster's is left running)."""
    if address is None:
        import ray
        ray.shutdown()
