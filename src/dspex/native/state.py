"""Program state in the JSON shape DSPy 3.4.1 writes with ``module.save("x.json")``.

A ``Predict`` state (DSPy's ``Predict.dump_state``)::

    {"traces": [], "train": [], "demos": [{...}, ...],
     "signature": {"instructions": "...", "fields": [{"prefix": "Question:", "description": "${question}"}, ...]},
     "lm": null}

A ``ChainOfThought`` nests it under its sub-module name: ``{"predict": {...}}``.
``save`` adds ``"metadata": {"dependency_versions": {"python", "dspy", "cloudpickle"}}``
(only the keys DSPy's loader knows: it looks every saved key up in its own
table). Demos are written as DSPy does: an ``Example`` becomes its plain dict
(``augmented`` and other keys kept; input keys are not saved), dicts as is,
pydantic values dumped to JSON. Loading keeps demos as dicts, like DSPy.

The ``lm`` entry holds a predictor's own LM as DSPy's legacy LM state
(``model``, ``model_type``, ``cache``, ``num_retries``, ``temperature``,
``max_tokens``); never a key. ``api_base`` is written but, as in DSPy, ignored
on load unless ``allow_unsafe_lm_state=True``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["dependency_versions", "dump_demo", "lm_from_state", "lm_state", "read_state", "write_state"]

logger = logging.getLogger("dspex")
_UNSAFE_LM_KEYS = ("api_base", "base_url", "model_list")


def dependency_versions() -> dict[str, str]:
    """What DSPy's loader compares: python, dspy, cloudpickle (major.minor where DSPy uses it)."""
    from importlib import metadata

    def version(name: str, default: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return default

    cloudpickle = ".".join(version("cloudpickle", "3.1").split(".")[:2])
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "dspy": version("dspy", "3.4.1"),  # the DSPy version this state shape follows
        "cloudpickle": cloudpickle,
    }


def _serialize(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_serialize(v) for v in value]
    if isinstance(value, tuple):
        return [_serialize(v) for v in value]
    if isinstance(value, dict):
        return {k: _serialize(v) for k, v in value.items()}
    return value


def dump_demo(demo: Any) -> dict[str, Any]:
    """One demo as DSPy writes it: a plain JSON-safe dict."""
    if hasattr(demo, "toDict"):
        data = demo.toDict()
    elif isinstance(demo, dict):
        data = dict(demo)
    else:
        raise ConfigError(f"a demo must be an Example or a dict, not {type(demo).__name__}")
    return {k: _serialize(v) for k, v in data.items()}


def lm_state(lm: Any) -> dict[str, Any] | None:
    """A predictor's own LM as DSPy's (legacy, class-less) LM state; None for none.

    ``model``, ``model_type``, ``cache``, ``num_retries``, then the LM's ``kwargs``
    (temperature, max_tokens, a non-default api_base, ...), never a key."""
    if lm is None:
        return None
    model = getattr(lm, "model", None)
    if not isinstance(model, str):
        return None
    state: dict[str, Any] = {
        "model": model,
        "model_type": getattr(lm, "model_type", "chat"),
        "cache": bool(getattr(lm, "cache", True)),
        "num_retries": int(getattr(lm, "num_retries", 3)),
    }
    kwargs = getattr(lm, "kwargs", None)
    if isinstance(kwargs, dict):
        state.update((k, v) for k, v in kwargs.items() if k != "api_key" and _jsonable(v))
    return state


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def lm_from_state(state: dict[str, Any] | None, *, allow_unsafe_lm_state: bool = False) -> Any:
    """A dspex LM from a saved LM state (DSPy's or ours); None when absent or not ours to build."""
    if not state:
        return None
    state = dict(state)
    state.pop("_dspy_lm_class", None)
    model = state.get("model")
    if not isinstance(model, str) or model.partition("/")[0] not in ("openai", "anthropic"):
        logger.warning("dspex: ignoring saved LM %r (only openai/ and anthropic/ models load natively)", model)
        return None
    if not allow_unsafe_lm_state:
        dropped = [k for k in _UNSAFE_LM_KEYS if k in state]
        for k in dropped:
            state.pop(k)
        if dropped:
            logger.warning("dspex: ignoring unsafe LM key(s) %s in saved state; pass allow_unsafe_lm_state=True for trusted files", dropped)
    from .lm import LM

    kwargs: dict[str, Any] = {}
    for key in ("temperature", "max_tokens", "num_retries", "cache", "api_base", "timeout"):
        if state.get(key) is not None:
            kwargs[key] = state[key]
    if "api_base" not in kwargs and state.get("base_url"):  # DSPy's other spelling, opted in above
        kwargs["api_base"] = state["base_url"]
    if "max_completion_tokens" in state and "max_tokens" not in kwargs:
        kwargs["max_tokens"] = state["max_completion_tokens"]
    return LM(model, **kwargs)


def write_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` plus DSPy's ``metadata`` block as indented JSON (``.json`` only)."""
    p = Path(path)
    if p.suffix != ".json":
        raise ConfigError(f"program state is saved as JSON: the path must end with .json, not {p.name!r}")
    data = dict(state)
    data["metadata"] = {"dependency_versions": dependency_versions()}
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    except TypeError as exc:
        raise ConfigError(f"program state is not JSON-serializable ({exc}); demos must hold JSON values") from exc
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)  # readers never see a half-written file


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state file written by dspex or DSPy; warn (as DSPy does) on a version mismatch."""
    p = Path(path)
    if p.suffix != ".json":
        raise ConfigError(f"program state loads from a .json file, not {p.name!r} (pickles are not supported)")
    try:
        state: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read program state {p}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"program state {p} is not valid JSON: {exc}") from exc
    saved = (state.get("metadata") or {}).get("dependency_versions") or {}
    mine = dependency_versions()
    for key, version in saved.items():
        if key in mine and mine[key] != version:
            logger.warning("dspex: %s saved with %s==%s, running %s", p.name, key, version, mine[key])
    return state
