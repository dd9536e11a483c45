"""The FastAPI app: the engine, the API router behind its auth dependency, the web page, error shapes."""

from __future__ import annotations

from pathlib import Path

import torch
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse

from .. import __version__, tiny
from ..errors import SumieError
from ..lora import Library
from ..auto import load_pipeline
from ..pipeline import StableDiffusionPipeline
from ..styles import read_styles
from ..weights import load_tiny_vae
from .checkpoints import VAEs, Checkpoints, describe
from .engine import Engine
from .routes import router
from .security import LOCAL_HOSTS, Auth, Guard, Refused, error

PAGE = Path(__file__).parent / "index.html"


def create_app(pipe, *, checkpoints: Checkpoints, loader, outdir: str | Path | None = None,
               default_sampler: str = "dpm++2m", api_key: str | None = None, api_auth: str | None = None,
               queue_size: int = 16, request_timeout: float = 600.0, allowed_hosts: set[str] | None = None,
               native_size: int = 512) -> FastAPI:
    """The app serving `pipe`, the model `checkpoints.current`; `loader(path)` loads another of `checkpoints` when a
    client switches. `allowed_hosts`: the Host names answered (a DNS-rebinding guard); None: loopback names only; an
    empty set: any name (a server the user chose to expose)."""
    app = FastAPI(title="sumie", version=__version__, description="AUTOMATIC1111-compatible API (subset)")
    app.state.engine = Engine(pipe, checkpoints=checkpoints, loader=loader,
                              outdir=Path(outdir) if outdir else None, queue_size=queue_size,
                              default_sampler=default_sampler, native_size=native_size,
                              request_timeout=request_timeout)
    app.include_router(router, dependencies=[Depends(Auth(api_key, api_auth))])
    app.add_api_route("/", lambda: PAGE.read_text(encoding="utf-8"), response_class=HTMLResponse,
                      include_in_schema=False)
    app.add_exception_handler(Refused, lambda request, e: error(e.status, e.detail, e.headers))
    app.add_exception_handler(SumieError, lambda request, e: error(422, str(e)))
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_middleware(Guard, hosts=None if allowed_hosts is None else {h.lower() for h in allowed_hosts})
    return app


def _invalid(request: Request, exc: RequestValidationError):
    fields = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return error(422, fields)


def serve(model: str, *, host: str = "127.0.0.1", port: int = 7860, outdir: str | None = None,
          api_key: str | None = None, api_auth: str | None = None, queue_size: int = 16,
          device: str = "cpu", dtype: torch.dtype | None = None, request_timeout: float = 600.0,
          embeddings: str | Path | None = None, allow_pickle: bool = False, lora_dir: str | Path | None = None,
          model_dir: str | Path | None = None, styles: str | Path | None = None, vae_dir: str | Path | None = None,
          preview_vae: str | Path | None = None, warn=print) -> None:
    """`sumie serve`: load `model` (with the textual-inversion embeddings in `embeddings` and the LoRA folder), then
    serve it with uvicorn until stopped, its networks in `dtype` (default: float32). Clients may switch to the other
    checkpoints of `model_dir`."""
    if host not in LOCAL_HOSTS and not (api_key or api_auth):
        warn(f"sumie: warning: serving on {host} with no --api-key: anyone who can reach this port can use it")
    known_styles = read_styles(styles) if styles is not None else {}  # a bad file fails before the model loads
    tiny_vae = load_tiny_vae(preview_vae, dtype=dtype).to(device) if preview_vae is not None else None

    def load(path: str) -> StableDiffusionPipeline:
        pipe = load_pipeline(path, torch_dtype=dtype, allow_pickle=False).to(device)
        pipe.set_progress_bar_config(disable=True)
        if embeddings is not None:
            pipe.embeddings.load_dir(embeddings, allow_pickle=allow_pickle)
        if lora_dir is not None:
            pipe.lora_library = Library(lora_dir, allow_pickle=allow_pickle)
        return pipe
    pipe = load(model)
    checkpoints = Checkpoints(model_dir, describe(model if model == tiny.NAME else pipe.source))
    app = create_app(pipe, checkpoints=checkpoints, loader=load, outdir=outdir, api_key=api_key,
                     default_sampler=pipe.scheduler.sampler_id, api_auth=api_auth, queue_size=queue_size,
                     allowed_hosts=None if host in LOCAL_HOSTS else set(), request_timeout=request_timeout,
                     native_size=pipe.unet.config.sample_size * pipe.vae_scale_factor)
    app.state.engine.styles = known_styles
    app.state.engine.vaes = VAEs(vae_dir)
    app.state.engine.preview_vae = tiny_vae
    uvicorn.run(app, host=host, port=port, log_level="warning")
