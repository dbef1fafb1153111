"""A DSPy module living in a worker session (what ``predictor()`` returns for DSPy-only ops)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import router
from ..errors import RemoteError
from ..settings import current
from ._pools import _pool
from ._predict import _worker_payload
from ._results import _prediction, _remote
from ._tools import _tool_callback, tool_spec
from ._wire import _OP_MODULE, _adapter_wire, _lm_spec


class WorkerModule:
    """A DSPy module living in a worker session: ``m(**inputs)``, ``await m.acall(**inputs)``,
    ``dump_state()/load_state()/save()/load()``, ``close()``.

    The session pins the module to one worker (affinity). If that worker is replaced
    (crash, recycling), the next call re-creates the module there with its last known
    state and retries once.
    """

    def __init__(self, op: str, sig: Any, *, lm: Any = None, adapter: Any = None, pool: Any = None,
                 tools: Iterable[Callable[..., Any]] | None = None, state: dict[str, Any] | None = None,
                 **options: Any):
        self.op = op
        self.signature = sig
        self.lm = lm
        self.adapter = adapter
        self._pool = _pool("dspy", pool)
        self.session = f"dspex-{op}-{uuid.uuid4().hex[:12]}"
        self.module_id = f"{_OP_MODULE[op]}-{uuid.uuid4().hex[:8]}"
        tool_list = list(tools or [])
        self._tool_specs = [tool_spec(t) for t in tool_list]
        self._callbacks = {s["callback"]: _tool_callback(t) for s, t in zip(self._tool_specs, tool_list, strict=True)}
        payload = _worker_payload(op, sig, lm, adapter, options)
        self._create = {
            "module": payload["module"],
            "signature": payload["signature"],
            "options": payload["options"],
            "tools": self._tool_specs or None,
            "module_id": self.module_id,
        }
        self._state: dict[str, Any] | None = state or payload["state"]
        self._closed = False
        self._do("dspy.create", {**self._create, "state": self._state})

    def __repr__(self) -> str:
        return f"WorkerModule({_OP_MODULE[self.op]}, {self.signature.to_string()}, session={self.session})"

    def _do(self, handler: str, kwargs: dict[str, Any], callbacks: Any = None) -> Any:
        try:
            return self._pool.call_with(handler, kwargs=kwargs, session=self.session, callbacks=callbacks)
        except RemoteError as exc:
            raise _remote(exc) from exc

    def _lost(self, exc: RemoteError) -> bool:
        return exc.remote_type.endswith("KeyError") and "no module" in exc.remote_message

    def _call_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"module_id": self.module_id, "inputs": inputs, "lm": _lm_spec(self.lm),
                "adapter": _adapter_wire(self.adapter), "usage": bool(current().usage_sinks)}

    def __call__(self, **inputs: Any) -> Any:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with router.track(self.op, "dspy"):
            kwargs = self._call_kwargs(inputs)
            try:
                result = self._pool.call_with("dspy.call", kwargs=kwargs, session=self.session,
                                              callbacks=self._callbacks or None)
            except RemoteError as exc:
                if not self._lost(exc):
                    raise _remote(exc) from exc
                self._do("dspy.create", {**self._create, "state": self._state})
                try:
                    result = self._pool.call_with("dspy.call", kwargs=kwargs, session=self.session,
                                                  callbacks=self._callbacks or None)
                except RemoteError as exc2:
                    raise _remote(exc2) from exc2
            return _prediction(result, self.signature)

    async def acall(self, **inputs: Any) -> Any:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with router.track(self.op, "dspy"):
            kwargs = self._call_kwargs(inputs)
            try:
                result = await self._pool.acall("dspy.call", session=self.session,
                                                 callbacks=self._callbacks or None, **kwargs)
            except RemoteError as exc:
                if not self._lost(exc):
                    raise _remote(exc) from exc
                await self._pool.acall("dspy.create", session=self.session, **{**self._create, "state": self._state})
                result = await self._pool.acall("dspy.call", session=self.session,
                                                 callbacks=self._callbacks or None, **kwargs)
            return _prediction(result, self.signature)

    def dump_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._do("dspy.get_state", {"module_id": self.module_id})
        self._state = state
        return state

    def load_state(self, state: dict[str, Any]) -> WorkerModule:
        self._do("dspy.set_state", {"module_id": self.module_id, "state": state})
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
            self._pool.call_with("dspy.delete", kwargs={"module_id": self.module_id}, session=self.session)
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
