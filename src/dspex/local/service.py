"""The embedded default model as a managed loopback service.

The model (default Qwen2.5-Coder-0.5B-Instruct, see :mod:`.models`) runs in
``llama_cpp.server`` (OpenAI-compatible HTTP) on 127.0.0.1. One server per
machine, user and model file is shared by every process:

* The server is described by a state file (pid, port, model, owner) in the state
  directory (:func:`._state.state_dir`). A process that needs the model first adopts
  a healthy server recorded there; only if there is none does it start one (under
  an ``flock``, so racing processes start one server, not several).
* Whoever starts a server owns it: the server gets SIGKILL when its owner dies
  (``PR_SET_PDEATHSIG``, so even ``kill -9`` of the owner leaves no orphan) and is
  stopped by the owner's ``atexit``. Adopters never stop it; if it dies, the next
  ``ensure_running()`` in any process starts a new one (on the same port when it
  is free, so URLs handed out stay valid).
* ``dspex lm serve --detach`` (:mod:`.control`) starts an unowned server that lives
  until ``dspex lm stop``: the choice for many short-lived processes.
* Worker processes get ``DSPEX_LOCAL_BASE_URL`` (see :meth:`LocalModelService.env`)
  and use that server; they never start their own.

Only the standard library is imported here (health checks use ``urllib``), so
``dspex.local`` is cheap to import in hosts and workers alike.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import LocalModelError
from ._health import health
from ._launch import launch
from ._model import Selected, alias_for, check_server_installed, local_config, select, spec_for
from ._proc import (
    free_port,
    host_port,
    is_our_server,
    pid_alive,
    port_open,
    terminate,
    threads,
    wait_port_free,
)
from ._state import locked, paths, read_state, remove_state, state_dir
from .control import server_status
from .models import DEFAULT_MODEL, MODELS

__all__ = [
    "LM_MODEL",
    "MODEL_ALIAS",
    "MODEL_FILE",
    "LocalModelService",
    "default_lm",
    "default_service",
    "model_path",
]

# The default model's names (what a fresh install serves).
MODEL_ALIAS = MODELS[DEFAULT_MODEL].alias
MODEL_FILE = MODELS[DEFAULT_MODEL].file
LM_MODEL = f"openai/{MODEL_ALIAS}"
DEFAULT_MAX_TOKENS = 512


def model_path(model: str | os.PathLike[str] | None = None) -> Path:
    """The GGUF file of the chosen model (see :mod:`._model`), assembled into the cache if needed."""
    return select(model).path


class LocalModelService:
    """The embedded model server: start on loopback, health-check, restart, stop.

    ``port=0`` picks a free port. ``n_threads=None`` uses every core this process
    may run on. Safe to share between threads; ``ensure_running()`` is the cheap
    call to make before every use.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        *,
        startup_timeout: float = 120.0,
        use_env: bool = True,
    ) -> None:
        self._model_arg = model_path
        self._model: Selected | None = None
        self.host = host
        self.port = int(port)
        spec = spec_for(model_path)
        self.n_ctx = int(n_ctx) if n_ctx else (spec.n_ctx if spec else 4096)
        self.n_threads = int(n_threads) if n_threads else threads(spec.thread_share if spec else 1.0)
        self.startup_timeout = float(startup_timeout)
        self.use_env = use_env
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None  # set when we own the server
        self._pid: int | None = None
        self._base_url: str | None = None
        self._owned = False
        self._owner_pid = 0  # the pid that started our server (a forked child is not it)
        self._last_ok = 0.0
        self._restarts: list[float] = []
        self.startup_seconds: float | None = None  # time to ready of the last start by us
        self._atexit = False

    # -- public -------------------------------------------------------------------

    @property
    def model(self) -> Selected:
        """The model served (chosen, and assembled if needed, on first use)."""
        if self._model is None:
            self._model = select(self._model_arg)
        return self._model

    @property
    def model_path(self) -> Path:
        return self.model.path

    @property
    def alias(self) -> str:
        """The model id the server answers to (``openai/<alias>`` for dspex.LM); never assembles."""
        return self._model.alias if self._model is not None else alias_for(self._model_arg)

    @property
    def base_url(self) -> str | None:
        """``http://127.0.0.1:<port>/v1`` once running (or adopted), else None."""
        return self._base_url

    @property
    def owned(self) -> bool:
        """True in the process that started the server (which stops it at exit)."""
        return self._owned and self._owner_pid == os.getpid()

    def env(self) -> dict[str, str]:
        """Environment for worker processes so they use this server instead of starting one."""
        return {"DSPEX_LOCAL_BASE_URL": self.ensure_running()}

    def start(self) -> str:
        """Start (or adopt) the server; returns the base URL."""
        return self.ensure_running()

    def ensure_running(self) -> str:
        """Return the base URL of a live server, adopting or (re)starting one as needed.

        Cheap when the server is known to be up: a process check and a TCP connect
        (not an HTTP request, since llama_cpp.server serializes every endpoint
        behind its model lock and a long generation would stall a health call).
        """
        with self._lock:
            if self.use_env and self._model_arg is None and os.environ.get("DSPEX_LOCAL_BASE_URL"):
                return self._from_env(os.environ["DSPEX_LOCAL_BASE_URL"])
            if self._base_url is not None and self._alive():
                return self._base_url
            if self._base_url is not None:
                self._forget()
            return self._adopt_or_start()

    def status(self) -> dict[str, Any]:
        """Health and identity of the server this service uses (never starts one)."""
        with self._lock:
            env_url = (
                os.environ.get("DSPEX_LOCAL_BASE_URL") if self.use_env and self._model_arg is None else None
            )
            if env_url and self._base_url is None:
                url = env_url.rstrip("/")
                url = url if url.endswith("/v1") else f"{url}/v1"
                info: dict[str, Any] = {"base_url": url, "source": "DSPEX_LOCAL_BASE_URL", "pid": None}
                info.update(health(url))
                return info
            if self._base_url is None:
                info = server_status(self._model_arg)
                info["owned_by_me"] = False
                return info
            info = {
                "base_url": self._base_url,
                "pid": self._pid,
                "model": self.alias,
                "model_path": str(self.model_path),
                "owned_by_me": self.owned,
                "n_threads": self.n_threads,
                "n_ctx": self.n_ctx,
                "startup_seconds": self.startup_seconds,
                "restarts": len(self._restarts),
                "running": self._pid is not None and pid_alive(self._pid),
            }
            info.update(health(self._base_url))
            return info

    def stop(self) -> None:
        """Stop the server if this service started it; otherwise just let go of it."""
        with self._lock:
            # A child forked from the owner inherits this object (and its atexit):
            # only the process that started the server may stop it.
            if self.owned and self._pid is not None:
                terminate(self._pid)
                if self._proc is not None:
                    with contextlib.suppress(Exception):
                        self._proc.wait(timeout=1)
                state_path, _, _ = paths(self.model_path)
                remove_state(state_path, self._pid)
            self._forget()

    def __enter__(self) -> LocalModelService:
        self.ensure_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------

    def _forget(self) -> None:
        self._proc = None
        self._pid = None
        self._base_url = None
        self._owned = False
        self._last_ok = 0.0

    def _from_env(self, url: str) -> str:
        url = url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        host, port = host_port(url)
        if not port_open(host, port, timeout=2.0):
            raise LocalModelError(
                f"the local model server at {url} (from DSPEX_LOCAL_BASE_URL) is not reachable; "
                "the process that started it may have exited. Unset DSPEX_LOCAL_BASE_URL to let "
                "this process start its own, or run `dspex lm serve --detach`"
            )
        return url

    def _alive(self) -> bool:
        assert self._base_url is not None
        if self._pid is not None:
            if self._proc is not None and self._owner_pid == os.getpid():
                # poll() stays None while a killed multi-threaded server is still being torn
                # down (its leader already a zombie): look at the process state as well.
                if self._proc.poll() is not None or not pid_alive(self._pid):
                    return False
            elif not is_our_server(self._pid):
                return False
        now = time.monotonic()
        if now - self._last_ok < 0.5:
            return True
        host, port = host_port(self._base_url)
        if port_open(host, port):
            self._last_ok = now
            return True
        return False

    def _adopt_or_start(self) -> str:
        model = self.model
        state_path, lock_path, log_path = paths(model.path)
        with locked(lock_path, self.startup_timeout + 10):
            state = read_state(state_path)
            if state is not None:
                adopted = self._try_adopt(state)
                if adopted:
                    return adopted
            prev_port = int(state.get("port", 0)) if state else 0
            return self._start_locked(model, state_path, log_path, prev_port)

    def _try_adopt(self, state: dict[str, Any]) -> str | None:
        pid = int(state.get("pid") or 0)
        url = str(state.get("base_url") or "")
        if not pid or not url or not is_our_server(pid):
            return None
        host, port = host_port(url)
        if not port_open(host, port, timeout=2.0):
            return None
        self._pid = pid
        self._base_url = url
        self._owned = False
        self._last_ok = time.monotonic()
        return url

    def _start_locked(self, model: Selected, state_path: Path, log_path: Path, prev_port: int) -> str:
        check_server_installed()
        self._backoff()
        # Prefer the configured port, then the port the last server had (so URLs handed
        # to workers stay valid across a restart), then any free port.
        if self.port:
            port = self.port
        elif prev_port and wait_port_free(self.host, prev_port, 3.0):
            port = prev_port
        else:
            port = free_port(self.host)
        launched = launch(
            model,
            host=self.host,
            port=port,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            state_path=state_path,
            log_path=log_path,
            timeout=self.startup_timeout,
            owned=True,
        )
        self.startup_seconds = launched.startup_seconds
        self._proc = launched.proc
        self._pid = launched.proc.pid
        self._base_url = launched.url
        self._owned = True
        self._owner_pid = os.getpid()
        self._last_ok = time.monotonic()
        if not self._atexit:
            atexit.register(self._at_exit)
            self._atexit = True
        return launched.url

    def _backoff(self) -> None:
        """Space out restarts of a server that keeps dying; give up after 5 in a minute."""
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60.0]
        if len(self._restarts) >= 5:
            raise LocalModelError(
                "the local model server died 5 times within a minute; see the log in "
                f"{state_dir()} and `dspex lm status`; or set [lm] in dspex.toml or DSPEX_LM "
                "to use a real endpoint"
            )
        if self._restarts:
            time.sleep(min(4.0, 0.25 * 2 ** (len(self._restarts) - 1)))
        self._restarts.append(now)

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


