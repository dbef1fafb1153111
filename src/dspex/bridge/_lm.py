"""Build a ``dspy.LM`` from an LM spec (``dspex.LM.to_spec()``), inside a worker.

Specs carry settings by name only. Secrets never travel: ``api_key_env`` names
the variable the *worker* reads its key from. Built LMs are cached per spec (a
small LRU), so a session or a stream of calls reuses one client.

Wire detail that matters for local servers: DSPy 3.4.1 sends
``max_completion_tokens`` for ``openai/`` models, which llama.cpp-style servers
ignore, and ``extra_body`` silently switches DSPy to LiteLLM. DSPy's
``hosted_vllm/`` provider speaks the same OpenAI chat wire through DSPy's own
HTTP client but spells the limit ``max_tokens``. So an ``openai/<name>`` spec
with a non-OpenAI ``api_base`` is built as ``hosted_vllm/<name>`` (same URL,
same body otherwise; checked by the differential tests). Set
``"max_tokens_field": "max_completion_tokens"`` in the spec to keep ``openai/``.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["LMSpecError", "build_lm", "spec_key"]

_CACHE_SIZE = 32
_cache: OrderedDict[str, Any] = OrderedDict()
_lock = threading.Lock()

# Spec keys that are dspex-side concerns (or secrets that must not travel) and are
# not passed to dspy.LM.
_IGNORED = {"rpm", "tpm", "grammar", "kind", "api_key_env", "max_tokens_field", "provider"}
_PASSED = {"temperature", "max_tokens", "timeout", "num_retries", "cache", "top_p", "stop", "seed", "n",
           "rollout_id", "model_type"}


class LMSpecError(ValueError):
    """An LM spec cannot be turned into a dspy.LM."""


def spec_key(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _dummy(spec: dict[str, Any]) -> Any:
    from dspy.utils.dummies import DummyLM

    answers = spec.get("answers")
    if answers is None:
        return DummyLM([], follow_examples=bool(spec.get("follow_examples", True)))
    if isinstance(answers, dict) and spec.get("always"):
        # {"": {...}}: the empty key matches every prompt, so the answer never runs out.
        return DummyLM({"": answers})
    return DummyLM(answers)


def _build(spec: dict[str, Any]) -> Any:
    import dspy

    if "api_key" in spec:
        raise LMSpecError(
            "LM specs must not carry api_key (secrets never travel to workers); "
            "name the environment variable with api_key_env instead"
        )
    if spec.get("kind") == "dummy":
        return _dummy(spec)
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise LMSpecError(f"LM spec needs a 'model' string, got {spec!r:.200}")
    api_base = spec.get("api_base")
    kwargs: dict[str, Any] = {k: v for k, v in spec.items() if k in _PASSED and v is not None}
    # dspex LMs default to cache=True in process; a worker LM caches in the worker's
    # memory only (the bridge turns DSPy's disk cache off at import).
    kwargs.setdefault("cache", True)
    extra = spec.get("extra") or {}
    if not isinstance(extra, dict):
        raise LMSpecError("LM spec 'extra' must be a dict")
    kwargs.update({k: v for k, v in extra.items() if k not in ("api_key", "extra_body")})
    key_env = spec.get("api_key_env")
    api_key = os.environ.get(key_env) if key_env else None
    if api_base:
        kwargs["api_base"] = api_base
        # Local OpenAI-compatible servers accept any key; DSPy's client wants one.
        kwargs["api_key"] = api_key or "dspex-local"
    elif api_key:
        kwargs["api_key"] = api_key
    provider, _, name = model.partition("/")
    if (
        provider == "openai"
        and api_base
        and "api.openai.com" not in api_base
        and spec.get("max_tokens_field", "max_tokens") == "max_tokens"
    ):
        model = f"hosted_vllm/{name}"
    return dspy.LM(model, **kwargs)


def build_lm(spec: dict[str, Any] | str | None) -> Any:
    """A ``dspy.LM`` for ``spec`` (a dict from ``LM.to_spec()`` or a model string); None stays None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict):
        raise LMSpecError(f"an LM spec is a dict or a model string, not {type(spec).__name__}")
    key = spec_key(spec)
    with _lock:
        lm = _cache.get(key)
        if lm is not None:
            _cache.move_to_end(key)
            return lm
    lm = _build(spec)
    # DummyLMs with scripted answers are stateful (an iterator): never share them.
    if spec.get("kind") == "dummy" and not spec.get("always"):
        return lm
    with _lock:
        _cache[key] = lm
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return lm
