"""`sumie serve`: AUTOMATIC1111's HTTP API (`/sdapi/v1/*`) and a web page, on FastAPI + uvicorn.

Request and response shapes are A1111's, so its clients (webuiapi, editor plugins, bots) work unchanged.
Read in this order: `models` (request bodies), `routes` (one function per endpoint), `engine` (the queue
and its worker thread), `a1111` (the answers' JSON), `codec` (base64 PNGs), `security` (host, cross-site,
body and auth checks), `app` (putting them together). A new endpoint is a function in `routes`.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
