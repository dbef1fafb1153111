"""Which worker pool runs a call: ``pool=``, ``dspex.context(pools=...)``, or the manager."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ..errors import ImplementationUnavailable
from ..settings import current, load_config

__all__ = ["pool_for"]

_fallback_pools: dict[str, Any] = {}
_fallback_lock = threading.Lock()


def pool_for(name: str, pool: Any = None) -> Any:
    """The pool for ``name``: ``pool=`` (a Pool or a manager), ``dspex.context(pools={...})``,
    else the process-wide manager (pools start lazily from config)."""
    if pool is None:
        pools = current().get("pools")
        if isinstance(pools, Mapping):
            pool = pools.get(name) or pools.get("dspy")
        elif pools is not None:
            pool = pools
    if pool is not None:
        if hasattr(pool, "call_with"):
            return pool
        if hasattr(pool, "get"):
            return pool.get(name)
        raise TypeError(f"pool= takes a Pool or a PoolManager, not {type(pool).__name__}")
    try:
        from ..pool import manager as default_manager
    except ImportError:  # the manager is optional: fall back to pools built from config here
        pass
    else:
        return default_manager().get(name)
    with _fallback_lock:  # until a PoolManager exists: pools from config, closed at exit by Pool
        p = _fallback_pools.get(name)
        if p is None:
            from ..pool.pool import Pool

            conf = dict(load_config().get("pools", {}).get(name) or {})
            if not conf:
                raise ImplementationUnavailable(f"no pool named {name!r} in the config [pools] section")
            p = _fallback_pools[name] = Pool(name, **conf)
        return p
