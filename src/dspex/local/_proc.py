"""Process and port helpers for the local server: liveness, ports, termination, spawning.

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def pid_alive(pid: int) -> bool:
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


def is_our_server(pid: int) -> bool:
    """True when ``pid`` runs a dspex local server (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return pid_alive(pid)  # no /proc (not Linux): trust the pid
    return b"dspex.local._server" in cmd and pid_alive(pid)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_port_free(host: str, port: int, timeout: float) -> bool:
    """Wait (briefly) for a dead server's port to be released; True once it is free."""
    deadline = time.monotonic() + timeout
    while not port_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, grace: float = 3.0) -> None:
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
            if not pid_alive(pid):
                return
            time.sleep(0.05)


class Spawner:
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


spawner = Spawner()


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads(share: float = 1.0) -> int:
    """Generation threads: ``share`` of the cores (at least one).

    SmolLM2-135M's per-token matmuls are tiny, so thread sync costs more than a second
    core gains (2 shared cores: 1 thread 33 tok/s, 2 threads 15-21 tok/s): share 0.5.
    Qwen2.5-0.5B gains from both cores (~27 tok/s on 2): share 1. Prompt processing
    always uses every core.
    """
    return max(1, int(cores() * share))


def host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", int(parts.port or 80)


def server_args(model: Path, alias: str, host: str, port: int, n_ctx: int, n_threads: int) -> list[str]:
    return [
        "--model", str(model),
        "--model_alias", alias,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        "--n_threads_batch", str(max(n_threads, cores())),
        "--logits_all", "false",  # logits for the last token only: faster prompt processing
        "--interrupt_requests", "false",  # a second caller must not cut a first caller's stream
        "--verbose", "false",
        *prompt_cache_args(),
    ]  # fmt: skip


def prompt_cache_args() -> list[str]:
    """Keep KV states of recent prompts in RAM and resume from the longest shared prefix.

    The server alone reuses only the previous request's prefix; the main job alternates
    programs (plan, refine, synthesis), so each call would re-read its whole prompt.
    ``DSPEX_LOCAL_PROMPT_CACHE=0`` turns it off; ``[local]``-free on purpose: it is a
    server start flag.
    """
    if os.environ.get("DSPEX_LOCAL_PROMPT_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return []
    size = int(os.environ.get("DSPEX_LOCAL_PROMPT_CACHE_BYTES", str(1 << 30)))
    return ["--cache", "true", "--cache_type", "ram", "--cache_size", str(size)]


def server_env() -> dict[str, str]:
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
