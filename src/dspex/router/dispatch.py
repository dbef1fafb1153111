"""The dispatcher: runs a :class:`Decision` natively or in a pool, sync and async.

Every API operation and every pipeline step that runs an op comes through here, so both
send the same payloads (``payload.py``), get the same error types (``results.from_remote``)
and are counted the same way (``stats.track``). The handlers sent are the decision's
(``Decision.handlers``, from the op table), which is what ``explain()`` reports.

* :func:`run_module` / :func:`arun_module`: a predictor op (predict, chain_of_thought,
  react, ...) called once: a native module, or ``dspy.run`` with ``module_payload``;
* :func:`call_worker` / :func:`acall_worker`: any op's worker request (optimize,
  retrieve, handles' create/call) to the decision's pool, errors mapped;
* :func:`run_retrieve` / :func:`arun_retrieve`: retrieval from a ``source=``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RemoteError
from ..native._memo import Memo
from ..wire import H
from .payload import module_payload, native_module
from .policy import Decision
from .pools import pool_for
from .results import from_remote, prediction
from .retrieval import retrieve_native, worker_request
from .stats import track
from .tools import tools_wire

__all__ = ["CallInfo", "acall_worker", "arun_module", "arun_retrieve", "call_worker", "handler_for",
           "observe", "run_module", "run_retrieve"]


@dataclass
class CallInfo:
    """What the caller may want to know about a worker call after it (pipelines: the trace)."""

    pid: int | None = None
    handler: str | None = None


# Per-LM latency of recent dspy.run calls (EWMA, bounded). Calls that finish in a few ms
# are CPU-bound in the worker: they go to the inline handler (no thread hand-off);
# slower ones (real LM I/O) to the threaded one, which overlaps waits in one worker.
_FAST_S = 0.005
_latency: Memo[list[float]] = Memo(256)


def _lm_key(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload.get("lm"), sort_keys=True, default=str)


def _latency_of(key: str) -> list[float]:
    """The EWMA box of an LM key ([] until its first call is observed)."""
    return _latency.get(key, list)


def handler_for(d: Decision, key: str) -> str:
    """The handler a module call sends: the decision's, or its inline twin for fast LMs."""
    handler = d.handlers[0]
    if handler == H.RUN:
        box = _latency_of(key)
        if box and box[0] < _FAST_S:
            return H.RUN_INLINE
    return handler


def observe(key: str, seconds: float) -> None:
    box = _latency_of(key)
    if box:
        box[0] = 0.8 * box[0] + 0.2 * seconds  # a benign race: two writers lose one sample
    else:
        box.append(seconds)


def _detail(result: Any, info: CallInfo | None, handler: str) -> Any:
    if info is not None:
        info.handler = handler
        info.pid = getattr(result, "pid", None)
    return getattr(result, "value", result)


def call_worker(d: Decision, kwargs: dict[str, Any], *, pool: Any = None, handler: str | None = None,
                session: Any = None, callbacks: dict[str, Callable[..., Any]] | None = None,
                on_event: Callable[[dict[str, Any]], Any] | None = None, timeout: float | None = None,
                info: CallInfo | None = None) -> Any:
    """One worker call for decision ``d``; a RemoteError comes back as its dspex type."""
    name = handler or d.handlers[0]
    try:
        result = pool_for(d.pool, pool).call_with(name, kwargs=kwargs, session=session, callbacks=callbacks or None,
                                                  on_event=on_event, timeout=timeout, detailed=True)
    except RemoteError as exc:
        err = from_remote(exc)
        raise err from err.__cause__  # the scrubbed RemoteError (never the raw one), or nothing
    return _detail(result, info, name)


