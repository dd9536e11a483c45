"""Making a batch's images, the same way on one machine and in a Ray actor: one task in, one manifest entry out."""

from __future__ import annotations

from ..errors import SumieError
from ..generate import MODEL_KEYS, Job, Model, load, prepare, render
from .jobs import Task
from .output import Output, pixels_hash


def model_key(settings: dict) -> str:
    """The settings that name a job's model, as one sortable text."""
    return repr(tuple(settings.get(k) for k in MODEL_KEYS))


def image_entry(task: Task, pixels: str) -> dict:
    return {"line": task.line, "index": task.index, "seed": task.seed, "file": task.file, "pixels_sha256": pixels,
            "params": task.settings, "job": task.job}


def failure_entry(line: int, job, error: str, index: int | None = None) -> dict:
    return {"line": line, **({"index": index} if index is not None else {}), "job": job, "error": error}


class Renderer:
    """Renders tasks into `out`: keeps one model loaded (the last one used) and each job prepared once."""

    def __init__(self, out: Output, *, allow_pickle: bool = False, device: str | None = None):
        self.out, self.allow_pickle, self.device = out, allow_pickle, device
        self.key: str | None = None
        self.model: Model | SumieError | None = None  # a load that failed is kept as its error
        self.jobs: dict[int, Job | SumieError] = {}  # by line, for the loaded model

    def __call__(self, task: Task) -> dict:
        try:
            model, job = self._model(task.settings), self._job(task)
            image, text = render(model, job, task.seed)
            self.out.write_png(task.file, image, text)
        except Exception as e:  # noqa: BLE001 - one broken job must not stop a batch of thousands
            reason = str(e) if isinstance(e, SumieError) else f"{type(e).__name__}: {e}"
            return failure_entry(task.line, task.job, reason, task.index)
        return image_entry(task, pixels_hash(image))

    def _settings(self, settings: dict) -> dict:
        return {**settings, "device": self.device} if self.device and "device" not in settings else settings

    def _model(self, settings: dict) -> Model:
        settings = self._settings(settings)
        if model_key(settings) != self.key:
            self.key, self.model, self.jobs = model_key(settings), None, {}
            try:
                self.model = load(settings, outdir=str(self.out), allow_pickle=self.allow_pickle)
            except SumieError as e:
                self.model = e
        if isinstance(self.model, SumieError):
            raise self.model
        return self.model

    def _job(self, task: Task) -> Job:
        if task.line not in self.jobs:
            try:
                self.jobs[task.line] = prepare(self.model, self._settings(task.settings))
            except SumieError as e:
                self.jobs[task.line] = e
        job = self.jobs[task.line]
        if isinstance(job, SumieError):
            raise job
        return job