# --------------------------------------------------------------------------- module level


_default_lock = threading.Lock()
_default: LocalModelService | None = None
_default_lm: Any = None
_default_lm_url: str | None = None


def default_service() -> LocalModelService:
    """The process-wide service, configured from ``[local]`` in the config."""
    global _default
    with _default_lock:
        if _default is None:
            cfg = local_config()
            if cfg.get("enabled") is False:
                raise LocalModelError(
                    "the embedded local model is disabled ([local] enabled = false or "
                    "DSPEX_NO_LOCAL_MODEL); set [lm] in dspex.toml or DSPEX_LM to use a real endpoint"
                )
            _default = LocalModelService(
                host=str(cfg.get("host", "127.0.0.1")),
                port=int(cfg.get("port", 0) or 0),
                n_ctx=int(cfg["n_ctx"]) if cfg.get("n_ctx") else None,
                n_threads=cfg.get("n_threads"),
                startup_timeout=float(cfg.get("startup_timeout", 120.0)),
            )
        return _default


def default_lm() -> Any:
    """A ``dspex.LM`` for the embedded model, starting the service if needed.

    Temperature 0, ``max_tokens`` from ``[local] max_tokens`` (else the model's, 512),
    and ``supports_grammar`` so Predict constrains replies with a grammar. The LM is
    reused while the server URL stays the same.
    """
    global _default_lm, _default_lm_url
    service = default_service()
    url = service.ensure_running()
    with _default_lock:
        if _default_lm is not None and _default_lm_url == url:
            return _default_lm
        from ..native.lm import LM

        spec = spec_for()
        default_max = spec.max_tokens if spec else DEFAULT_MAX_TOKENS
        max_tokens = int(local_config().get("max_tokens") or default_max)
        _default_lm = LM(
            f"openai/{service.alias}", api_base=url, temperature=0.0, max_tokens=max_tokens, grammar=True
        )
        _default_lm_url = url
        return _default_lm