async def acall_worker(d: Decision, kwargs: dict[str, Any], *, pool: Any = None, handler: str | None = None,
                       session: Any = None, callbacks: dict[str, Callable[..., Any]] | None = None,
                       on_event: Callable[[dict[str, Any]], Any] | None = None, timeout: float | None = None,
                       info: CallInfo | None = None) -> Any:
    """The async form of :func:`call_worker`; cancelling the awaiting task cancels the call."""
    name = handler or d.handlers[0]
    try:
        result = await pool_for(d.pool, pool).acall_detailed(name, session=session, callbacks=callbacks or None,
                                                             on_event=on_event, timeout=timeout, **kwargs)
    except RemoteError as exc:
        err = from_remote(exc)
        raise err from err.__cause__
    return _detail(result, info, name)


def _module_request(d: Decision, sig: Any, inputs: Mapping[str, Any], lm: Any, adapter: Any,
                    options: dict[str, Any], tools: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
    specs, callbacks = tools_wire(tools)
    payload = module_payload(d.op, sig, lm, adapter, options, specs)
    return {**payload, "inputs": dict(inputs)}, callbacks, _lm_key(payload)


def run_module(d: Decision, sig: Any, inputs: Mapping[str, Any], *, lm: Any = None, adapter: Any = None,
               options: dict[str, Any] | None = None, tools: Any = None, pool: Any = None, session: Any = None,
               on_event: Callable[[dict[str, Any]], Any] | None = None, timeout: float | None = None,
               info: CallInfo | None = None) -> Any:
    """A predictor op called once with ``inputs``, where ``d`` says; returns a Prediction."""
    opts = dict(options or {})
    with track(d.op, d.impl):
        if d.impl == "native":
            return native_module(d.op, sig, lm, adapter, opts)(**inputs)
        kwargs, callbacks, key = _module_request(d, sig, inputs, lm, adapter, opts, tools)
        t0 = time.perf_counter()
        result = call_worker(d, kwargs, pool=pool, handler=handler_for(d, key), session=session,
                             callbacks=callbacks, on_event=on_event, timeout=timeout, info=info)
        observe(key, time.perf_counter() - t0)
        return prediction(result, sig)


async def arun_module(d: Decision, sig: Any, inputs: Mapping[str, Any], *, lm: Any = None, adapter: Any = None,
                      options: dict[str, Any] | None = None, tools: Any = None, pool: Any = None,
                      session: Any = None, on_event: Callable[[dict[str, Any]], Any] | None = None,
                      timeout: float | None = None, info: CallInfo | None = None) -> Any:
    """The async form of :func:`run_module`."""
    opts = dict(options or {})
    with track(d.op, d.impl):
        if d.impl == "native":
            return await native_module(d.op, sig, lm, adapter, opts).acall(**inputs)
        kwargs, callbacks, key = _module_request(d, sig, inputs, lm, adapter, opts, tools)
        t0 = time.perf_counter()
        result = await acall_worker(d, kwargs, pool=pool, handler=handler_for(d, key), session=session,
                                    callbacks=callbacks, on_event=on_event, timeout=timeout, info=info)
        observe(key, time.perf_counter() - t0)
        return prediction(result, sig)


def run_retrieve(d: Decision, kind: str, target: Any, query: str, k: int, *, embedder: str = "hash",
                 pool: Any = None, session: Any = None, info: CallInfo | None = None) -> list[dict[str, Any]]:
    """The ``k`` best passages for ``query`` from a parsed ``source=`` (``retrieval.source_of``)."""
    with track("retrieve", d.impl):
        if d.impl == "native":
            return retrieve_native(kind, target, query, k)
        handler, kwargs = worker_request(kind, target, query, k, embedder)
        return list(call_worker(d, kwargs, pool=pool, handler=handler, session=session, info=info))


async def arun_retrieve(d: Decision, kind: str, target: Any, query: str, k: int, *, embedder: str = "hash",
                        pool: Any = None, session: Any = None, info: CallInfo | None = None) -> list[dict[str, Any]]:
    with track("retrieve", d.impl):
        if d.impl == "native":
            ctx = contextvars.copy_context()
            return await asyncio.to_thread(ctx.run, retrieve_native, kind, target, query, k)
        handler, kwargs = worker_request(kind, target, query, k, embedder)
        return list(await acall_worker(d, kwargs, pool=pool, handler=handler, session=session, info=info))
