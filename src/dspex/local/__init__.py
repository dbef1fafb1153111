"""The embedded default model (Qwen2.5-Coder-0.5B-Instruct via llama.cpp), run as a managed service.

    models                the catalogue (qwen2.5-0.5b default, qwen2.5-1.5b, smollm2-135m) and
                          the verified, atomic assembly of split GGUF parts into the cache
    model_path()          the GGUF file (DSPEX_LOCAL_MODEL, [local] model / model_path, default)
    LocalModelService     start on loopback, health check, restart, stop at exit / with its owner
    default_service()     the process-wide service from the [local] config
    default_lm()          a dspex.LM for it (what Predict uses when no LM is configured)
    serve / server_status / stop_server    `dspex lm serve|status|stop`

Standard library only at import time; llama_cpp runs in the server process.
"""

from __future__ import annotations

from ._state import state_dir
from .control import serve, server_status, stop_server
from .models import DEFAULT_MODEL, MODELS
from .service import (
    LM_MODEL,
    MODEL_ALIAS,
    MODEL_FILE,
    LocalModelService,
    default_lm,
    default_service,
    model_path,
)

__all__ = [
    "DEFAULT_MODEL",
    "LM_MODEL",
    "MODELS",
    "MODEL_ALIAS",
    "MODEL_FILE",
    "LocalModelService",
    "default_lm",
    "default_service",
    "model_path",
    "serve",
    "server_status",
    "state_dir",
    "stop_server",
]
