"""Supervised Python worker processes with sessions (our Snakepit).

    from dspex.pool import Pool
    with Pool("echo", 2, handlers=["dspex.testing.handlers"]) as pool:
        pool.call("echo", 42)

Names load lazily so that worker processes, which import ``dspex.pool.handler``
and ``dspex.pool.worker``, do not pay for the host-side machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Eager (stdlib only): the submodule ``handler`` would otherwise shadow the decorator.
from .handler import Context, handler

__all__ = ["CallResult", "Context", "Pool", "PoolManager", "handler", "manager", "set_default_manager"]

_LAZY = {
    "Pool": ".pool",
    "CallResult": ".pool",
    "PoolManager": ".manager",
    "manager": ".manager",
    "set_default_manager": ".manager",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dspex.pool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from .manager import PoolManager, manager, set_default_manager
    from .pool import CallResult, Pool
