"""Op steps: an API operation (``retrieve``, ``optimize``) as a pipeline step (``op()``).

The step routes like the API (``router.decide``, so ``impl=`` and the config apply) and
runs through the router's dispatcher with the request the API builds for the same
arguments: a pipeline step and the same call through ``dspex.retrieve`` /
``dspex.optimize`` send identical payloads. Worker calls carry the run's session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import PipelineError
from ..router import Decision, decide
from ..router.dispatch import CallInfo, acall_worker, arun_retrieve
from ..router.retrieval import source_of
from .base import Step, _field_names, _reads_spec

if TYPE_CHECKING:
    from .runner import RunState
    from .trace import StepTrace

__all__ = ["OpStep", "op"]

# op -> (the field it reads by default, the field it writes by default)
_OPS = {"retrieve": ("query", "passages"), "optimize": ("trainset", "optimized")}


class OpStep(Step):
    """A routed API operation run as a step. See ``op()``."""

    kind = "op"

    def __init__(self, op_name: str, *, name: str | None = None,
                 reads: str | Sequence[str] | Mapping[str, str] | None = None,
                 writes: str | Sequence[str] | None = None, impl: str | None = None, pool: Any = None,
                 timeout: float | None = None, retries: int = 0, backoff: float = 0.1, fallback: Any = None,
                 cache: bool | int = False, **arguments: Any):
        if op_name not in _OPS:
            raise PipelineError(f"op({op_name!r}) (dspex.pipeline): one of {', '.join(_OPS)}")
        self.op = op_name
        self.impl = impl
        self.pool = pool
        self.arguments = arguments
        (r, arg_map), w = _reads_spec(reads), _field_names(writes)
        read, write = _OPS[op_name]
        r = r or (read,)
        w = w or (write,)
        if len(r) != 1 or len(w) != 1:
            raise PipelineError(f"op({op_name!r}) reads one field and writes one field")
        super().__init__(name=name or f"{op_name}_{w[0]}", reads=r, writes=w, timeout=timeout, retries=retries,
                         backoff=backoff, fallback=fallback, cache=cache, named=name is not None)
        self.arg_map = arg_map
        if op_name == "retrieve":
            self._kind, self._target = source_of(arguments.get("source"))

    def decision(self) -> Decision:
        if self.op == "retrieve":
            return decide("retrieve", None, impl=self.impl, source_kind=self._kind)
        return decide(self.op, None, impl=self.impl)

    def where(self) -> str:
        return "native" if self.decision().impl == "native" else self.decision().pool

    def label(self) -> str:
        return f"{self.name}: {self.op}"

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        (value,) = self.inputs_of(data).values()
        d = self.decision()
        pool = await rt.use_pool(self.pool or d.pool, st) if d.impl != "native" else None
        info = CallInfo()
        if self.op == "retrieve":
            args = {k: v for k, v in self.arguments.items() if k in ("k", "embedder")}
            out: Any = await arun_retrieve(d, self._kind, self._target, value, pool=pool, session=rt.session,
                                           info=info, **{"k": 5, **args})
        else:
            out = await self._optimize(d, value, pool, rt, st, info)
        st.pid = info.pid
        return self._outputs(out)

    async def _optimize(self, d: Decision, trainset: Any, pool: Any, rt: RunState, st: StepTrace,
                        info: CallInfo) -> Any:
        from ..api._optimize import _optimize_call, _result

        a = dict(self.arguments)
        named = ("program", "optimizer", "metric", "lm", "valset", "input_keys", "checkpoint", "prompt_lm",
                 "reflection_lm", "teacher_lm", "adapter")
        args = {k: a.pop(k, None) for k in named}
        kwargs, callbacks, base_sig = _optimize_call(
            args["program"], trainset, args["optimizer"] or "miprov2", args["metric"], args["lm"], args["valset"],
            args["input_keys"], args["checkpoint"], args["prompt_lm"], args["reflection_lm"], args["teacher_lm"],
            args["adapter"], a,
        )
        events: list[dict[str, Any]] = []
        sink = rt.event_sink(st)

        def on_event(event: Any) -> None:
            events.append(event)
            sink(event)

        out = await acall_worker(d, kwargs, pool=pool, session=rt.session, callbacks=callbacks, on_event=on_event,
                                 info=info)
        return _result(out, base_sig, events)


def op(op_name: str, *, name: str | None = None, reads: str | Sequence[str] | Mapping[str, str] | None = None,
       writes: str | Sequence[str] | None = None, impl: str | None = None, pool: Any = None,
       timeout: float | None = None, retries: int = 0, backoff: float = 0.1, fallback: Any = None,
       cache: bool | int = False, **arguments: Any) -> OpStep:
    """An API operation as a step, routed like the API call:

    - ``op("retrieve", source="dense:solar_system", k=3, reads={"query": "question"})``
      writes ``passages`` (what ``dspex.retrieve(question, k=3, source=...)`` returns);
    - ``op("optimize", program=dspex.Predict(sig), optimizer="bootstrap", metric=m)`` reads
      ``trainset`` and writes ``optimized`` (the ``OptimizeResult`` of ``dspex.optimize``).
    """
    return OpStep(op_name, name=name, reads=reads, writes=writes, impl=impl, pool=pool, timeout=timeout,
                  retries=retries, backoff=backoff, fallback=fallback, cache=cache, **arguments)
