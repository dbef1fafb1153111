"""Supervised Python worker processes with sessions (our Snakepit).

    from dspex.pool import Pool
    with Pool("echo", 2, handlers=["dspex.testing.handlers"]) as pool:
        pool.call("echo", 42)

Names load lazily so that worker processes, which import ``dspex.pool.handler``
and ``dspex.pool.worker``, do not pay for the host-side machinery.

Modules. Host side (``Pool`` owns one object per ``_`` part, wired in ``Pool._post_init``):
  pool.py         ``Pool``: the public facade (start/close, call/acall/stream, sessions, stats)
  _state.py       ``PoolConfig`` (the options) and ``PoolShared`` (routing state under the pool lock)
  _call.py        ``Caller``: a call (``_Call``, ``CallResult``), waiting for it, delivering its outcome
  _dispatch.py    ``Dispatcher``: routing, affinity, pipelining, queues and backpressure, cancellation
  _worker_io.py   ``WorkerIO``: ``_Worker`` connections, frame writes, the I/O thread, the read fast path
  _supervisor.py  ``Supervisor``: worker lifecycle: spawn, handshake, crash/recycle, restart backoff
  _template.py    ``Template``: the template (zygote) process that forks workers, from the host's side
  _manager.py     ``PoolManager``: named pools from config, the default ``manager()``
  sessions.py     the session store (worker binding, cap, TTL); stats.py: latency quantiles
  backend.py      ``PoolBackend``: the interface both backends offer; ``backend =`` in config
  _ray/           ``RayPool``: the same interface on Ray actors (``backend = "ray"``)
Both sides: protocol.py (frames, codec, message kinds).
Worker side (stdlib + msgpack only): worker.py (entry point), _zygote.py (the template:
imports once, forks and reaps workers and what they leave behind), _runtime.py (a worker
serving its connection), _answers.py (how errors and callback replies cross),
_procsafe.py (leave with the host, kill descendants), handler.py (``@handler``, ``Context``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# Eager (stdlib only): the submodule ``handler`` would otherwise shadow the decorator.
from .handler import Context, handler

__all__ = [
    "CallResult", "Context", "Pool", "PoolBackend", "PoolManager", "RayPool", "handler", "manager", "set_default_manager",
]

_LAZY = {
    "Pool": ".pool",
    "CallResult": ".pool",
    "PoolManager": "._manager",
    "manager": "._manager",
    "set_default_manager": "._manager",
    "PoolBackend": ".backend",
    "RayPool": "._ray",  # imports Ray: only when asked for
}


__getattr__ = attach(__name__, _LAZY, globals())[0]


if TYPE_CHECKING:  # pragma: no cover
    from ._manager import PoolManager, manager, set_default_manager
    from ._ray import RayPool
    from .backend import PoolBackend
    from .pool import CallResult, Pool
