"""Start one llama.cpp server process for a model and record it in its state file.

Used by the owned service (the server dies with its owner) and by ``dspex lm
serve`` (foreground, or detached: no owner). Callers hold the model's start lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._health import wait_ready
from ._model import Selected
from ._proc import server_args, server_env, spawner, terminate
from ._state import write_state


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    url: str
    startup_seconds: float


def launch(
    model: Selected,
    *,
    host: str,
    port: int,
    n_ctx: int,
    n_threads: int,
    state_path: Path,
    log_path: Path,
    timeout: float,
    owned: bool,
) -> Launched:
    """Spawn the server, wait until it serves ``model.alias``, write the state file.

    ``owned``: the server gets SIGKILL when this process dies, and is forked from
    the long-lived spawner thread (the parent-death signal follows the forking thread).
    """
    url = f"http://{host}:{port}/v1"
    argv = [sys.executable, "-m", "dspex.local._server"]
    if owned:
        argv += ["--dspex-parent-pid", str(os.getpid())]
    argv += server_args(model.path, model.alias, host, port, n_ctx, n_threads)

    def popen() -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal goes to the host, not the server
                env=server_env(),
            )

    t0 = time.monotonic()
    proc = spawner.run(popen) if owned else popen()
    try:
        wait_ready(url, model.alias, proc.pid, lambda: proc.poll() is None, timeout, log_path)
    except BaseException:
        terminate(proc.pid)
        try:
            proc.wait(timeout=1)
        except Exception:
            pass
        raise
    startup = time.monotonic() - t0
    record: dict[str, Any] = {
        "pid": proc.pid,
        "base_url": url,
        "host": host,
        "port": port,
        "model": model.alias,
        "model_name": model.spec.name if model.spec else None,
        "model_path": str(model.path),
        "sha256": model.spec.sha256 if model.spec and model.spec.sha256 else None,
        "owner_pid": os.getpid() if owned else None,
        "detached": not owned,
        "n_threads": n_threads,
        "n_ctx": n_ctx,
        "started_at": time.time(),
        "startup_seconds": startup,
        "log": str(log_path),
    }
    write_state(state_path, record)
    return Launched(proc, url, startup)
