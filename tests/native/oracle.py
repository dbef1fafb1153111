"""Calling DSPy 3.4.1 the way the parity tests need it (imported lazily)."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dspy

dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

_CHAT = dspy.ChatAdapter()
_JSON = dspy.JSONAdapter()


_SIGS: dict[Any, Any] = {}


def dspy_signature(spec: str, instructions: str | None, descs: dict[str, str] | None = None) -> Any:
    key = (spec, instructions, tuple(sorted((descs or {}).items())))
    if key not in _SIGS:
        _SIGS[key] = _make(spec, instructions, descs)
    return _SIGS[key]


def _make(spec: str, instructions: str | None, descs: dict[str, str] | None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sig = dspy.Signature(spec, instructions)
        for name, desc in (descs or {}).items():
            sig = sig.with_updated_fields(name, desc=desc)
    return sig


def dspy_format(kind: str, sig: Any, demos: list[dict[str, Any]], inputs: dict[str, Any]) -> Any:
    adapter = _CHAT if kind == "chat" else _JSON
    return adapter.format(sig, demos, inputs)


def dspy_parse(kind: str, sig: Any, text: str) -> tuple[str, Any]:
    adapter = _CHAT if kind == "chat" else _JSON
    try:
        return "ok", adapter.parse(sig, text)
    except Exception as e:  # AdapterParseError, pydantic ValidationError, ...
        return "error", type(e).__name__


def same(a: Any, b: Any) -> bool:
    """Deep equality that also checks types (1 vs 1.0 vs True) and treats nan as equal."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (set, frozenset)):
        return a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)
