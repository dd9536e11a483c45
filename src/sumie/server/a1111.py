"""The JSON that A1111's API answers with, built from sumie's state: the `info` of a txt2img result, the
listings (samplers, schedulers, models) and the options. Field names and shapes are A1111's."""

from __future__ import annotations

import json
import time

from .. import __version__, lora
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
    return [{"title": engine.title, "model_name": engine.model_name, "hash": engine.model_hash, "sha256": None,
             "filename": engine.model_name, "config": None}]


def options(engine) -> dict:
    return {"sd_model_checkpoint": engine.title, "sd_checkpoint_hash": engine.model_hash, "samples_format": "png",
            "samples_save": engine.outdir is not None, "live_previews_enable": True, "show_progressbar": True,
            "CLIP_stop_at_last_layers": 1, "sumie_native_size": engine.native_size,
            "sumie_queue_size": engine.queue.maxsize}


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
