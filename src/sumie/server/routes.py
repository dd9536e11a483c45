"""The A1111 API's routes (`/sdapi/v1/...`), each a few lines over the Engine it receives by `Depends`."""

from __future__ import annotations

import asyncio
import math
import queue
import secrets
import time

from fastapi import APIRouter, Depends, Request

from ..errors import InputError, SumieError
from ..images import parse_parameters
from ..hires import Hires
from ..img2img import Img2Img, steps_for
from ..styles import apply as apply_styles
from ..schedulers import SAMPLERS, from_a1111
from . import a1111
from .codec import from_base64, png_parameters, to_base64
from .engine import Engine, Job
from .models import Img2ImgRequest, PngInfoRequest, Txt2ImgRequest
from .security import error

router = APIRouter(prefix="/sdapi/v1")


def engine(request: Request) -> Engine:
    return request.app.state.engine


async def finished(job: Job, request: Request, timeout: float):
    """The job's result, or an error answer when the client leaves (499) or the deadline passes (504) first;
    either way the job is cancelled (queued: dropped unstarted; running: stopped at the next step)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(job.done), 0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected() or time.monotonic() > deadline:
                job.cancelled = True
                if time.monotonic() > deadline:
                    return error(504, f"the job did not finish within {timeout:.0f} s")
                return error(499, "client disconnected")
        except asyncio.CancelledError:
            return error(499, "client disconnected")


def field_error(loc: list, msg: str):
    return error(422, [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


@router.post("/txt2img")
async def txt2img(body: Txt2ImgRequest, request: Request, engine: Engine = Depends(engine)):
    fix = None
    if body.enable_hr:  # A1111's hires fix (sumie.hires)
        fix = Hires(scale=body.hr_scale, resize_x=body.hr_resize_x, resize_y=body.hr_resize_y,
                    upscaler=body.hr_upscaler or "Latent", steps=body.hr_second_pass_steps,
                    strength=0.7 if body.denoising_strength is None else body.denoising_strength,
                    prompt=body.hr_prompt or None, negative_prompt=body.hr_negative_prompt or None)
        try:
            fix.check()
        except InputError as e:
            return field_error(["hr_upscaler"], str(e))
        try:
            fix.size(body.width or engine.native_size, body.height or engine.native_size)
        except InputError as e:
            return field_error(["hr_scale"], str(e))
    return await run(body, request, engine, hires=fix)


@router.get("/sd-vae")
def sd_vae(engine: Engine = Depends(engine)):
    return engine.vaes.listing()


@router.get("/sd-modules")
def sd_modules(engine: Engine = Depends(engine)):
    return engine.vaes.listing()


@router.post("/refresh-vae")
def refresh_vae(engine: Engine = Depends(engine)):
    engine.vaes.refresh()
    return None


@router.get("/prompt-styles")
def prompt_styles(engine: Engine = Depends(engine)):
    return a1111.prompt_styles(engine)


@router.get("/upscalers")
def upscalers():
    return a1111.upscalers()


@router.get("/latent-upscale-modes")
def latent_upscale_modes():
    return a1111.latent_upscale_modes()


@router.post("/img2img")
async def img2img(body: Img2ImgRequest, request: Request, engine: Engine = Depends(engine)):
    """A1111's img2img and inpainting (see sumie.img2img). The images are decoded and checked before any model work."""
    images = []
    for i, data in enumerate(body.init_images):
        try:
            images.append(from_base64(data, f"init image {i}"))
        except InputError as e:
            return field_error(["init_images", i], str(e))
    mask = None
    if body.mask is not None:
        try:
            mask = from_base64(body.mask, "mask")
        except InputError as e:
            return field_error(["mask"], str(e))
    w, h = images[0].size
    body = body.model_copy(update={"width": body.width or max(8, w // 8 * 8),
                                   "height": body.height or max(8, h // 8 * 8)})
    blur = (body.mask_blur, body.mask_blur) if body.mask_blur is not None else (body.mask_blur_x, body.mask_blur_y)
    body = body.model_copy(update={"override_settings": {**engine.settings, **body.override_settings}})
    options = Img2Img(strength=body.denoising_strength, resize_mode=body.resize_mode, mask=mask, mask_blur_x=blur[0],
                      mask_blur_y=blur[1], inpainting_fill=body.inpainting_fill, only_masked=body.inpaint_full_res,
                      padding=body.inpaint_full_res_padding, invert_mask=bool(body.inpainting_mask_invert),
                      exact_steps=body.exact_steps)
    total, kept = steps_for(options.strength, body.steps, options.exact_steps)
    if mask is None and int(total * kept) < 1:
        return field_error(["denoising_strength"], f"denoising strength {options.strength} runs no steps of "
                           f"{body.steps}; raise it or the steps")
    answer = await run(body, request, engine, init=(images, options))
    if isinstance(answer, dict) and not body.include_init_images:
        answer["parameters"].update(init_images=None, mask=None)
    return answer


async def run(body: Txt2ImgRequest, request: Request, engine: Engine, init: tuple | None = None,
              hires: Hires | None = None):
    """Queue one job and answer with A1111's response: images, parameters and info. The server's options (posted to
    /options) apply unless override_settings changes them for this request."""
    errors = a1111.check_settings(body.override_settings, engine)
    wanted = body.override_settings.get("sd_model_checkpoint")
    if not errors and wanted is not None and engine.checkpoints.find(str(wanted)) != engine.checkpoints.current:
        errors = [{"loc": ["body", "sd_model_checkpoint"], "type": "value_error",
                   "msg": "a request cannot switch the model for itself here; POST /sdapi/v1/options first"}]
    if errors:
        return error(422, [{**e, "loc": ["body", "override_settings", *e["loc"][1:]]} for e in errors])
    if body.styles:
        try:
            prompt, negative = apply_styles(body.prompt, body.negative_prompt, body.styles, engine.styles)
        except InputError as e:
            return field_error(["styles"], str(e))
        body = body.model_copy(update={"prompt": prompt, "negative_prompt": negative})
    if not body.override_settings_restore_afterwards:
        engine.settings.update(body.override_settings)
    body = body.model_copy(update={"override_settings": {**engine.settings, **body.override_settings}})
    name = body.sampler_name or body.sampler_index
    sampler_id, karras = from_a1111(name) if name else (engine.default_sampler, False)
    karras = karras or (body.scheduler is not None and body.scheduler.lower() == "karras")
    if karras and not SAMPLERS[sampler_id].karras:
        return field_error(["scheduler"], f"Karras does not apply to {SAMPLERS[sampler_id].a1111}")
    body = body.model_copy(update={"width": body.width or engine.native_size,
                                   "height": body.height or engine.native_size})
    seed = body.seed if body.seed != -1 else secrets.randbelow(2 ** 32)
    loop = asyncio.get_running_loop()
    job = Job(body, sampler_id, karras, seed, loop.create_future(), loop, init=init, hires=hires)
    try:
        engine.submit(job)
    except queue.Full:
        return error(429, f"the queue is full ({engine.queue.maxsize} jobs); retry later",
                     headers={"Retry-After": str(max(1, math.ceil(engine.last_step_seconds * body.steps)))})
    result = await finished(job, request, engine.request_timeout)
    if not isinstance(result, dict):
        return result
    images = [to_base64(im, text) for im, text in zip(result["images"], result["infotexts"])] \
        if body.send_images else []
    info = a1111.txt2img_info(body, seed=seed, sampler_id=sampler_id, karras=karras, result=result, engine=engine,
                              interrupted=job.interrupted)
    return {"images": images, "parameters": body.model_dump(), "info": info}


@router.get("/progress")
def progress(skip_current_image: bool = False, engine: Engine = Depends(engine)):
    return engine.progress(not skip_current_image)


@router.post("/interrupt")
def interrupt(engine: Engine = Depends(engine)):
    engine.interrupt()
    return {}


@router.post("/skip")
def skip(engine: Engine = Depends(engine)):
    engine.skip()
    return {}


@router.get("/samplers")
def samplers():
    return a1111.samplers()


@router.get("/schedulers")
def schedulers():
    return a1111.SCHEDULERS


@router.get("/sd-models")
def sd_models(engine: Engine = Depends(engine)):
    return a1111.sd_models(engine)


@router.get("/options")
def options(engine: Engine = Depends(engine)):
    return a1111.options(engine)


@router.post("/options")
async def set_options(body: dict, request: Request, engine: Engine = Depends(engine)):
    """Keep what a client posts (the whole dict GET returns, unknown keys too) and act on the keys sumie knows; a
    bad value is a 422 naming it, and then nothing is kept. A new sd_model_checkpoint is loaded after the jobs
    already queued, and answered when it serves (a load that fails: 422, the old model still serving)."""
    errors = a1111.check_settings(body, engine)
    if errors:
        return error(422, errors)
    wanted = engine.checkpoints.find(str(body["sd_model_checkpoint"])) if "sd_model_checkpoint" in body else None
    if wanted is not None and wanted != engine.checkpoints.current:
        try:
            job = engine.switch(wanted, asyncio.get_running_loop())
        except queue.Full:
            return error(429, f"the queue is full ({engine.queue.maxsize} jobs); retry later")
        try:
            result = await finished(job, request, engine.request_timeout)
        except (SumieError, OSError, RuntimeError, ValueError) as e:
            return field_error(["sd_model_checkpoint"], f"{wanted.name} did not load ({e}); "
                                                         f"still serving {engine.title}")
        if not isinstance(result, dict):
            return result
    engine.settings.update({k: v for k, v in body.items() if k not in a1111.DERIVED_OPTIONS})
    return None


@router.post("/refresh-checkpoints")
def refresh_checkpoints(engine: Engine = Depends(engine)):
    engine.checkpoints.refresh()
    return None


def _empty_listing():
    return []


for _name in a1111.EMPTY_LISTINGS:
    router.add_api_route(f"/{_name}", _empty_listing, methods=["GET"])


@router.get("/loras")
def loras(engine: Engine = Depends(engine)):
    return a1111.loras(engine)


@router.post("/refresh-loras")
def refresh_loras(engine: Engine = Depends(engine)):
    if engine.pipe.lora_library is not None:
        engine.pipe.lora_library.refresh()
    return {}


@router.get("/embeddings")
def embeddings(engine: Engine = Depends(engine)):
    return a1111.embeddings(engine)


@router.get("/scripts")
def scripts():
    return {"txt2img": [], "img2img": []}


@router.post("/png-info")
def png_info(body: PngInfoRequest):
    text = png_parameters(body.image)
    parsed = parse_parameters(text) if text else {}
    return {"info": text, "items": {"parameters": text} if text else {}, "parameters": parsed}
