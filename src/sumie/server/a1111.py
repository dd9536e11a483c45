"""The JSON that A1111's API answers with, built from sumie's state: the `info` of a txt2img result, the
listings (samplers, schedulers, models) and the options. Field names and shapes are A1111's."""

from __future__ import annotations

import json
import time

from .. import __version__, hires, lora
from ..schedulers import SAMPLERS
from .models import Txt2ImgRequest

SCHEDULERS = [
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
    {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
]


def samplers() -> list[dict]:
    return [{"name": s.a1111, "aliases": [i], "options": {}} for i, s in SAMPLERS.items()]


def txt2img_info(body: Txt2ImgRequest, *, seed: int, sampler_id: str, karras: bool, result: dict, engine,
                 interrupted: bool) -> str:
    """The `info` string of a txt2img answer: A1111's processing summary, as JSON."""
    n = len(result["seeds"])
    return json.dumps({
        "prompt": body.prompt, "all_prompts": [body.prompt] * n, "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * n, "seed": seed, "all_seeds": result["seeds"],
        "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0, "width": body.width, "height": body.height,
        "sampler_name": SAMPLERS[sampler_id].a1111, "scheduler": "Karras" if karras else "Automatic",
        "cfg_scale": body.cfg_scale, "steps": body.steps, "batch_size": body.batch_size, "n_iter": body.n_iter,
        "sd_model_name": engine.model_name, "sd_model_hash": engine.model_hash, "seed_resize_from_w": -1,
        "seed_resize_from_h": -1, "restore_faces": False, "index_of_first_image": 0, "infotexts": result["infotexts"],
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": body.clip_skip,
        "is_using_inpainting_conditioning": False, "version": f"sumie {__version__}", "interrupted": interrupted})


def sd_models(engine) -> list[dict]:
    return [c.listing() for c in engine.checkpoints.all]


OPTION_DEFAULTS = {"samples_format": "png", "live_previews_enable": True, "show_progressbar": True,
                   "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "img2img_fix_steps": False}


def options(engine) -> dict:
    """A1111's /options: the defaults, what clients posted (kept and echoed, unknown keys too), and the model."""
    return {**OPTION_DEFAULTS, **engine.settings, "sd_model_checkpoint": engine.title,
            "sd_checkpoint_hash": engine.model_hash, "samples_save": engine.outdir is not None,
            "sumie_native_size": engine.native_size, "sumie_queue_size": engine.queue.maxsize}


# computed by GET /options from the server's state, never stored from a POST
DERIVED_OPTIONS = ("sd_model_checkpoint", "sd_checkpoint_hash", "samples_save", "sumie_native_size", "sumie_queue_size")


def check_settings(settings: dict, engine) -> list[dict]:
    """Field errors for the option values sumie acts on (posted to /options or in override_settings); other keys
    are kept as they are."""
    errors = []

    def bad(key, msg):
        errors.append({"loc": ["body", key], "msg": msg, "type": "value_error"})
    if "sd_model_checkpoint" in settings:
        name = str(settings["sd_model_checkpoint"])
        if engine.checkpoints.find(name) is None:
            close = engine.checkpoints.close_to(name)
            bad("sd_model_checkpoint", f"no model {name!r} (GET /sdapi/v1/sd-models lists them)"
                + (f"; close: {', '.join(close)}" if close else ""))
    if "CLIP_stop_at_last_layers" in settings:
        v = settings["CLIP_stop_at_last_layers"]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 12:
            bad("CLIP_stop_at_last_layers", f"must be a whole number from 1 to 12 (got {v!r})")
    if str(settings.get("samples_format", "png")).lower() != "png":
        bad("samples_format", f"only png is written (got {settings['samples_format']!r}): its text chunk carries "
                              f"the parameters")
    vae = settings.get("sd_vae", "Automatic")
    if vae not in ("Automatic", "None") and vae not in engine.vaes.found:
        bad("sd_vae", f"no VAE {vae!r}; choose Automatic (the model's own) or one of GET /sdapi/v1/sd-vae")
    if not isinstance(settings.get("img2img_fix_steps", False), bool):
        bad("img2img_fix_steps", "must be true or false")
    return errors


# A1111's listings sumie has nothing behind: answered empty, in A1111's shape, so that clients that fetch them work
EMPTY_LISTINGS = ("face-restorers", "realesrgan-models", "hypernetworks")


def prompt_styles(engine) -> list[dict]:
    return [{"name": name, "prompt": p, "negative_prompt": n} for name, (p, n) in engine.styles.items()]


def upscalers() -> list[dict]:
    """The image upscalers hires fix has (no ESRGAN models: only these)."""
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for name in hires.IMAGE_UPSCALERS]


def latent_upscale_modes() -> list[dict]:
    return [{"name": name} for name in hires.LATENT_MODES]


def loras(engine) -> list[dict]:
    """A1111's /loras: every LoRA file of --lora-dir, with the metadata (Kohya's ss_* fields) it carries."""
    library = engine.pipe.lora_library
    if library is None:
        return []
    return [{"name": name, "alias": name, "path": str(path), "metadata": lora.metadata(path)}
            for name, path in library.files.items()]


def embeddings(engine) -> dict:
    """A1111's /embeddings: the usable ones with their shape, and the skipped ones."""
    db = engine.pipe.embeddings
    loaded = {name: {"step": e.step, "sd_checkpoint": None, "sd_checkpoint_name": None,
                     "shape": e.vectors.shape[-1], "vectors": e.vectors.shape[0]} for name, e in db.loaded.items()}
    skipped = {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                      "vectors": None, "error": reason} for name, reason in db.skipped.items()}
    return {"loaded": loaded, "skipped": skipped}
