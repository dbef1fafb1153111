"""Optimization in the ``optimizer`` pool: ``optimize``/``aoptimize``/``optimize_events``,
the program and trainset wire forms, host metrics called back, :class:`OptimizeResult`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import router
from ..errors import ImplementationUnavailable
from ..router.dispatch import acall_worker, call_worker
from ..router.payload import adapter_wire as _adapter_wire
from ..router.payload import as_signature as _sig
from ..router.payload import lm_spec as _lm_spec
from ..router.payload import signature_wire
from ..wire import OP_MODULE as _OP_MODULE
from ._worker_module import WorkerModule


@dataclass
class OptimizeResult:
    """An optimized program: its DSPy-shaped ``state`` and what the run reported."""

    state: dict[str, Any]
    module: str
    signature: Any
    optimizer: str
    score: float | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    metric_calls: int = 0
    lm_calls: int = 0
    elapsed_s: float = 0.0
    resumed: bool = False
    resumed_after: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    _program: Any = field(default=None, repr=False)

    @property
    def program(self) -> Any:
        """The optimized program as a native Predict / ChainOfThought (state loaded)."""
        if self._program is None and self.module == "Program":  # a composite dspex.Module
            from ._module import load_optimized

            self._program = load_optimized(self.signature, self.state)
        if self._program is None:
            from ..native.predict import ChainOfThought, Predict

            cls = ChainOfThought if self.module == "ChainOfThought" else Predict
            prog = cls(self.signature)
            prog.load_state(self.state)
            self._program = prog
        return self._program

    def save(self, path: str | Path) -> None:
        from ..native.state import write_state

        write_state(path, self.state)

    def __call__(self, **inputs: Any) -> Any:
        return self.program(**inputs)


def _program_payload(program: Any) -> tuple[dict[str, Any], Any]:
    from ..native.module import Module
    from ..native.predict import ChainOfThought, Predict

    if isinstance(program, Module):  # composite: shipped by value, see api/_module.py
        from ._module import program_payload

        return program_payload(program), program

    if isinstance(program, ChainOfThought):
        base = program.signature.delete("reasoning") if "reasoning" in program.signature.output_fields else program.signature
        return {"module": "ChainOfThought", "signature": signature_wire(base), "state": program.dump_state()}, base
    if isinstance(program, Predict):
        return {"module": "Predict", "signature": signature_wire(program.signature), "state": program.dump_state()}, \
            program.signature
    if isinstance(program, WorkerModule):
        if program.op not in ("predict", "chain_of_thought"):
            raise ImplementationUnavailable("optimize() takes Predict / ChainOfThought programs")
        return {"module": _OP_MODULE[program.op], "signature": signature_wire(program.signature),
                "state": program.dump_state()}, program.signature
    s = _sig(program)
    return {"module": "Predict", "signature": signature_wire(s), "state": None}, s


def _example_dict(ex: Any) -> tuple[dict[str, Any], list[str] | None]:
    if isinstance(ex, Mapping):
        return dict(ex), None
    items = getattr(ex, "items", None)
    if callable(items):
        keys = getattr(ex, "input_keys", None)
        return dict(items()), (sorted(keys) if keys else None)
    raise TypeError(f"trainset items are dicts or dspex.Example, not {type(ex).__name__}")


def _metric_wire(metric: Any) -> tuple[Any, dict[str, Callable[..., Any]]]:
    if isinstance(metric, str):
        return metric, {}
    if not callable(metric):
        raise TypeError("metric is 'module:function' or a callable(example, prediction)")
    from ..native.values import Example, Prediction

    def host_metric(example: dict[str, Any], prediction: dict[str, Any]) -> Any:
        out = metric(Example(**example), Prediction(**prediction))
        if isinstance(out, bool):
            return float(out)
        if isinstance(out, (int, float, dict)):
            return out
        score = getattr(out, "score", None)
        if score is not None:
            return {"score": float(score), "feedback": str(getattr(out, "feedback", ""))}
        return float(out)

    return {"callback": "dspex.metric"}, {"dspex.metric": host_metric}


def _optimize_call(program: Any, trainset: Iterable[Any], optimizer: str, metric: Any, lm: Any,
                   valset: Iterable[Any] | None, input_keys: list[str] | None, checkpoint: str | Path | None,
                   prompt_lm: Any, reflection_lm: Any, teacher_lm: Any, adapter: Any,
                   options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Callable[..., Any]], Any]:
    prog, base_sig = _program_payload(program)
    rows = [_example_dict(e) for e in trainset]
    train = [r for r, _ in rows]
    keys = input_keys or next((k for _, k in rows if k), None)
    val = [_example_dict(e)[0] for e in valset] if valset is not None else None
    metric_w, callbacks = _metric_wire(metric) if optimizer.lower() not in ("labeled",) or metric else (None, {})
    kwargs: dict[str, Any] = {
        "optimizer": optimizer,
        "program": prog,
        "trainset": train,
        "metric": metric_w,
        "lm": _lm_spec(lm),
        "options": options or None,
        "valset": val,
        "input_keys": keys,
        "adapter": _adapter_wire(adapter),
        "prompt_lm": _lm_spec(prompt_lm) if prompt_lm is not None else None,
        "reflection_lm": _lm_spec(reflection_lm) if reflection_lm is not None else None,
        "teacher_lm": _lm_spec(teacher_lm) if teacher_lm is not None else None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
    }
    return kwargs, callbacks, base_sig


def _on_event(events: list[dict[str, Any]], progress: Callable[[dict[str, Any]], Any] | None) -> Callable[..., Any]:
    def handle(event: dict[str, Any]) -> None:
        if len(events) < 10_000:
            events.append(event)
        if progress is not None:
            progress(event)

    return handle


def _result(out: dict[str, Any], base_sig: Any, events: list[dict[str, Any]]) -> OptimizeResult:
    return OptimizeResult(
        state=out["state"], module=out["module"], signature=base_sig, optimizer=out["optimizer"],
        score=out.get("score"), trials=out.get("trials") or [], metric_calls=out.get("metric_calls", 0),
        lm_calls=out.get("lm_calls", 0), elapsed_s=out.get("elapsed_s", 0.0), resumed=bool(out.get("resumed")),
        resumed_after=int(out.get("resumed_after") or 0),
        events=events,
    )


def optimize(program: Any, trainset: Iterable[Any], *, optimizer: str = "miprov2", metric: Any = None,
             lm: Any = None, valset: Iterable[Any] | None = None, input_keys: list[str] | None = None,
             pool: Any = None, progress: Callable[[dict[str, Any]], Any] | None = None,
             checkpoint: str | Path | None = None, prompt_lm: Any = None, reflection_lm: Any = None,
             teacher_lm: Any = None, adapter: Any = None, impl: str | None = None, timeout: float | None = None,
             on_event: Callable[[dict[str, Any]], Any] | None = None, **options: Any) -> OptimizeResult:
    """Optimize ``program`` (a dspex Predict/ChainOfThought or a signature) with a DSPy optimizer
    in the ``optimizer`` pool. ``metric`` is ``"module:function"`` (run in the worker) or a
    host callable ``metric(example, prediction) -> float|bool`` (called back). ``progress``
    (or ``on_event``, the same) receives the events as they happen. Options go to the optimizer
    (see bridge/_optimize.py).
    """
    progress = progress or on_event
    d = router.decide("optimize", None, impl=impl)
    kwargs, callbacks, base_sig = _optimize_call(program, trainset, optimizer, metric, lm, valset, input_keys,
                                                 checkpoint, prompt_lm, reflection_lm, teacher_lm, adapter, options)
    events: list[dict[str, Any]] = []
    with router.track("optimize", "dspy"):
        out = call_worker(d, kwargs, pool=pool, callbacks=callbacks, on_event=_on_event(events, progress),
                          timeout=timeout)
    return _result(out, base_sig, events)


async def aoptimize(program: Any, trainset: Iterable[Any], *, optimizer: str = "miprov2", metric: Any = None,
                    lm: Any = None, valset: Iterable[Any] | None = None, input_keys: list[str] | None = None,
                    pool: Any = None, progress: Callable[[dict[str, Any]], Any] | None = None,
                    checkpoint: str | Path | None = None, prompt_lm: Any = None, reflection_lm: Any = None,
                    teacher_lm: Any = None, adapter: Any = None, impl: str | None = None,
                    timeout: float | None = None, on_event: Callable[[dict[str, Any]], Any] | None = None,
                    **options: Any) -> OptimizeResult:
    """The async form of :func:`optimize`. Cancelling the awaiting task cancels the worker call."""
    progress = progress or on_event
    d = router.decide("optimize", None, impl=impl)
    kwargs, callbacks, base_sig = _optimize_call(program, trainset, optimizer, metric, lm, valset, input_keys,
                                                 checkpoint, prompt_lm, reflection_lm, teacher_lm, adapter, options)
    events: list[dict[str, Any]] = []
    with router.track("optimize", "dspy"):
        out = await acall_worker(d, kwargs, pool=pool, callbacks=callbacks, on_event=_on_event(events, progress),
                                 timeout=timeout)
    return _result(out, base_sig, events)


async def optimize_events(program: Any, trainset: Iterable[Any], **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
    """:func:`aoptimize` as an async iterator: yields progress events as they happen, then
    ``{"kind": "result", "result": OptimizeResult}``. Leaving the loop early cancels the run.

        async for event in dspex.api.optimize_events(prog, trainset, optimizer="miprov2", metric=m):
            print(event)
    """
    import asyncio

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
    user = kwargs.pop("progress", None)

    def push(event: dict[str, Any]) -> None:  # runs on the pool's thread
        if user is not None:
            user(event)
        loop.call_soon_threadsafe(queue.put_nowait, event)

    task = asyncio.ensure_future(aoptimize(program, trainset, progress=push, **kwargs))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            getter.cancel()
            while not queue.empty():
                yield queue.get_nowait()
            yield {"kind": "result", "result": task.result()}
            return
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass
