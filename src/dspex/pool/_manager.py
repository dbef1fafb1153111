"""Named pools built from configuration, started lazily, closed at exit.

Private module (``_manager``): its public names are ``dspex.pool.PoolManager``,
``dspex.pool.manager()`` and ``dspex.pool.set_default_manager()``; a module named
``manager`` would be rebound over the function ``manager`` (docs/internals.md).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from dspex.errors import ConfigError
from dspex.pool.backend import PoolBackend, backend_keys, create_pool

__all__ = ["PoolManager", "manager", "set_default_manager"]

# Pool keyword arguments a config table may set (callbacks are code, not config).
_KEYS = {
    "size",
    "handlers",
    "python",
    "preload",
    "env",
    "max_requests",
    "max_age_s",
    "max_rss_mb",
    "queue_limit",
    "queue_max_bytes",
    "max_mem_mb",
    "call_timeout_s",
    "affinity",
    "allow_pickle",
    "start_timeout_s",
    "max_frame",
    "pipeline_depth",
    "pipeline_latency_s",
    "max_concurrency",
    "cancel_grace_s",
    "shutdown_grace_s",
    "max_sessions",
    "session_ttl_s",
    "start_method",
    "callback_threads",
    "forward_stderr",
    "hint_wait_s",
}


class PoolManager:
    """Named pools from config: ``PoolManager(config).get("dspy")``.

    ``config`` is the ``pools`` table (``{name: {size, handlers, ...}}``) or a whole
    configuration dict with a ``pools`` key; None reads
    ``dspex.settings.load_config()["pools"]`` (``dspex.toml`` / ``[tool.dspex]``).
    A pool starts on its first ``get``; ``close_all`` runs at interpreter exit.
    """

    def __init__(self, config: dict[str, Any] | None = None, *, forward_stderr: bool | None = None) -> None:
        if config is None:
            from dspex.settings import load_config

            config = load_config()
        pools = config.get("pools", config) if isinstance(config, dict) else None
        if not isinstance(pools, dict):
            raise ConfigError("PoolManager needs a dict of pools: {name: {size: ..., handlers: [...]}}")
        for name, table in pools.items():
            if not isinstance(table, dict):
                raise ConfigError(f"pools.{name} must be a table, not {type(table).__name__}")
            known = backend_keys(name, table, _KEYS)  # backend = "local" | "ray"
            unknown = set(table) - known
            if unknown:
                raise ConfigError(
                    f"pools.{name}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}"
                )
        self._config: dict[str, dict[str, Any]] = {k: dict(v) for k, v in pools.items()}
        if forward_stderr is not None:  # a default: a pool's own table still decides
            for table in self._config.values():
                table.setdefault("forward_stderr", forward_stderr)
        self._pools: dict[str, PoolBackend] = {}
        # name -> (done event, [error]) while its first get() starts it
        self._starting: dict[str, tuple[threading.Event, list[BaseException]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close_all)

    def names(self) -> list[str]:
        return sorted(self._config)

    def config(self, name: str) -> dict[str, Any]:
        if name not in self._config:
            raise ConfigError(
                f"no pool named {name!r} in the configuration; configured: {self.names()} "
                "(add a [pools.<name>] table to dspex.toml)"
            )
        return dict(self._config[name])

    def get(self, name: str, **overrides: Any) -> PoolBackend:
        """The pool ``name``, started on first use (``overrides`` apply then, e.g. callbacks=).

        Returns only a started pool: threads asking while the first one starts it wait
        for that start, and get its error if it fails.
        """
        with self._lock:
            pool = self._pools.get(name)
            starting = self._starting.get(name)
            if pool is not None and starting is None:
                return pool
            if starting is None:
                if self._closed:
                    from dspex.errors import PoolClosed

                    raise PoolClosed(f"the pool manager is closed; cannot start {name!r}", pool=name)
                pool = create_pool(name, {**self.config(name), **overrides})
                self._pools[name] = pool
                starting = self._starting[name] = (threading.Event(), [])
                owner = True
            else:
                owner = False
        done, error = starting
        if not owner:
            done.wait()
            if error:
                raise error[0]
            assert pool is not None
            return pool
        assert pool is not None
        try:
            pool.start()
        except BaseException as exc:
            error.append(exc)
            with self._lock:
                if self._pools.get(name) is pool:
                    del self._pools[name]
            pool.close()
            raise
        finally:
            with self._lock:
                self._starting.pop(name, None)
            done.set()
        return pool

    def started(self) -> list[str]:
        with self._lock:
            return sorted(self._pools)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pools = dict(self._pools)
        return {name: pool.stats() for name, pool in pools.items()}

    def close(self, name: str) -> None:
        with self._lock:
            pool = self._pools.pop(name, None)
        if pool is not None:
            pool.close()

    def close_all(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()


_default: PoolManager | None = None
_default_lock = threading.Lock()


def manager() -> PoolManager:
    """The process-wide default manager (built from ``load_config()`` on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PoolManager()
        return _default


def set_default_manager(mgr: PoolManager | None, *, replace: bool = True) -> PoolManager | None:
    """Install ``mgr`` as what ``manager()`` returns (None: rebuild from config on next use).

    ``replace=False`` installs it only if no default exists yet. Returns the default in
    effect afterwards. The previous default is not closed (its pools close at exit).
    E.g. ``set_default_manager(PoolManager(forward_stderr=False), replace=False)``.
    """
    global _default
    with _default_lock:
        if replace or _default is None:
            _default = mgr
        return _default
