"""A Ray pool's configuration: validation, joining/starting Ray, and the actor options
that carry placement (size, per-worker CPUs / GPUs / memory / custom resources, spread)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dspex.errors import ConfigError, WorkerStartError
from dspex.pool import protocol as P

__all__ = ["PLACEMENTS", "RAY_KEYS", "RayPoolConfig", "check_keys", "ensure_ray"]

# spread: Ray's SPREAD strategy (best effort over nodes, restarts go anywhere);
# the others reserve one placement-group bundle per worker with that PG strategy.
PLACEMENTS = ("default", "spread", "pack", "strict_spread", "strict_pack")

# Options a ``backend = "ray"`` table may set (besides ``backend``).
RAY_KEYS = {
    "size", "handlers", "preload", "env", "queue_limit", "call_timeout_s", "affinity", "allow_pickle",
    "start_timeout_s", "max_frame", "max_concurrency", "cancel_grace_s", "shutdown_grace_s", "max_sessions",
    "session_ttl_s", "callback_threads", "forward_stderr",
    # Ray only
    "address", "namespace", "num_cpus", "num_gpus", "memory_mb", "resources", "placement", "max_restarts",
    "runtime_env", "init",
}
# Local-pool options that mean nothing on Ray: refused rather than silently ignored.
_LOCAL_ONLY = {
    "python": "the interpreter is the Ray worker's (use runtime_env, e.g. {'pip': [...]} or a cluster image)",
    "start_method": "Ray starts the actor processes",
    "pipeline_depth": "calls queue in the actor; there is no host-side pipelining",
    "pipeline_latency_s": "calls queue in the actor; there is no host-side pipelining",
    "max_requests": "recycling is not implemented on the ray backend yet",
    "max_age_s": "recycling is not implemented on the ray backend yet",
    "max_rss_mb": "recycling is not implemented on the ray backend yet (use memory_mb to reserve memory)",
    "hint_wait_s": "a busy hint session spills at once on the ray backend",
}


@dataclass
class RayPoolConfig:
    name: str = "pool"
    size: int = 2
    handlers: list[str] = field(default_factory=list)
    preload: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    queue_limit: int = 1000
    call_timeout_s: float | None = None
    affinity: str = "hint"
    callbacks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    allow_pickle: bool = False
    start_timeout_s: float = 120.0
    max_frame: int = P.DEFAULT_MAX_FRAME
    max_concurrency: int = 64
    cancel_grace_s: float = 5.0
    shutdown_grace_s: float = 2.0
    max_sessions: int = 10_000
    session_ttl_s: float | None = 3600.0
    callback_threads: int = 8
    forward_stderr: bool | None = None
    address: str | None = None
    namespace: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory_mb: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    placement: str = "spread"
    max_restarts: int = -1
    runtime_env: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, options: dict[str, Any]) -> RayPoolConfig:
        check_keys(name, [k for k in options if k != "callbacks"])
        cfg = cls(name=name, **options)
        cfg._check()
        return cfg

    def _check(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"pool {self.name!r} (backend='ray'): {what}")

        if int(self.size) < 1:
            raise bad(f"size must be >= 1, got {self.size}")
        if self.affinity not in ("hint", "strict", "none"):
            raise bad(f"affinity must be 'hint', 'strict' or 'none', not {self.affinity!r}")
        if self.placement not in PLACEMENTS:
            raise bad(f"placement must be one of {list(PLACEMENTS)}, not {self.placement!r}")
        for key in ("num_cpus", "num_gpus", "memory_mb"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int | float) or v < 0):
                raise bad(f"{key} must be a number >= 0, got {v!r}")
        if not isinstance(self.resources, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and v >= 0 for k, v in self.resources.items()
        ):
            raise bad(f"resources must be a table of name = amount (e.g. {{accel = 1}}), got {self.resources!r}")
        if not isinstance(self.runtime_env, dict) or not isinstance(self.init, dict):
            raise bad("runtime_env and init must be tables")
        self.size = int(self.size)
        self.max_concurrency = max(1, int(self.max_concurrency))
        self.handlers = list(self.handlers)
        self.preload = list(self.preload)
        self.env = {str(k): str(v) for k, v in self.env.items()}

    # -- what Ray gets -------------------------------------------------------------
    def bundle(self) -> dict[str, float]:
        """One worker's resources, as a placement-group bundle."""
        out: dict[str, float] = {"CPU": 1.0 if self.num_cpus is None else float(self.num_cpus)}
        if self.num_gpus:
            out["GPU"] = float(self.num_gpus)
        if self.memory_mb:
            out["memory"] = float(self.memory_mb) * 1024 * 1024
        out.update({k: float(v) for k, v in self.resources.items()})
        return out

    def actor_options(self, strategy: Any = None) -> dict[str, Any]:
        """``ActorClass.options(**...)`` for one worker; ``strategy`` places it (SPREAD / a PG bundle)."""
        env = {**self.env, "DSPEX_POOL_WORKER": f"{self.name}:ray"}
        runtime_env = dict(self.runtime_env)
        runtime_env["env_vars"] = {**dict(runtime_env.get("env_vars") or {}), **env}
        opts: dict[str, Any] = {
            "max_restarts": int(self.max_restarts),
            "max_task_retries": 0,  # a call never silently runs twice
            "max_concurrency": self.max_concurrency,  # control methods have their own group
            "runtime_env": runtime_env,
        }
        if self.num_cpus is not None:
            opts["num_cpus"] = float(self.num_cpus)
        if self.num_gpus is not None:
            opts["num_gpus"] = float(self.num_gpus)
        if self.memory_mb is not None:
            opts["memory"] = int(float(self.memory_mb) * 1024 * 1024)
        if self.resources:
            opts["resources"] = {k: float(v) for k, v in self.resources.items()}
        if strategy is not None:
            opts["scheduling_strategy"] = strategy
        return opts


def check_keys(name: str, keys: Any) -> None:
    """ConfigError for an option a Ray pool does not take (saying why, for local-only ones)."""
    for key in keys:
        if key in _LOCAL_ONLY:
            raise ConfigError(f"pool {name!r}: option {key!r} is not available with backend='ray': {_LOCAL_ONLY[key]}")
        if key not in RAY_KEYS:
            raise ConfigError(f"pool {name!r}: unknown option {key!r} for backend='ray'; known: {sorted(RAY_KEYS)}")


def ensure_ray(cfg: RayPoolConfig) -> bool:
    """Connect to Ray: ``address`` joins an existing cluster ("auto", "ray://host:10001",
    "host:6379"); without it a running local cluster ($RAY_ADDRESS) is joined or a local
    one is started for development. Returns True if this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(cfg.init)
    if cfg.namespace is not None:
        kwargs.setdefault("namespace", cfg.namespace)
    if cfg.forward_stderr is not None:
        kwargs.setdefault("log_to_driver", bool(cfg.forward_stderr))
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        kwargs.setdefault("include_dashboard", False)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise WorkerStartError(
            f"pool {cfg.name!r}: cannot reach the Ray cluster at {address!r}: {exc}; start it (`ray start --head`) "
            "or fix the pool's address",
            pool=cfg.name,
        ) from None
    return True
