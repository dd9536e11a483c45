"""The job queue: one worker thread runs the model, fed by a bounded FIFO of Jobs.

A request submits a Job and awaits its future; `progress`, `interrupt` and `skip` read and flag the job that
runs. A job whose client left before it started is dropped unstarted; one that runs stops at its next step.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from .. import hires, img2img, previews
from ..images import infotext, save_png_new
from ..img2img import steps_for
from .checkpoints import OWN_VAE, VAEs, Checkpoint, Checkpoints
from .codec import to_base64
from .models import Txt2ImgRequest


@dataclass
class Job:
    request: Txt2ImgRequest | None  # None: a model switch (switch_to)
    sampler_id: str
    karras: bool
    seed: int
    done: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False  # the client left or timed out before the job started
    interrupted: bool = False
    skipped: bool = False
    started: float | None = None
    step: int = 0
    steps_total: int = 0
    preview: Any = None
    init: tuple | None = None  # img2img: (init images, sumie.img2img.Img2Img)
    hires: Any = None  # txt2img's hires fix: sumie.hires.Hires
    switch_to: Checkpoint | None = None

    def finish(self, value=None, error: BaseException | None = None) -> None:
        def settle():
            if not self.done.done():
                self.done.set_exception(error) if error else self.done.set_result(value)
        self.loop.call_soon_threadsafe(settle)


class Engine:
    """The model and its one worker thread, fed by a bounded FIFO of Jobs."""

    def __init__(self, pipe, *, checkpoints: Checkpoints, loader: Callable[[str], Any], outdir: Path | None,
                 queue_size: int, default_sampler: str, native_size: int, request_timeout: float):
        self.pipe, self.checkpoints, self.loader, self.outdir = pipe, checkpoints, loader, outdir
        self.default_sampler, self.native_size, self.request_timeout = default_sampler, native_size, request_timeout
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.current: Job | None = None
        self.last_step_seconds = 1.0
        self.settings: dict = {}  # what clients posted to /options (see a1111.options)
        self.styles: dict[str, tuple[str, str]] = {}  # A1111's prompt styles (see sumie.styles)
        self.vaes, self.own_vae = VAEs(None), pipe.vae  # sd_vae's choices, and the model's own VAE
        self.preview_vae = None  # TAESD for live previews (`--preview-vae`)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="sumie-worker", daemon=True)
        self.thread.start()

    # -- worker thread ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job.cancelled:  # its client left or timed out while it waited
                job.finish(None)
                continue
            with self.lock:
                self.current, job.started = job, time.monotonic()
            try:
                job.finish(self._switch(job.switch_to) if job.switch_to else self._run(job))
            except BaseException as e:  # reported to the request; the worker carries on
                job.finish(error=e)
            finally:
                with self.lock:
                    self.current = None

    def _run(self, job: Job) -> dict:
        r = job.request
        self.vaes.use(self.pipe, self.own_vae, r.override_settings.get("sd_vae", "Automatic"))
        steps = r.steps  # model steps per batch: img2img runs fewer
        if job.init is not None:
            total, kept = steps_for(job.init[1].strength, r.steps, job.init[1].exact_steps)
            steps = int(total * kept)
        elif job.hires is not None and job.hires.strength > 0:
            steps += job.hires.steps or r.steps
        job.steps_total = steps * r.n_iter
        extra = job.init[1].fields() if job.init is not None else \
            job.hires.fields(r.width, r.height) if job.hires is not None else None  # the job's infotext fields
        images, infotexts, seeds = [], [], []
        for batch in range(r.n_iter):
            if job.interrupted:
                break
            job.skipped = False
            first = job.seed + batch * r.batch_size
            tick, job.step = time.monotonic(), batch * steps

            def on_step(pipe, i, t, tensors):
                nonlocal tick
                now = time.monotonic()
                self.last_step_seconds, tick = now - tick, now
                job.step += 1
                job.preview = tensors["latents"]
                if job.interrupted or job.skipped or job.cancelled:
                    pipe._interrupt = True
                return tensors

            args = dict(prompt=[r.prompt] * r.batch_size, negative_prompt=[r.negative_prompt] * r.batch_size,
                        guidance_scale=r.cfg_scale, width=r.width, height=r.height, seed=first,
                        scheduler=job.sampler_id, karras=job.karras, callback_on_step_end=on_step,
                        prompt_syntax="a1111", clip_skip=r.clip_skip - 1 or None)
            if job.hires is not None:
                out = hires.run(self.pipe, job.hires, steps=r.steps, **args)
            elif job.init is None:
                out = self.pipe(num_inference_steps=r.steps, **args).images
            else:
                out = img2img.run(self.pipe, job.init[0], job.init[1], steps=r.steps, **args)
            for k, image in enumerate(out):
                seeds.append(first + k)
                text = self.infotext(r, job, first + k, extra)
                images.append(image)
                infotexts.append(text)
                if r.save_images and self.outdir is not None:
                    self.save(image, text, first + k)
        job.preview = None
        return {"images": images, "infotexts": infotexts, "seeds": seeds}

    def _switch(self, checkpoint: Checkpoint) -> dict:
        """Load `checkpoint`, then let the old model go. Jobs run in queue order, so none runs half-way through
        this; a load that fails leaves the old model serving."""
        pipe = self.loader(checkpoint.path)
        self.pipe, self.own_vae, self.checkpoints.current = pipe, pipe.vae, checkpoint
        self.vaes.loaded = None  # a VAE loaded for the old model's config
        gc.collect()
        return {}

    def switch(self, checkpoint: Checkpoint, loop) -> Job:
        """Queue a switch to `checkpoint` behind the jobs already waiting."""
        job = Job(None, "", False, 0, loop.create_future(), loop, switch_to=checkpoint)
        self.submit(job)
        return job

    @property
    def model_name(self) -> str:
        return self.checkpoints.current.name

    @property
    def model_hash(self) -> str:
        return self.checkpoints.current.hash

    @property
    def title(self) -> str:
        """The model as A1111 names it in `sd_model_checkpoint`."""
        return self.checkpoints.current.title

    def infotext(self, r: Txt2ImgRequest, job: Job, seed: int, extra: dict | None = None) -> str:
        vae = r.override_settings.get("sd_vae", "Automatic")
        extra = {**(extra or {}), **({"VAE": vae} if vae not in OWN_VAE else {})}
        return infotext(r.prompt, r.negative_prompt, steps=r.steps, sampler_id=job.sampler_id, karras=job.karras,
                        cfg_scale=r.cfg_scale, seed=seed, width=r.width, height=r.height, extra=extra,
                        model_hash=self.model_hash, model_name=self.model_name, clip_skip=r.clip_skip,
                        lora_hashes=self.pipe.lora_library.hashes_text(r.prompt) if self.pipe.lora_library else None)

    def save(self, image: Image.Image, text: str, seed: int) -> None:
        """Under --outdir, in a folder per day, as HHMMSS-random-seed.png."""
        day = self.outdir / datetime.now().strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        names = (day / f"{time.strftime('%H%M%S')}-{secrets.token_hex(4)}-{seed}.png" for _ in itertools.count())
        save_png_new(image, names, text)

    # -- request side -------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self.queue.put_nowait(job)  # queue.Full when full

    def progress(self, preview: bool) -> dict:
        with self.lock:
            job = self.current
        waiting = self.queue.qsize()
        state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
                 "job_count": waiting + (job is not None), "job_timestamp": "0", "job_no": 0,
                 "sampling_step": 0, "sampling_steps": 0}
        if job is None or job.request is None:  # idle, or loading a model
            if job is not None:
                state["job"] = f"loading {job.switch_to.name}"
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        done = job.step / max(1, job.steps_total)
        eta = (job.steps_total - job.step) * self.last_step_seconds
        per_iter = max(1, job.steps_total // job.request.n_iter)
        kind = "txt2img" if job.init is None else "img2img"
        state.update(skipped=job.skipped, interrupted=job.interrupted, job=f"{kind} seed {job.seed}",
                     job_timestamp=time.strftime("%Y%m%d%H%M%S"), job_no=job.step // max(1, per_iter),
                     sampling_step=job.step % per_iter or (per_iter if job.step else 0), sampling_steps=per_iter)
        image = self.preview_png(job) if preview else None
        return {"progress": round(done, 4), "eta_relative": round(eta, 2), "state": state, "current_image": image,
                "textinfo": None}

    def preview_png(self, job: Job) -> str | None:
        """The current (noisy) latents of the first image as a base64 PNG (`previews.rgb`: TAESD when the
        server has one, the VAE for small latents, else A1111's Approx cheap factors)."""
        latents = job.preview
        if latents is None:
            return None
        image = previews.rgb(latents[:1].detach(), self.pipe.vae, self.preview_vae)  # (1, 3, H, W)
        arr = ((image[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()  # (H, W, 3)
        return to_base64(Image.fromarray(arr))

    def interrupt(self) -> None:
        with self.lock:
            if self.current is not None:
                self.current.interrupted = True

    def skip(self) -> None:
        with self.lock:
            if self.current is not None:
                self.current.skipped = True
