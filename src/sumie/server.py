"""`sumie serve`: AUTOMATIC1111's HTTP API (`/sdapi/v1/*`) and a web page, on FastAPI + uvicorn.

Request and response shapes are A1111's, so its clients (webuiapi, editor plugins, bots) work
unchanged. Jobs run one at a time on one worker thread; requests wait in a bounded FIFO (429 with
Retry-After when full). Safe by default: bound to 127.0.0.1, Host checked against DNS rebinding,
cross-site browser POSTs refused, optional bearer key or basic auth on every API route, and no route
takes a file path: images are saved only under --outdir, with generated names.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import __version__
from .errors import InputError, SumieError
from .images import format_parameters, parse_parameters, save_png
from .schedulers import SAMPLERS, from_a1111

MAX_BODY = 20 * 1024 * 1024
MAX_SIDE = 2048
MAX_BATCH = 8
MAX_PNG_PIXELS = 64 * 1024 * 1024
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI, the fields sumie uses; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field("", max_length=10_000)
    negative_prompt: str = Field("", max_length=10_000)
    seed: int = Field(-1, ge=-1, lt=2 ** 32)
    sampler_name: str | None = None
    sampler_index: str | None = None  # A1111's deprecated alias of sampler_name
    scheduler: str | None = None
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0, le=100, allow_inf_nan=False)
    width: int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)  # None: the model's native size
    height: int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    n_iter: int = Field(1, ge=1, le=32)
    send_images: bool = True
    save_images: bool = False

    @field_validator("sampler_name", "sampler_index")
    @classmethod
    def _known_sampler(cls, name):
        if name is not None:
            try:
                from_a1111(name)
            except InputError as e:
                raise ValueError(str(e)) from None
        return name

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name):
        if name is not None and name.lower() not in ("automatic", "karras"):
            raise ValueError(f"unknown scheduler {name!r}; choose Automatic or Karras")
        return name


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(..., max_length=MAX_BODY)


@dataclass
class Job:
    request: Txt2ImgRequest
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

    def finish(self, value=None, error: BaseException | None = None) -> None:
        def settle():
            if not self.done.done():
                self.done.set_exception(error) if error else self.done.set_result(value)
        self.loop.call_soon_threadsafe(settle)


class Engine:
    """The model and its one worker thread, fed by a bounded FIFO of Jobs."""

    def __init__(self, pipe, *, model_name: str, model_hash: str, outdir: Path | None, queue_size: int):
        self.pipe, self.model_name, self.model_hash, self.outdir = pipe, model_name, model_hash, outdir
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.current: Job | None = None
        self.last_step_seconds = 1.0
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
                job.finish(self._run(job))
            except BaseException as e:  # reported to the request; the worker carries on
                job.finish(error=e)
            finally:
                with self.lock:
                    self.current = None

    def _run(self, job: Job) -> dict:
        r = job.request
        job.steps_total = r.steps * r.n_iter
        images, infotexts, seeds = [], [], []
        for batch in range(r.n_iter):
            if job.interrupted:
                break
            job.skipped = False
            first = job.seed + batch * r.batch_size
            tick = time.monotonic()

            def on_step(pipe, i, t, tensors, batch=batch):
                nonlocal tick
                now = time.monotonic()
                self.last_step_seconds, tick = now - tick, now
                job.step = batch * r.steps + i + 1
                job.preview = tensors["latents"]
                if job.interrupted or job.skipped or job.cancelled:
                    pipe._interrupt = True
                return tensors

            out = self.pipe([r.prompt] * r.batch_size, negative_prompt=[r.negative_prompt] * r.batch_size,
                            num_inference_steps=r.steps, guidance_scale=r.cfg_scale, width=r.width, height=r.height,
                            seed=first, scheduler=job.sampler_id, karras=job.karras, callback_on_step_end=on_step)
            for k, image in enumerate(out.images):
                seeds.append(first + k)
                text = self.infotext(r, job, first + k)
                images.append(image)
                infotexts.append(text)
                if r.save_images and self.outdir is not None:
                    self.save(image, text, first + k)
        job.preview = None
        return {"images": images, "infotexts": infotexts, "seeds": seeds}

    def infotext(self, r: Txt2ImgRequest, job: Job, seed: int) -> str:
        return format_parameters(r.prompt, r.negative_prompt, Steps=r.steps, Sampler=SAMPLERS[job.sampler_id].a1111,
                                 Schedule_type="Karras" if job.karras else "Automatic", CFG_scale=r.cfg_scale,
                                 Seed=seed, Size=f"{r.width}x{r.height}", Model_hash=self.model_hash,
                                 Model=self.model_name, Version=f"sumie {__version__}")

    def save(self, image: Image.Image, text: str, seed: int) -> None:
        day = self.outdir / datetime.now().strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                save_png(image, day / f"{time.strftime('%H%M%S')}-{secrets.token_hex(4)}-{seed}.png", text)
                return
            except FileExistsError:
                continue

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
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        done = job.step / max(1, job.steps_total)
        eta = (job.steps_total - job.step) * self.last_step_seconds
        per_iter = job.request.steps
        state.update(skipped=job.skipped, interrupted=job.interrupted, job=f"txt2img seed {job.seed}",
                     job_timestamp=time.strftime("%Y%m%d%H%M%S"), job_no=job.step // max(1, per_iter),
                     sampling_step=job.step % per_iter or (per_iter if job.step else 0), sampling_steps=per_iter)
        image = self.preview_png(job) if preview else None
        return {"progress": round(done, 4), "eta_relative": round(eta, 2), "state": state, "current_image": image,
                "textinfo": None}

    def preview_png(self, job: Job) -> str | None:
        """The current (noisy) latents of the first image as a base64 PNG: through the VAE when they are
        small (<= 32x32), else the first three latent channels as colours, which costs nothing."""
        latents = job.preview
        if latents is None:
            return None
        import torch
        z = latents[:1].detach().float()  # (1, C, h, w)
        with torch.no_grad():
            if z.shape[-1] * z.shape[-2] <= 32 * 32:
                vae = self.pipe.vae
                weight = next(vae.parameters())
                rgb = vae.decode((z / vae.config.scaling_factor).to(weight.device, weight.dtype)).float().cpu()
            else:
                rgb = z[:, :3].cpu() / max(1e-6, float(z.abs().max()))
        arr = ((rgb[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()  # (H, W, 3)
        return to_base64(Image.fromarray(arr))

    def interrupt(self) -> None:
        with self.lock:
            if self.current is not None:
                self.current.interrupted = True

    def skip(self) -> None:
        with self.lock:
            if self.current is not None:
                self.current.skipped = True


def to_base64(image: Image.Image, text: str | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def png_parameters(data: str) -> str:
    """The `parameters` text of a base64 PNG (with or without a data: prefix). Only the header and text
    chunks are read, never the pixels, so a decompression bomb costs nothing."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise InputError("image is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.width * im.height > MAX_PNG_PIXELS:
                raise InputError(f"image is {im.width}x{im.height}, over the {MAX_PNG_PIXELS} pixel limit")
            return str(im.info.get("parameters", ""))
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        raise InputError(f"image is not a readable PNG ({e})") from None


