"""Reusable predictor handles: ``predictor``, ``chain_of_thought``, ``react``; a native
Predict/ChainOfThought when the router picks native, else a :class:`WorkerModule`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..router import decide
from ..router.payload import as_signature, native_module
from ..wire import op_of
from ._worker_module import WorkerModule


def predictor(type: str = "predict", signature: Any = None, /, *, impl: str | None = None, lm: Any = None,
              adapter: Any = None, pool: Any = None, tools: Iterable[Callable[..., Any]] | None = None,
              **config: Any) -> Any:
    """A reusable predictor handle: native ``Predict``/``ChainOfThought`` when the router picks
    native, else a :class:`WorkerModule` (a DSPy module in a worker session)."""
    op = op_of(type)
    if signature is None:
        signature = config.pop("signature", None)
    if signature is None:
        raise TypeError("predictor() needs a signature")
    s = as_signature(signature)
    opts = dict(config)
    if tools is not None:
        opts["tools"] = tools = list(tools)
    d = decide(op, s, impl=impl, form="handle", adapter=adapter, **opts)
    if d.impl == "native":
        return native_module(op, s, lm, adapter, config)
    return WorkerModule(op, s, lm=lm, adapter=adapter, pool=pool, tools=tools, decision=d, **config)


def chain_of_thought(sig: Any, *, impl: str | None = None, lm: Any = None, adapter: Any = None, pool: Any = None,
                     **config: Any) -> Any:
    """A ChainOfThought module (native or DSPy); call it with inputs as keyword arguments."""
    return predictor("chain_of_thought", sig, impl=impl, lm=lm, adapter=adapter, pool=pool, **config)


def react(sig: Any, tools: Iterable[Callable[..., Any]] = (), *, impl: str | None = None, lm: Any = None,
          adapter: Any = None, pool: Any = None, max_iters: int = 10, **config: Any) -> Any:
    """A ReAct agent (DSPy, in a worker) whose ``tools`` are host functions called back.

    A tool that raises becomes an observation (``Execution error in <tool>: ...``), as
    in DSPy. The prediction carries ``trajectory``.
    """
    return predictor("react", sig, impl=impl, lm=lm, adapter=adapter, pool=pool, tools=list(tools),
                     max_iters=max_iters, **config)
