"""Serving programs and pipelines over HTTP (``dspex serve``); needs ``dspex[serve]``.

    config.py       ServeConfig from a file or flags; loopback unless there is an API key
    targets.py      what an endpoint runs: saved state, an imported object, a handler, a pipeline
    schema.py       JSON Schema / OpenAPI from the signatures
    validation.py   the body against the input fields -> 422 naming each field
    http_errors.py  exceptions -> status, JSON error, Retry-After
    limits.py       in-flight bound (429), body size (413), JSON body
    auth.py         API-key middleware
    sse.py          server-sent events that stop when the client leaves
    metrics.py      Prometheus: requests, router, pools
    app.py          the Starlette app (routes)
    server.py       uvicorn
    static/         the try-it page
"""

from __future__ import annotations

from .app import SESSION_HEADER, Service
from .config import EndpointConfig, ServeConfig, load_serve_config
from .server import run, uvicorn_config

__all__ = ["SESSION_HEADER", "EndpointConfig", "ServeConfig", "Service", "load_serve_config", "run",
           "uvicorn_config"]