class Guard:
    """ASGI middleware answering `refuse(request)` when it returns a response. Pure ASGI, not
    BaseHTTPMiddleware, which would hide client disconnects from the routes."""

    def __init__(self, app, refuse):
        self.app, self.refuse = app, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self.refuse(Request(scope))
            if refusal is not None:
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------
def create_app(pipe, *, model_name: str, model_hash: str, outdir: str | Path | None = None,
               default_sampler: str = "dpm++2m",
               api_key: str | None = None, api_auth: str | None = None, queue_size: int = 16,
               request_timeout: float = 600.0, allowed_hosts: set[str] | None = None, native_size: int = 512):
    """The FastAPI app serving `pipe`. `allowed_hosts`: the Host names answered (a DNS-rebinding guard);
    None: loopback names only; an empty set: any name (a server the user chose to expose)."""
    engine = Engine(pipe, model_name=model_name, model_hash=model_hash,
                    outdir=Path(outdir) if outdir else None, queue_size=queue_size)
    app = FastAPI(title="sumie", version=__version__, description="AUTOMATIC1111-compatible API (subset)")
    app.state.engine = engine
    hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    def error(status: int, detail, headers=None) -> JSONResponse:
        return JSONResponse({"error": "HTTPException" if status != 422 else "ValidationError", "detail": detail},
                            status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if not api_key and not api_auth:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if api_key and scheme.lower() == "bearer" and secrets.compare_digest(value.strip(), api_key):
            return True
        if api_auth and scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode()
            except ValueError:
                return False
            return any(secrets.compare_digest(given, pair) for pair in api_auth.split(","))
        return False

    def refuse(request: Request) -> JSONResponse | None:
        host = request.headers.get("host", "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if hosts is None and name not in LOCAL_HOSTS:
            return error(400, f"Host {host!r} is not allowed; this server answers to localhost only "
                              f"(start it with --host to serve other names)")
        if hosts and name not in hosts:
            return error(400, f"Host {host!r} is not allowed")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            site = request.headers.get("sec-fetch-site")
            origin = request.headers.get("origin")
            if site in ("cross-site", "same-site") or (origin is not None and origin.lower().split("://", 1)[-1] != host):
                return error(403, "cross-site requests are refused")
            if request.url.path.startswith("/sdapi/") and request.url.path not in ("/sdapi/v1/interrupt", "/sdapi/v1/skip"):
                ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype != "application/json":
                    return error(415, "send the body as application/json")
            size = request.headers.get("content-length")
            if size is None or not size.isdigit():
                return error(411, "send a Content-Length header")
            if int(size) > MAX_BODY:
                return error(413, f"body over {MAX_BODY // 2**20} MB")
        if request.url.path != "/" and not authorized(request):
            return error(401, "missing or wrong credentials: send Authorization: Bearer KEY (or basic auth)",
                         headers={"WWW-Authenticate": "Bearer" if api_key else 'Basic realm="sumie"'})
        return None

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        fields = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return error(422, fields)

    @app.exception_handler(SumieError)
    async def user_error(request: Request, exc: SumieError):
        return error(422, str(exc))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return (Path(__file__).parent / "data" / "index.html").read_text(encoding="utf-8")

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(body: Txt2ImgRequest, request: Request):
        name = body.sampler_name or body.sampler_index
        sampler_id, karras = from_a1111(name) if name else (default_sampler, False)
        if body.scheduler is not None and body.scheduler.lower() == "karras":
            karras = True
        if karras and sampler_id in ("ddim", "pndm", "ddpm"):
            return error(422, [{"loc": ["body", "scheduler"], "msg": f"Karras does not apply to "
                                f"{SAMPLERS[sampler_id].a1111}", "type": "value_error"}])
        body = body.model_copy(update={"width": body.width or native_size, "height": body.height or native_size})
        seed = body.seed if body.seed != -1 else secrets.randbelow(2 ** 32)
        loop = asyncio.get_running_loop()
        job = Job(body, sampler_id, karras, seed, loop.create_future(), loop)
        try:
            engine.submit(job)
        except queue.Full:
            return error(429, f"the queue is full ({engine.queue.maxsize} jobs); retry later",
                         headers={"Retry-After": str(max(1, math.ceil(engine.last_step_seconds * body.steps)))})
        deadline = time.monotonic() + request_timeout
        while True:
            try:
                result = await asyncio.wait_for(asyncio.shield(job.done), 0.25)
                break
            except asyncio.TimeoutError:
                if await request.is_disconnected() or time.monotonic() > deadline:
                    job.cancelled = True  # queued: dropped unstarted; running: stopped at the next step
                    if time.monotonic() > deadline:
                        return error(504, f"the job did not finish within {request_timeout:.0f} s")
                    return error(499, "client disconnected")
            except asyncio.CancelledError:
                return error(499, "client disconnected")
        images = [to_base64(im, text) for im, text in zip(result["images"], result["infotexts"])] \
            if body.send_images else []
        info = {"prompt": body.prompt, "all_prompts": [body.prompt] * len(result["seeds"]),
                "negative_prompt": body.negative_prompt,
                "all_negative_prompts": [body.negative_prompt] * len(result["seeds"]),
                "seed": seed, "all_seeds": result["seeds"], "subseed": -1, "all_subseeds": [-1] * len(result["seeds"]),
                "subseed_strength": 0, "width": body.width, "height": body.height,
                "sampler_name": SAMPLERS[sampler_id].a1111, "scheduler": "Karras" if karras else "Automatic",
                "cfg_scale": body.cfg_scale, "steps": body.steps, "batch_size": body.batch_size,
                "n_iter": body.n_iter, "sd_model_name": model_name, "sd_model_hash": model_hash,
                "seed_resize_from_w": -1, "seed_resize_from_h": -1, "restore_faces": False,
                "index_of_first_image": 0, "infotexts": result["infotexts"], "styles": [],
                "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1, "is_using_inpainting_conditioning": False,
                "version": f"sumie {__version__}", "interrupted": job.interrupted}
        return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}

    @app.get("/sdapi/v1/progress")
    def progress(skip_current_image: bool = False):
        return engine.progress(not skip_current_image)

    @app.post("/sdapi/v1/interrupt")
    def interrupt():
        engine.interrupt()
        return {}

    @app.post("/sdapi/v1/skip")
    def skip():
        engine.skip()
        return {}

    @app.get("/sdapi/v1/samplers")
    def samplers():
        return [{"name": s.a1111, "aliases": [i], "options": {}} for i, s in SAMPLERS.items()]

    @app.get("/sdapi/v1/schedulers")
    def schedulers():
        return [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1,
                 "need_inner_model": False},
                {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}]

    title = f"{model_name} [{model_hash}]"

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        return [{"title": title, "model_name": model_name, "hash": model_hash, "sha256": None,
                 "filename": model_name, "config": None}]

    @app.get("/sdapi/v1/options")
    def options():
        return {"sd_model_checkpoint": title, "sd_checkpoint_hash": model_hash, "samples_format": "png",
                "samples_save": outdir is not None, "live_previews_enable": True, "show_progressbar": True,
                "sumie_native_size": native_size, "sumie_queue_size": queue_size}

    @app.get("/sdapi/v1/scripts")
    def scripts():
        return {"txt2img": [], "img2img": []}

    @app.post("/sdapi/v1/png-info")
    def png_info(body: PngInfoRequest):
        text = png_parameters(body.image)
        parsed = parse_parameters(text) if text else {}
        return {"info": text, "items": {"parameters": text} if text else {}, "parameters": parsed}

    app.add_middleware(Guard, refuse=refuse)
    return app


def serve(model: str, *, host: str = "127.0.0.1", port: int = 7860, outdir: str | None = None,
          api_key: str | None = None, api_auth: str | None = None, queue_size: int = 16,
          device: str = "cpu", request_timeout: float = 600.0, warn=print) -> None:
    import uvicorn

    from . import tiny
    from .pipeline import StableDiffusionPipeline
    from .weights import model_hash
    local = host in LOCAL_HOSTS
    if not local and not (api_key or api_auth):
        warn(f"sumie: warning: serving on {host} with no --api-key: anyone who can reach this port can use it")
    pipe = StableDiffusionPipeline.from_pretrained(model).to(device)
    pipe.set_progress_bar_config(disable=True)
    name = tiny.NAME if model == tiny.NAME else Path(pipe.source).name
    app = create_app(pipe, model_name=name, model_hash=model_hash(pipe.source), outdir=outdir, api_key=api_key,
                     default_sampler=pipe.scheduler.sampler_id,
                     api_auth=api_auth, queue_size=queue_size, allowed_hosts=None if local else set(),
                     request_timeout=request_timeout,
                     native_size=pipe.unet.config.sample_size * pipe.vae_scale_factor)
    uvicorn.run(app, host=host, port=port, log_level="warning")
