"""Host functions as tools of a DSPy module in a worker: their specs and callbacks."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from ..errors import ImplementationUnavailable
from .payload import ann_str

__all__ = ["tool_callback", "tool_spec", "tools_wire"]


def tool_spec(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """What a worker needs to build a ``dspy.Tool`` that calls ``fn`` back in this process:
    its name, docstring and parameters (types from the hints, defaults)."""
    tname = name or getattr(fn, "__name__", None) or type(fn).__name__
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    params = []
    custom: dict[str, str] = {}
    for pname, p in inspect.signature(target).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        entry: dict[str, Any] = {"name": pname}
        try:
            entry["type"] = ann_str(hints.get(pname, Any), custom) if pname in hints else "Any"
        except ImplementationUnavailable:
            entry["type"] = "Any"
        if custom:  # custom classes cannot be evaluated in the worker: accept any JSON value
            entry["type"], custom = "Any", {}
        if p.default is not p.empty:
            entry["default"] = p.default if isinstance(p.default, (str, int, float, bool, type(None))) else repr(p.default)
        params.append(entry)
    doc = getattr(fn, "__doc__", None) or ""
    return {"name": tname, "doc": doc, "parameters": params, "callback": f"dspex.tool.{tname}"}


def tool_callback(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        def run_async(*args: Any, **kwargs: Any) -> Any:
            import asyncio

            return asyncio.run(fn(*args, **kwargs))

        return run_async
    return fn


def tools_wire(tools: Any) -> tuple[list[dict[str, Any]] | None, dict[str, Callable[..., Any]]]:
    """(tool specs for the payload, {callback name: host function}) for ``tools=``."""
    if not tools:
        return None, {}
    fns = list(tools)
    specs = [tool_spec(t) for t in fns]
    return specs, {s["callback"]: tool_callback(t) for s, t in zip(specs, fns, strict=True)}
