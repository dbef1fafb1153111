"""A Pool's configuration (``PoolConfig``) and the routing state its parts share
(``PoolShared``, guarded by its one lock).

``Pool`` (pool.py) is its configuration plus parts that each own one job and get only
what they need: ``Caller`` (``_call.py``), ``Dispatcher`` (``_dispatch.py``),
``WorkerIO`` (``_worker_io.py``), ``Supervisor`` (``_supervisor.py``) and ``Template``
(``_template.py``). State more than one part reads and writes lives in ``PoolShared``;
everything else belongs to one part (each part's docstring says what it owns).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.errors import ConfigError, WorkerStartError
from dspex.pool import protocol as P
from dspex.pool.sessions import SessionStore

if TYPE_CHECKING:
    from dspex.pool._call import _Call
    from dspex.pool._worker_io import _Worker


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


class PoolConfig:
    """The constructor's options as public attributes, validated here. Read-only after
    construction, so every thread reads them without a lock."""

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

        self._post_init(P.Codec(allow_pickle, max_frame), max_sessions, session_ttl_s)

    def _post_init(self, codec: P.Codec, max_sessions: int, session_ttl_s: float | None) -> None:
        """Pool builds its parts here (keeps one constructor signature, defined above)."""


class PoolShared:
    """The routing state more than one part reads and writes. Every field is guarded by
    ``lock`` (the pool lock; lock order: pool lock -> a worker's ``send_lock``) unless its
    comment says otherwise. Never held across a blocking wait, a handler or a callback."""

    __slots__ = (
        "by_pid",
        "by_token",
        "closed",
        "counts",
        "handler_table",
        "lock",
        "n_queued",
        "q_bytes",
        "queue",
        "ready_cond",
        "sessions",
        "start_error",
        "state",
        "wake_sup",
        "workers",
    )

    def __init__(self, max_sessions: int, session_ttl_s: float | None) -> None:
        self.lock = threading.Lock()
        self.ready_cond = threading.Condition(self.lock)  # a worker ready, a start failed, closed
        self.wake_sup = threading.Event()  # thread-safe itself: wakes the supervisor thread
        # Worker records: the supervisor adds and removes them (the template fills in
        # by_pid when a fork is reported); the dispatcher routes on them.
        self.workers: list[_Worker] = []
        self.by_pid: dict[int, _Worker] = {}
        self.by_token: dict[int, _Worker] = {}
        # The general queue (per-worker queues: ``_Worker.strict_q``): the dispatcher's; the
        # supervisor re-queues a dead worker's unstarted calls; Pool.close empties them.
        self.queue: deque[_Call] = deque()
        self.n_queued = 0  # general + strict queues
        self.q_bytes = 0  # their request frames' bytes (queue_max_bytes)
        # The dispatcher binds sessions to workers; the supervisor unbinds and expires them.
        self.sessions = SessionStore(max_sessions, session_ttl_s)
        self.counts = {
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
        # Written under the lock, read without it by callers (a stale read only takes the
        # slow path, which locks). handler_table: the template's, replaced whole when it is ready.
        self.handler_table: dict[str, list[Any]] = {}
        self.state = "new"  # Pool: new -> running -> closed
        self.closed = False  # Pool.close
        self.start_error: WorkerStartError | None = None  # the supervisor's: cleared by a ready worker

    def queued(self, call: _Call) -> None:
        """Count a call into the queues (general or a worker's). Lock held."""
        self.n_queued += 1
        self.q_bytes += len(call.frame)

    def unqueued(self, call: _Call) -> None:
        """Count a call out of the queues. Lock held."""
        self.n_queued -= 1
        self.q_bytes -= len(call.frame)
