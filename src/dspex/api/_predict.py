"""One prediction per call (``predict``/``apredict``), native or in a DSPy worker, and the
two forms of a predictor op shared with the reusable handles: a native module, a worker payload."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from .. import router
from ..errors import ImplementationUnavailable, RemoteError
from ..settings import current
from ._pools import _pool
from ._results import _prediction, _remote
from ._wire import _OP_MODULE, _adapter_wire, _lm_spec, _sig, signature_wire


def _native_adapter(adapter: Any) -> Any:
    if adapter is None or not isinstance(adapter, str):
        return adapter
    from ..native.adapters import ChatAdapter, JSONAdapter

    key = adapter.lower().removesuffix("adapter")
    if key == "chat":
        return ChatAdapter()
    if key == "json":
        return JSONAdapter()
    raise ImplementationUnavailable(f"adapter {adapter!r} has no native implementation")


def _split_native_opts(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    kw = dict(opts)
    state = kw.pop("state", None)
    return kw, state


def _native_module(op: str, sig: Any, lm: Any, adapter: Any, opts: dict[str, Any]) -> Any:
    from ..native.predict import ChainOfThought, Predict

    kw, state = _split_native_opts(opts)
    cls = ChainOfThought if op == "chain_of_thought" else Predict
    mod = cls(sig, lm=lm, adapter=_native_adapter(adapter), **kw)
    if state:
        mod.load_state(state)
    return mod


def _worker_payload(op: str, sig: Any, lm: Any, adapter: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``dspy.run``/``dspy.create`` for a predictor call."""
    options = dict(opts)
    state = options.pop("state", None)
    demos = options.pop("demos", None)
    instructions = options.pop("instructions", None)
    if instructions:
        sig = sig.with_instructions(instructions)
    if demos and state is None:
        # Demos travel as program state, in the DSPy JSON shape both sides read.
        state = _native_module(op if op in ("predict", "chain_of_thought") else "predict", sig, None, None,
                               {"demos": demos}).dump_state()
    config = options.pop("config", None) or {}
    options.update(config)
    payload: dict[str, Any] = {
        "module": _OP_MODULE[op],
        "signature": signature_wire(sig),
        "options": options or None,
        "adapter": _adapter_wire(adapter),
        "state": state,
        "lm": _lm_spec(lm),
        # Token usage only when someone collects it (a dspex.context() is open).
        "usage": bool(current().usage_sinks),
    }
    return payload


# Per-LM latency of recent dspy.run calls (EWMA, bounded). Calls that finish in a few ms
# are CPU-bound in the worker: they go to the inline handler (no thread hand-off);
# slower ones (real LM I/O) to the threaded one, which overlaps waits in one worker.
_FAST_S = 0.005
_lat: OrderedDict[str, float] = OrderedDict()
_lat_lock = threading.Lock()


def _lm_key(payload: dict[str, Any]) -> str:
    return json.dumps(payload.get("lm"), sort_keys=True, default=str)


def _run_handler(key: str) -> str:
    ew = _lat.get(key)
    return "dspy.run_inline" if ew is not None and ew < _FAST_S else "dspy.run"


def _observe(key: str, seconds: float) -> None:
    with _lat_lock:
        ew = _lat.get(key)
        _lat[key] = seconds if ew is None else 0.8 * ew + 0.2 * seconds
        _lat.move_to_end(key)
        while len(_lat) > 256:
            _lat.popitem(last=False)


def predict(sig: Any, inputs: Mapping[str, Any] | None = None, /, *, impl: str | None = None, lm: Any = None,
            adapter: Any = None, pool: Any = None, **opts: Any) -> Any:
    """One prediction for ``inputs`` with ``sig``, native or in a DSPy worker."""
    return _run_op("predict", sig, inputs, impl, lm, adapter, pool, opts)


async def apredict(sig: Any, inputs: Mapping[str, Any] | None = None, /, *, impl: str | None = None,
                   lm: Any = None, adapter: Any = None, pool: Any = None, **opts: Any) -> Any:
    return await _arun_op("predict", sig, inputs, impl, lm, adapter, pool, opts)


def _prep(op: str, sig: Any, inputs: Mapping[str, Any] | None, impl: str | None, adapter: Any,
          opts: dict[str, Any]) -> tuple[Any, dict[str, Any], router.Decision]:
    s = _sig(sig)
    decision = router.decide(op, s, impl=impl, adapter=adapter, **opts)
    return s, dict(inputs or {}), decision


def _run_op(op: str, sig: Any, inputs: Mapping[str, Any] | None, impl: str | None, lm: Any, adapter: Any,
            pool: Any, opts: dict[str, Any]) -> Any:
    s, ins, d = _prep(op, sig, inputs, impl, adapter, opts)
    with router.track(op, d.impl):
        if d.impl == "native":
            return _native_module(op, s, lm, adapter, opts)(**ins)
        payload = _worker_payload(op, s, lm, adapter, opts)
        key = _lm_key(payload)
        t0 = time.perf_counter()
        try:
            result = _pool("dspy", pool).call_with(_run_handler(key), kwargs={**payload, "inputs": ins})
        except RemoteError as exc:
            raise _remote(exc) from exc
        _observe(key, time.perf_counter() - t0)
        return _prediction(result, s)


async def _arun_op(op: str, sig: Any, inputs: Mapping[str, Any] | None, impl: str | None, lm: Any, adapter: Any,
                   pool: Any, opts: dict[str, Any]) -> Any:
    s, ins, d = _prep(op, sig, inputs, impl, adapter, opts)
    with router.track(op, d.impl):
        if d.impl == "native":
            return await _native_module(op, s, lm, adapter, opts).acall(**ins)
        payload = _worker_payload(op, s, lm, adapter, opts)
        key = _lm_key(payload)
        t0 = time.perf_counter()
        try:
            result = await _pool("dspy", pool).acall(_run_handler(key), **{**payload, "inputs": ins})
        except RemoteError as exc:
            raise _remote(exc) from exc
        _observe(key, time.perf_counter() - t0)
        return _prediction(result, s)
