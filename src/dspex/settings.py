"""Configuration and the per-call / per-context settings.

Two things live here and nothing else:

* ``load_config()``: the project configuration, read once from ``dspex.toml``
  (or ``[tool.dspex]`` in ``pyproject.toml``) found from the working directory
  upwards, or from the file named by ``DSPEX_CONFIG``, merged over ``DEFAULTS``,
  with a few ``DSPEX_*`` environment overrides on top.
* ``context(...)`` / ``current()``: the LM, adapter, cache switch, rollout id and
  usage sinks in force for the running thread or asyncio task. One ContextVar,
  so every thread and task sees its own values and nothing global is mutated
  (DSPy's ``configure`` owner-thread rule has no equivalent here).
"""

from __future__ import annotations

import contextvars
import copy
import os
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULTS",
    "Settings",
    "Usage",
    "context",
    "current",
    "default_lm_provider",
    "load_config",
    "reset_config",
    "set_default_lm_provider",
    "shared_config",
]

# The defaults every config is merged over. Pools are started lazily, on first use.
DEFAULTS: dict[str, Any] = {
    "lm": {},  # e.g. {"model": "openai/gpt-4o-mini", "api_base": ..., "api_key_env": ...}
    "router": {"impl": "auto"},
    "cache": {"enabled": True, "memory_size": 10_000, "disk": False, "dir": "~/.cache/dspex"},
    "pools": {
        "dspy": {
            "size": 2,
            "handlers": ["dspex.bridge.dspy_handlers"],
            "preload": ["dspy"],
            "env": {"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            "affinity": "hint",
            "call_timeout_s": 600,
        },
        "optimizer": {
            "size": 1,
            "handlers": ["dspex.bridge.dspy_handlers"],
            "preload": ["dspy"],
            "env": {"LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            "affinity": "strict",
            "call_timeout_s": 3600,
        },
    },
    "local": {"enabled": True, "host": "127.0.0.1", "port": 0, "n_ctx": 2048},
    # dspex.retrieve() without source=: "bm25:<corpus>", "dense:<corpus>", "colbert:<url>"
    "retrieve": {"source": "bm25:solar_system"},
}

# Who makes the LM used when a call has none and config names none: the embedded model.
# The top-level package installs it (dspex/__init__.py), so the native layer reaches the
# local layer only through this slot, never by import (the layering contract).
_default_lm_provider: list[Callable[[], Any]] = []


def set_default_lm_provider(provider: Callable[[], Any]) -> None:
    """Install the factory of the last-resort LM (one slot: a later call replaces it)."""
    _default_lm_provider[:] = [provider]


def default_lm_provider() -> Callable[[], Any] | None:
    return _default_lm_provider[0] if _default_lm_provider else None


_config_lock = threading.Lock()
_config: dict[str, Any] | None = None
_config_version = 0  # bumped whenever the cached config is replaced or dropped


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _find_config_file(start: Path) -> tuple[Path, bool] | None:
    """Return (path, is_pyproject) of the nearest config file at or above ``start``."""
    for folder in (start, *start.parents):
        candidate = folder / "dspex.toml"
        if candidate.is_file():
            return candidate, False
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                data = tomllib.loads(pyproject.read_text())
            except (OSError, tomllib.TOMLDecodeError):
                continue
            if "dspex" in data.get("tool", {}):
                return pyproject, True
    return None


def _read_file(path: Path, is_pyproject: bool) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    if is_pyproject:
        data = data.get("tool", {}).get("dspex", {})
    if not isinstance(data, dict):
        raise ConfigError(f"config in {path} must be a table")
    return data


def _env_overrides() -> dict[str, Any]:
    over: dict[str, Any] = {}
    if model := os.environ.get("DSPEX_LM"):
        over.setdefault("lm", {})["model"] = model
    if base := os.environ.get("DSPEX_API_BASE"):
        over.setdefault("lm", {})["api_base"] = base
    if impl := os.environ.get("DSPEX_IMPL"):
        over.setdefault("router", {})["impl"] = impl
    cache = os.environ.get("DSPEX_CACHE")
    if cache is not None:
        over.setdefault("cache", {})["enabled"] = cache.strip().lower() not in ("0", "false", "off", "no")
    if cache_dir := os.environ.get("DSPEX_CACHE_DIR"):
        over.setdefault("cache", {})["dir"] = cache_dir
        over["cache"]["disk"] = True
    if os.environ.get("DSPEX_NO_LOCAL_MODEL"):
        over.setdefault("local", {})["enabled"] = False
    return over


def load_config(path: str | os.PathLike[str] | None = None, *, reload: bool = False) -> dict[str, Any]:
    """Return the merged configuration (a deep copy; mutate it freely).

    ``path`` names a file explicitly; otherwise ``DSPEX_CONFIG`` or the nearest
    ``dspex.toml`` / ``pyproject.toml [tool.dspex]`` from the working directory.
    The result is cached per process unless ``path`` or ``reload`` is given.
    """
    global _config, _config_version
    with _config_lock:
        if _config is not None and path is None and not reload:
            return copy.deepcopy(_config)
        explicit = path or os.environ.get("DSPEX_CONFIG")
        data: dict[str, Any] = {}
        if explicit:
            p = Path(explicit)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist (set by DSPEX_CONFIG or path=)")
            data = _read_file(p, p.name == "pyproject.toml")
        else:
            found = _find_config_file(Path.cwd())
            if found:
                data = _read_file(*found)
        merged = _merge(_merge(DEFAULTS, data), _env_overrides())
        impl = merged.get("router", {}).get("impl", "auto")
        if impl not in ("auto", "native", "dspy"):
            raise ConfigError(f"router.impl must be 'auto', 'native' or 'dspy', not {impl!r}")
        if path is None:
            _config = merged
            _config_version += 1
        return copy.deepcopy(merged)


def shared_config() -> tuple[int, dict[str, Any]]:
    """``(version, config)`` without the deep copy: for hot paths that only read it.

    Never mutate the returned dict. ``version`` changes whenever the cached config
    is reloaded or reset, so callers can key their own caches on it.
    """
    if _config is None:
        load_config()
    with _config_lock:
        conf = _config
        version = _config_version
    if conf is None:  # reset between the two steps above: load again
        return shared_config()
    return version, conf


def reset_config() -> None:
    """Forget the cached configuration (tests, or after changing the working directory)."""
    global _config, _config_version
    with _config_lock:
        _config = None
        _config_version += 1


@dataclass
class Usage:
    """Token usage summed over the LM calls made inside one ``context()``.

    Thread-safe: calls from worker threads and tasks of the same context add up.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost: float = 0.0
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, model: str, prompt_tokens: int, completion_tokens: int, cost: float = 0.0) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.calls += 1
            self.cost += cost
            row = self.by_model.setdefault(
                model, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0, "cost": 0.0}
            )
            row["prompt_tokens"] += prompt_tokens
            row["completion_tokens"] += completion_tokens
            row["calls"] += 1
            row["cost"] += cost

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens,
                "calls": self.calls,
                "cost": self.cost,
                "by_model": copy.deepcopy(self.by_model),
            }


@dataclass(frozen=True)
class Settings:
    """What is in force for the running thread or task. Immutable; ``context()`` layers it."""

    lm: Any = None  # a dspex LM (anything with complete/acomplete)
    adapter: Any = None  # a ChatAdapter / JSONAdapter instance; None = ChatAdapter
    cache: bool | None = None  # None = the LM's / config's choice
    rollout_id: Any = None  # not None: bypass the cache for these calls
    impl: str | None = None  # router default for calls inside this context
    usage_sinks: tuple[Usage, ...] = ()  # every enclosing context's Usage
    extra: tuple[tuple[str, Any], ...] = ()  # other overrides, read with .get()

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.extra:
            if k == key:
                return v
        return default

    def record_usage(self, model: str, prompt_tokens: int, completion_tokens: int, cost: float = 0.0) -> None:
        for sink in self.usage_sinks:
            sink.add(model, prompt_tokens, completion_tokens, cost)


_EMPTY = Settings()
_current: contextvars.ContextVar[Settings] = contextvars.ContextVar("dspex_settings", default=_EMPTY)
_FIELDS = ("lm", "adapter", "cache", "rollout_id", "impl")


def current() -> Settings:
    """The settings in force for this thread or asyncio task."""
    return _current.get()


@contextmanager
def context(**overrides: Any) -> Iterator[Usage]:
    """Override settings for the code inside the ``with`` block (this thread/task only).

    ``with dspex.context(lm=lm, adapter=dspex.JSONAdapter()) as usage: ...``
    yields a :class:`Usage` that sums the tokens of every LM call made inside.
    Values given as ``None`` leave the enclosing value in place.
    """
    base = _current.get()
    usage = Usage()
    known = {k: v for k, v in overrides.items() if k in _FIELDS and v is not None}
    extra = dict(base.extra)
    extra.update({k: v for k, v in overrides.items() if k not in _FIELDS})
    new = replace(base, **known, usage_sinks=(*base.usage_sinks, usage), extra=tuple(extra.items()))
    token = _current.set(new)
    try:
        yield usage
    finally:
        _current.reset(token)
