"""``_PoolState``: a Pool's configuration and the state its parts share.

``Pool`` (pool.py) is assembled from parts that each own one job (``_CallerSide``,
``_Dispatch``, ``_WorkerIO``, ``_Supervisor``, ``_Template``); all of them work on
the one object whose fields ``__init__`` below sets up, guarded by ``_lock``. The
stubs at the end name what each part offers the others (for type checkers only).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigError, WorkerStartError
from dspex.pool import protocol as P
from dspex.pool.sessions import SessionStore
from dspex.pool.stats import LatencyReservoir

if TYPE_CHECKING:
    import socket
    import subprocess

    from dspex.pool._call import _Call
    from dspex.pool._worker_io import _Worker
    from dspex.pool.sessions import Session


# Queued calls hold their encoded request: bound the bytes, not only the count (a call
# is always admitted to an empty queue, so one request up to max_frame still runs).
DEFAULT_QUEUE_MAX_BYTES = 128 * 1024 * 1024


def _resolve_python(python: str | os.PathLike[str] | None) -> str:
    """An interpreter path; a virtualenv directory means its bin/python."""
    if python is None:
        return sys.executable
    p = Path(python)
    if p.is_dir():
        return str(p / "bin" / "python")
    return str(p)


def _stderr_default() -> bool:
    """``forward_stderr`` when not given: env DSPEX_POOL_STDERR=quiet|forward (default forward)."""
    v = os.environ.get("DSPEX_POOL_STDERR", "forward").strip().lower()
    if v in ("quiet", "off", "0", "false", "no"):
        return False
    if v in ("forward", "on", "1", "true", "yes", ""):
        return True
    raise ConfigError(f"DSPEX_POOL_STDERR must be 'quiet' or 'forward', not {v!r}")


class _PoolState:
    """Configuration (public attributes) and shared state (``_`` attributes)."""

    def __init__(
        self,
        name: str = "pool",
        size: int = 2,
        handlers: list[str] | tuple[str, ...] = (),
        python: str | os.PathLike[str] | None = None,
        preload: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        max_requests: int | None = None,
        max_age_s: float | None = None,
        max_rss_mb: float | None = None,
        queue_limit: int = 1000,
        call_timeout_s: float | None = None,
        affinity: str = "hint",
        callbacks: dict[str, Callable[..., Any]] | None = None,
        allow_pickle: bool = False,
        start_timeout_s: float = 60.0,
        *,
        max_frame: int = P.DEFAULT_MAX_FRAME,
        pipeline_depth: int = 8,
        pipeline_latency_s: float = 0.002,
        max_concurrency: int = 64,
        cancel_grace_s: float = 5.0,
        shutdown_grace_s: float = 2.0,
        max_sessions: int = 10_000,
        session_ttl_s: float | None = 3600.0,
        start_method: str = "fork",
        callback_threads: int = 8,
        forward_stderr: bool | None = None,
        hint_wait_s: float = 0.05,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 10.0,
        queue_max_bytes: int = DEFAULT_QUEUE_MAX_BYTES,
        max_mem_mb: float | None = None,
    ) -> None:
        if size < 1:
            raise ConfigError(f"pool {name!r}: size must be >= 1, got {size}")
        if affinity not in ("hint", "strict", "none"):
            raise ConfigError(f"pool {name!r}: affinity must be 'hint', 'strict' or 'none', not {affinity!r}")
        if start_method not in ("fork", "spawn"):
            raise ConfigError(f"pool {name!r}: start_method must be 'fork' or 'spawn', not {start_method!r}")
        self.name = name
        self.size = int(size)
        self.handlers = list(handlers)
        self.python = _resolve_python(python)
        self.preload = list(preload)
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.max_requests = max_requests
        self.max_age_s = max_age_s
        self.max_rss_mb = max_rss_mb
        self.queue_limit = int(queue_limit)
        if int(queue_max_bytes) < 1:
            raise ConfigError(f"pool {name!r}: queue_max_bytes must be >= 1, got {queue_max_bytes}")
        self.queue_max_bytes = int(queue_max_bytes)
        self.max_mem_mb = max_mem_mb
        self.call_timeout_s = call_timeout_s
        self.affinity = affinity
        self.callbacks = dict(callbacks or {})
        self.allow_pickle = allow_pickle
        self.start_timeout_s = start_timeout_s
        self.max_frame = max_frame
        self.pipeline_depth = max(1, pipeline_depth)
        self.pipeline_latency_s = pipeline_latency_s
        self.max_concurrency = max(1, max_concurrency)
        self.cancel_grace_s = cancel_grace_s
        self.shutdown_grace_s = shutdown_grace_s
        self.start_method = start_method
        self.callback_threads = callback_threads
        if forward_stderr is None:
            forward_stderr = _stderr_default()
        self.forward_stderr = forward_stderr
        self.hint_wait_s = max(0.0, float(hint_wait_s))
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s

        self._codec = P.Codec(allow_pickle, max_frame)
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._by_pid: dict[int, _Worker] = {}
        self._by_token: dict[int, _Worker] = {}
        self._queue: deque[_Call] = deque()
        self._n_queued = 0  # general + strict queues
        self._q_bytes = 0  # their request frames' bytes (queue_max_bytes)
        self._sessions = SessionStore(max_sessions, session_ttl_s)
        self._handler_table: dict[str, list[Any]] = {}
        self._ewma: dict[str, float] = {}
        self._rids = itertools.count(1)
        self._tokens = 0
        self._state = "new"  # new -> running -> closed
        self._closed = False
        self._start_error: WorkerStartError | None = None
        self._fail_streak = 0
        self._next_start_at = 0.0
        self._ready_cond = threading.Condition(self._lock)
        self._wake_sup = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._latency = LatencyReservoir()
        self._counts = {
            "calls": 0,
            "errors": 0,
            "timeouts": 0,
            "crashes": 0,
            "restarts": 0,
            "recycles": 0,
            "start_attempts": 0,
            "start_failures": 0,
            "overloaded": 0,
            "cancelled": 0,
            "requeued": 0,
            "protocol_errors": 0,
        }
        # template (zygote)
        self._zproc: subprocess.Popen[bytes] | None = None
        self._zctl: socket.socket | None = None
        self._zerr_fd = -1
        self._zerr_tail = bytearray()
        self._zready = False
        self._zinfo: dict[str, Any] = {}
        self._zstarted_at = 0.0
        # threads
        self._ep: Any = None
        self._wake_fd = -1
        self._fdmap: dict[int, tuple[str, Any]] = {}
        self._io_thread: threading.Thread | None = None
        self._sup_thread: threading.Thread | None = None
        self._last_slow_tick = 0.0
        self._next_spill = float("inf")  # earliest spill_at of a hint call waiting for its worker

    def _queued(self, call: _Call) -> None:
        """Count a call into the queues (general or a worker's). Lock held."""
        self._n_queued += 1
        self._q_bytes += len(call.frame)

    def _unqueued(self, call: _Call) -> None:
        """Count a call out of the queues. Lock held."""
        self._n_queued -= 1
        self._q_bytes -= len(call.frame)

    if TYPE_CHECKING:  # what each part offers the others (defined in the modules named)
        # pool.py
        def start(self) -> _PoolState: ...

        # _dispatch.py
        def _abandon(self, call: _Call, timed_out: bool) -> bool: ...
        def _submit(self, call: _Call) -> None: ...
        def _pump(self, out: list[tuple[_Worker, _Call]]) -> None: ...
        def _send_pumped(self, out: list[tuple[_Worker, _Call]]) -> None: ...
        def _release(self, w: _Worker, call: _Call) -> None: ...
        @staticmethod
        def _is_running(w: _Worker, call: _Call) -> bool: ...
        def _unwait_hints(self, w: _Worker, now: float | None) -> None: ...
        def _spill_overdue(self, now: float) -> None: ...
        def _drop_in_workers(self, sessions: list[Session]) -> None: ...

        # _worker_io.py
        def _send_call(self, w: _Worker, call: _Call) -> bool: ...
        def _send_msg(self, w: _Worker, msg: list[Any]) -> None: ...
        def _arm(self, w: _Worker) -> None: ...
        def _lead(self, w: _Worker, call: _Call) -> None: ...
        def _on_readable(self, w: _Worker, flags: int = ...) -> None: ...
        def _drain_stderr(self, fd: int, owner: Any) -> None: ...

        # _supervisor.py
        def _on_ready(self, w: _Worker, m: list[Any]) -> None: ...
        def _on_eof(self, w: _Worker) -> None: ...
        def _on_limit(self, w: _Worker, what: str) -> None: ...
        def _protocol_error(self, w: _Worker, message: str) -> None: ...
        def _retire(self, w: _Worker, reason: str) -> None: ...
        def _kill(self, w: _Worker, reason: str) -> None: ...
        def _finalize(self, w: _Worker, why: str) -> None: ...
        def _start_failed(self, err: WorkerStartError) -> None: ...

        # _template.py
        def _start_zygote(self) -> None: ...
        def _on_zygote(self) -> None: ...
        def _zsend(self, msg: list[Any], fds: list[int] | None = None) -> bool: ...
        def _zkill(self, pid: int, sig: int) -> None: ...
