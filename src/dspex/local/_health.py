"""Health of a local server: is it up, does it serve our model, what did its log say.

``llama_cpp.server`` serializes every endpoint behind its model lock, so a health
call during a long generation times out: that reads as ``busy``, not dead.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import LocalModelError
from ._proc import host_port, port_open


def get_models(base_url: str, timeout: float) -> list[str]:
    """GET {base_url}/models; the model ids. Raises OSError/ValueError when unhealthy."""
    import urllib.request  # ~20 ms of http.client: only when a check actually runs

    with urllib.request.urlopen(f"{base_url}/models", timeout=timeout) as resp:
        body = json.loads(resp.read())
    return [str(m.get("id")) for m in body.get("data", [])]


def tail(path: Path, n: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def wait_ready(
    url: str, alias: str, pid: int, alive: Callable[[], bool], timeout: float, log_path: Path
) -> None:
    """Poll ``/v1/models`` until the server lists ``alias``; LocalModelError with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if not alive():
            raise LocalModelError(
                f"the local model server (pid {pid}) exited during startup; its log ({log_path}) ends:\n"
                f"{tail(log_path)}\nFix the cause above, or set [lm] in dspex.toml or DSPEX_LM to use "
                "a real endpoint"
            )
        try:
            if alias in get_models(url, timeout=2.0):
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise LocalModelError(
                f"the local model server (pid {pid}) was not ready after {timeout:.0f}s at {url}; "
                f"its log ({log_path}) ends:\n{tail(log_path)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def health(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET /v1/models. ``busy`` means the port answers but the model lock is held."""
    host, port = host_port(url)
    if not port_open(host, port):
        return {"healthy": False, "busy": False, "models": []}
    try:
        models = get_models(url, timeout=timeout)
    except TimeoutError:
        return {"healthy": True, "busy": True, "models": []}
    except (OSError, ValueError) as exc:
        if isinstance(getattr(exc, "reason", None), TimeoutError):
            return {"healthy": True, "busy": True, "models": []}
        return {"healthy": False, "busy": False, "models": [], "error": str(exc)}
    return {"healthy": True, "busy": False, "models": models}
