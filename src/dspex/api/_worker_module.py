"""A DSPy module living in a worker session (what ``predictor()`` returns for DSPy-only ops)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import RemoteError
from ..router import Decision, decide, track
from ..router.dispatch import acall_worker, call_worker
from ..router.payload import adapter_wire, lm_spec, module_payload
from ..router.pools import pool_for
from ..router.results import prediction
from ..router.tools import tools_wire
from ..settings import current
from ..wire import OP_MODULE, E, H


class WorkerModule:
    """A DSPy module living in a worker session: ``m(**inputs)``, ``await m.acall(**inputs)``,
    ``dump_state()/load_state()/save()/load()``, ``close()``.

    The session pins the module to one worker (affinity). If that worker is replaced
    (crash, recycling), the next call re-creates the module there with its last known
    state and retries once. What it sends is its decision's ``handlers`` (``dspy.create``
    then ``dspy.call``, from the router's op table) with the same payload pieces as a
    one-shot call (``router.payload.module_payload``).
    """

    def __init__(self, op: str, sig: Any, *, lm: Any = None, adapter: Any = None, pool: Any = None,
                 tools: Iterable[Callable[..., Any]] | None = None, state: dict[str, Any] | None = None,
                 decision: Decision | None = None, **options: Any):
        self.op = op
        self.signature = sig
        self.lm = lm
        self.adapter = adapter
        self.decision = decision or decide(op, sig, impl="dspy", form="handle")
        self._create_handler, self._call_handler = self.decision.handlers
        self._pool = pool_for(self.decision.pool, pool)
        self.session = f"dspex-{op}-{uuid.uuid4().hex[:12]}"
        self.module_id = f"{OP_MODULE[op]}-{uuid.uuid4().hex[:8]}"
        tool_specs, self._callbacks = tools_wire(tools)
        payload = module_payload(op, sig, lm, adapter, options, tool_specs)
        self._create = {
            "module": payload["module"],
            "signature": payload["signature"],
            "options": payload["options"],
            "tools": payload["tools"],
            "module_id": self.module_id,
        }
        self._state: dict[str, Any] | None = state or payload["state"]
        self._closed = False
        self._do(self._create_handler, {**self._create, "state": self._state})

    def __repr__(self) -> str:
        return f"WorkerModule({OP_MODULE[self.op]}, {self.signature.to_string()}, session={self.session})"

    def _do(self, handler: str, kwargs: dict[str, Any]) -> Any:
        return call_worker(self.decision, kwargs, pool=self._pool, handler=handler, session=self.session)

    def _call_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"module_id": self.module_id, "inputs": inputs, "lm": lm_spec(self.lm),
                "adapter": adapter_wire(self.adapter), "usage": bool(current().usage_sinks)}

    def __call__(self, **inputs: Any) -> Any:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with track(self.op, "dspy"):
            kwargs = self._call_kwargs(inputs)
            call = {"pool": self._pool, "handler": self._call_handler, "session": self.session,
                    "callbacks": self._callbacks}
            try:
                result = call_worker(self.decision, kwargs, **call)
            except RemoteError as exc:
                if exc.code != E.MODULE_LOST:
                    raise
                self._do(self._create_handler, {**self._create, "state": self._state})
                result = call_worker(self.decision, kwargs, **call)
            return prediction(result, self.signature)

    async def acall(self, **inputs: Any) -> Any:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with track(self.op, "dspy"):
            kwargs = self._call_kwargs(inputs)
            call = {"pool": self._pool, "handler": self._call_handler, "session": self.session,
                    "callbacks": self._callbacks}
            try:
                result = await acall_worker(self.decision, kwargs, **call)
            except RemoteError as exc:
                if exc.code != E.MODULE_LOST:
                    raise
                await acall_worker(self.decision, {**self._create, "state": self._state}, pool=self._pool,
                                   handler=self._create_handler, session=self.session)
                result = await acall_worker(self.decision, kwargs, **call)
            return prediction(result, self.signature)

    def dump_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._do(H.GET_STATE, {"module_id": self.module_id})
        self._state = state
        return state

    def load_state(self, state: dict[str, Any]) -> WorkerModule:
        self._do(H.SET_STATE, {"module_id": self.module_id, "state": state})
        self._state = state
        return self

    def save(self, path: str | Path) -> None:
        from ..native.state import write_state

        write_state(path, self.dump_state())

    def load(self, path: str | Path) -> WorkerModule:
        from ..native.state import read_state

        state = read_state(path)
        state.pop("metadata", None)
        return self.load_state(state)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._pool.call_with(H.DELETE, kwargs={"module_id": self.module_id}, session=self.session)
        except Exception:
            pass  # the worker (and the module with it) may already be gone
        drop = getattr(self._pool, "drop_session", None)
        if callable(drop):
            try:
                drop(self.session)
            except Exception:
                pass

    def __enter__(self) -> WorkerModule:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
