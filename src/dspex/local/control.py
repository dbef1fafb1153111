"""``dspex lm serve|status|stop``: a server run from the command line, found through its state file.

``serve(detach=True)`` starts a server no process owns: it lives until
:func:`stop_server`, and every dspex process adopts it.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import LocalModelError
from ._health import health
from ._launch import launch
from ._model import check_server_installed, local_config, select
from ._proc import free_port, is_our_server, port_free, terminate, threads
from ._state import locked, paths, read_state, remove_state

__all__ = ["serve", "server_status", "stop_server"]


def serve(
    *,
    detach: bool = False,
    model: str | os.PathLike[str] | None = None,
    host: str | None = None,
    port: int | None = None,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    startup_timeout: float = 120.0,
) -> dict[str, Any]:
    """``dspex lm serve``: run the server in the foreground (until Ctrl-C) or detached.

    A healthy server already recorded for this model is reused (nothing new starts).
    Detached: the server outlives this process and is found by every dspex process
    through the state file until :func:`stop_server`. Returns the status dict.
    """
    cfg = local_config()
    chosen = select(model)
    spec = chosen.spec
    svc_host = host or str(cfg.get("host", "127.0.0.1"))
    svc_port = int(port if port is not None else cfg.get("port", 0) or 0)
    ctx = int(n_ctx or cfg.get("n_ctx") or (spec.n_ctx if spec else 4096))
    n_thr = int(n_threads or cfg.get("n_threads") or threads(spec.thread_share if spec else 1.0))
    state_path, lock_path, log_path = paths(chosen.path)
    with locked(lock_path, startup_timeout + 10):
        state = read_state(state_path)
        if state is not None and is_our_server(int(state.get("pid") or 0)):
            existing = server_status(chosen.path)
            if existing.get("healthy") and not detach:
                raise LocalModelError(
                    f"a local model server is already running (pid {state.get('pid')}, {state.get('base_url')}); "
                    "stop it with `dspex lm stop` first"
                )
            if existing.get("healthy"):
                return existing
        check_server_installed()
        if not svc_port:
            prev = int(state.get("port", 0)) if state else 0
            svc_port = prev if prev and port_free(svc_host, prev) else free_port(svc_host)
        launched = launch(
            chosen,
            host=svc_host,
            port=svc_port,
            n_ctx=ctx,
            n_threads=n_thr,
            state_path=state_path,
            log_path=log_path,
            timeout=startup_timeout,
            owned=not detach,
        )
    info = server_status(chosen.path)
    if detach:
        return info
    proc = launched.proc
    print(
        f"dspex local model server ready at {launched.url} (pid {proc.pid}, "
        f"{launched.startup_seconds:.2f}s); Ctrl-C stops it",
        flush=True,
    )
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        terminate(proc.pid)
        remove_state(state_path, proc.pid)
    return info


def server_status(model: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``dspex lm status``: what the state file records and whether that server is healthy."""
    path = select(model).path
    state_path, _, _ = paths(path)
    state = read_state(state_path)
    if state is None:
        return {"running": False, "healthy": False, "state_file": str(state_path), "model_path": str(path)}
    pid = int(state.get("pid") or 0)
    info = dict(state)
    info["state_file"] = str(state_path)
    info["running"] = bool(pid) and is_our_server(pid)
    if info["running"]:
        info.update(health(str(state.get("base_url"))))
    else:
        info.update({"healthy": False, "busy": False, "models": []})
    return info


def stop_server(model: str | os.PathLike[str] | None = None) -> bool:
    """``dspex lm stop``: terminate the recorded server (whoever started it). True if one was stopped."""
    path = select(model).path
    state_path, _, _ = paths(path)
    state = read_state(state_path)
    if state is None:
        return False
    pid = int(state.get("pid") or 0)
    stopped = False
    if pid and is_our_server(pid):
        terminate(pid)
        stopped = True
    remove_state(state_path, pid)
    return stopped
