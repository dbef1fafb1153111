"""Custom LMs in DSPy's ``BaseLM`` style: Predict calls the user's override.

A class (a ``BaseLM`` subclass, or an ``LM`` subclass) that overrides ``__call__``
(returns the reply texts), ``forward`` or ``async aforward`` (return an OpenAI-style
response, a dict or an object with ``choices[i].message.content`` and ``usage``) is called
through it: the reply becomes a :class:`~dspex.native.lm.Completion` like any other.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from typing import Any

__all__ = ["Override", "acall_override", "call_override", "override_kind"]


def override_kind(cls: type) -> str | None:
    """'call' / 'forward' / 'aforward' when an LM class overrides DSPy-style ``__call__`` /
    ``forward`` / ``aforward`` (in that order of preference for a sync call)."""
    cached = _OVERRIDES.get(cls)
    if cached is None:
        from .lm import LM, BaseLM

        if cls.__call__ not in (BaseLM.__call__, LM.__call__):
            cached = "call"
        elif cls.forward is not BaseLM.forward:  # type: ignore[attr-defined]
            cached = "forward"
        elif _has_aforward(cls):
            cached = "aforward"
        else:
            cached = ""
        if len(_OVERRIDES) < 1024:
            _OVERRIDES[cls] = cached
    return cached or None


_OVERRIDES: dict[type, str] = {}


def _has_aforward(cls: type) -> bool:
    return inspect.iscoroutinefunction(getattr(cls, "aforward", None))


def _kwargs(overrides: dict[str, Any]) -> dict[str, Any]:
    # dspex's own call options mean nothing to a user's LM
    return {k: v for k, v in overrides.items() if k not in ("cache", "rollout_id", "grammar")}


def _model(lm: Any) -> str:
    return str(getattr(lm, "model", type(lm).__name__))


def _from_response(response: Any, model: str) -> Any:
    """An OpenAI-style response (dict or object) -> Completion."""
    from .lm import Completion

    get = (lambda o, k, d=None: o.get(k, d)) if isinstance(response, dict) else (lambda o, k, d=None: getattr(o, k, d))
    texts = []
    for choice in get(response, "choices", None) or []:
        message = choice.get("message") if isinstance(choice, dict) else getattr(choice, "message", None)
        content = (message.get("content") if isinstance(message, dict) else getattr(message, "content", None)) or ""
        texts.append(str(content))
    usage_obj = get(response, "usage", None) or {}
    usage = {k: int((usage_obj.get(k) if isinstance(usage_obj, dict) else getattr(usage_obj, k, 0)) or 0)
             for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return Completion(texts[0] if texts else "", usage, model, response, False, texts)


def call_override(lm: Any, messages: list[dict[str, Any]], overrides: dict[str, Any]) -> Any:
    """Call a custom LM's ``__call__`` (texts), ``forward`` (OpenAI-style response) or, with
    only an ``aforward``, that on a fresh event loop -> Completion."""
    from .lm import Completion

    kw = _kwargs(overrides)
    kind = override_kind(type(lm))
    if kind == "call":
        out = lm(messages=messages, **kw)
        items = [out] if isinstance(out, (str, dict)) else list(out or [])
        texts = [o if isinstance(o, str) else str(o.get("text", "")) for o in items]
        return Completion(texts[0] if texts else "", {}, _model(lm), out, False, texts)
    if kind == "aforward":
        return _from_response(asyncio.run(lm.aforward(messages=messages, **kw)), _model(lm))
    return _from_response(lm.forward(messages=messages, **kw), _model(lm))


async def acall_override(lm: Any, messages: list[dict[str, Any]], overrides: dict[str, Any]) -> Any:
    """The async call: the LM's ``aforward`` when it has one, else the sync override on a thread."""
    if _has_aforward(type(lm)):
        return _from_response(await lm.aforward(messages=messages, **_kwargs(overrides)), _model(lm))
    ctx = contextvars.copy_context()
    return await asyncio.to_thread(ctx.run, call_override, lm, messages, overrides)


class Override:
    """An :class:`LM` subclass whose ``forward``/``__call__``/``aforward`` the user overrode:
    Predict calls that instead of the HTTP client."""

    __slots__ = ("lm", "model")

    def __init__(self, lm: Any):
        self.lm = lm
        self.model = getattr(lm, "model", type(lm).__name__)

    def complete(self, messages: list[dict[str, Any]], **overrides: Any) -> Any:
        return call_override(self.lm, messages, overrides)

    async def acomplete(self, messages: list[dict[str, Any]], **overrides: Any) -> Any:
        return await acall_override(self.lm, messages, overrides)
