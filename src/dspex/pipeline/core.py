"""``Pipeline``: a checked sequence of steps, run sync, async, in batches or streamed."""

from __future__ import annotations

import asyncio
import copy
import time
import typing
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DspexError, PipelineError
from . import otel
from .runner import RunState, _cancel_all, gather_fail_fast, new_session_id, run_sync
from .steps import Branch, FanOut, Parallel, Step, WorkerStep, as_steps
from .trace import Event, PipelineResult, RunFinished, RunStarted, Trace
from .validation import Validation, validate

__all__ = ["Pipeline", "pipeline"]

_END = object()


def _uniquify(steps: Sequence[Step]) -> list[Step]:
    """Give auto-named siblings distinct names (``search``, ``search_2``); recurse into
    groups, copying them rather than changing the caller's objects."""
    out: list[Step] = []
    taken = {s.name for s in steps if s.named}
    counts: dict[str, int] = {}
    for s in steps:
        if not s.named:
            base, n = s.name, counts.get(s.name, 0)
            name = base if n == 0 and base not in taken else f"{base}_{n + 1}"
            while name in taken:
                n += 1
                name = f"{base}_{n + 1}"
            counts[base] = n + 1
            taken.add(name)
            if name != s.name:
                s = s.with_name(name)
        if isinstance(s, Parallel):
            s = copy.copy(s)
            s.steps = _uniquify(s.steps)
        elif isinstance(s, Branch):
            s = copy.copy(s)
            s.then, s.otherwise = _uniquify(s.then), _uniquify(s.otherwise)
        out.append(s)
    return out


def _value_matches(value: Any, tp: Any) -> bool:
    """A cheap run-time check of an input value against a known plain type."""
    if tp is None or tp is Any or tp is str:
        return True
    origin = typing.get_origin(tp) or tp
    if not isinstance(origin, type):
        return True
    if origin is float and isinstance(value, int):
        return True
    return isinstance(value, origin)


class Pipeline:
    """Steps run in order on a dict of fields; see the package docstring.

    ``lm`` is the default LM of every step (a run's ``lm=`` overrides it); ``pools``
    maps pool names to Pool objects (otherwise the names come from the PoolManager and
    config); ``inputs`` declares the input fields (a list, or a dict of types) so
    ``validate()`` can report missing ones before any run.
    """

    def __init__(
        self,
        steps: Sequence[Any],
        *,
        name: str = "pipeline",
        lm: Any = None,
        pools: Mapping[str, Any] | None = None,
        manager: Any = None,
        inputs: Sequence[str] | Mapping[str, Any] | None = None,
        cancel_grace_s: float = 5.0,
    ):
        if isinstance(steps, Step):
            steps = [steps]
        self.steps: list[Step] = _uniquify(as_steps(steps))
        self.name = name
        self.lm = lm
        self.pools: dict[str, Any] = dict(pools or {})
        self.manager = manager
        if inputs is None or isinstance(inputs, Mapping):
            self.inputs: dict[str, Any] | None = dict(inputs) if inputs is not None else None
        else:
            self.inputs = dict.fromkeys(inputs)
        self.cancel_grace_s = cancel_grace_s
        self._validation: Validation | None = None

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r} steps={[s.name for s in self.steps]}>"

    # --- checking ---------------------------------------------------------------------------
    def validate(self, inputs: Sequence[str] | Mapping[str, Any] | None = None) -> Validation:
        """Check the wiring; raise ``PipelineError`` listing every problem.

        ``inputs`` (names, or names to types) are the fields a run will get; without them
        (and without ``Pipeline(inputs=...)``) the fields read before being written are
        returned as ``.required`` instead of being reported."""
        known = inputs if inputs is not None else self.inputs
        if known is not None and not isinstance(known, Mapping):
            known = dict.fromkeys(known)
        v = validate(self, known)
        if v.problems:
            raise PipelineError(v.problems)
        return v

    def _check(self, data: Mapping[str, Any]) -> None:
        v = self._validation
        if v is None:
            v = validate(self, self.inputs)
            self._validation = v
        problems = list(v.problems)
        for field, tp in (self.inputs or v.required).items():
            if field not in data:
                problems.append(f"input {field!r} is missing (the run got {sorted(data) or 'no fields'})")
            elif not _value_matches(data[field], tp):
                problems.append(
                    f"input {field!r} should be {getattr(tp, '__name__', tp)}, got {type(data[field]).__name__}"
                )
        if problems:
            raise PipelineError(problems)

    # --- running ----------------------------------------------------------------------------
    async def arun(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        lm: Any = None,
        session: str | None = None,
        on_event: Callable[[Event], None] | None = None,
        **fields: Any,
    ) -> PipelineResult:
        """Run once. ``session`` reuses worker-side state across runs (then it is not
        dropped at the end); by default each run gets a fresh session, dropped after."""
        data = {**dict(inputs or {}), **fields}
        self._check(data)
        trace = Trace(run_id=uuid.uuid4().hex[:12], session=session or new_session_id(), pipeline=self.name)
        emit = _safe(on_event)
        rt = RunState(self, trace, lm=lm if lm is not None else self.lm, emit=emit)
        # start the pools this pipeline uses first, so no step's time includes a pool start
        refs = {s.pool for _, s in self.walk() if isinstance(s, WorkerStep) and isinstance(s.pool, str)}
        if refs:
            await asyncio.gather(*(rt.pool_for(ref) for ref in sorted(refs)))
        rt.emit(RunStarted(trace.run_id, self.name, "", trace.started, inputs=dict(data)))
        with otel.span(f"dspex.pipeline {self.name}", {"dspex.run_id": trace.run_id, "dspex.session": trace.session},
                       on=rt.spans):
            try:
                out = await rt.run_sequence(self.steps, data, "")
            except BaseException as exc:
                trace.status = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
                if isinstance(exc, DspexError):
                    exc.trace = trace  # type: ignore[attr-defined]
                raise
            finally:
                trace.ended = time.time()
                if session is None:
                    await asyncio.shield(rt.close())
        trace.status = "ok"
        result = PipelineResult({**data, **out}, trace)
        rt.emit(RunFinished(trace.run_id, self.name, "", trace.ended, result=result))
        return result

    def run(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        lm: Any = None,
        session: str | None = None,
        on_event: Callable[[Event], None] | None = None,
        **fields: Any,
    ) -> PipelineResult:
        """Run once and return the data at the end (with ``.trace``). Raises
        ``PipelineError`` before running anything if the wiring is wrong, ``StepFailed``
        if a step fails (its ``.trace`` is the partial trace). Nothing the run started is
        still running when this returns or raises."""
        return run_sync(self.arun(inputs, lm=lm, session=session, on_event=on_event, **fields))

    async def abatch(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        concurrency: int = 4,
        lm: Any = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """One run per input (each with its own session), at most ``concurrency`` at once;
        results in input order. A failure cancels the other runs and is raised, unless
        ``return_exceptions`` (then it takes its input's place in the list)."""
        for item in inputs:  # every input checked before anything runs
            self._check(item)
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(item: Mapping[str, Any]) -> Any:
            async with sem:
                if return_exceptions:
                    try:
                        return await self.arun(item, lm=lm)
                    except Exception as exc:
                        return exc
                return await self.arun(item, lm=lm)

        return await gather_fail_fast([one(item) for item in inputs])

    def batch(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        concurrency: int = 4,
        lm: Any = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Sync ``abatch``."""
        return run_sync(
            self.abatch(inputs, concurrency=concurrency, lm=lm, return_exceptions=return_exceptions)
        )

    async def astream(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        lm: Any = None,
        session: str | None = None,
        **fields: Any,
    ) -> AsyncGenerator[Event, None]:
        """Run once, yielding events as they happen; the last is ``RunFinished`` (with
        the result). A failure is raised after its ``StepFailedEvent``s. Leaving the loop
        early cancels the run."""
        data = {**dict(inputs or {}), **fields}
        self._check(data)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.ensure_future(self.arun(data, lm=lm, session=session, on_event=queue.put_nowait))
        task.add_done_callback(lambda _t: queue.put_nowait(_END))
        try:
            while True:
                event = await queue.get()
                if event is _END:
                    break
                yield event
            task.result()
        finally:
            await _cancel_all([task])

    def stream(
        self,
        inputs: Mapping[str, Any] | None = None,
        *,
        lm: Any = None,
        session: str | None = None,
        **fields: Any,
    ) -> Iterator[Event]:
        """Sync ``astream``: the run advances on a private event loop between the events
        you consume (use ``astream`` inside async code)."""
        loop = asyncio.new_event_loop()
        agen = self.astream(inputs, lm=lm, session=session, **fields)
        try:
            while True:
                try:
                    event = loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    break
                yield event
        finally:
            try:
                loop.run_until_complete(agen.aclose())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    # --- seeing and saving ----------------------------------------------------------------------
    def render(self, *, direction: str = "TD") -> str:
        """A Mermaid flowchart: parallel groups as subgraphs, native and worker styled."""
        from .render import render_mermaid

        return render_mermaid(self, direction=direction)

    def to_dict(self) -> dict[str, Any]:
        """The pipeline as plain data (what ``save`` writes)."""
        from .serialize import pipeline_to_dict

        return pipeline_to_dict(self)

    def save(self, path: str | Path) -> Path:
        """Write the pipeline as YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
        from .serialize import save

        return save(self, path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        allow: Sequence[str] = (),
        pools: Mapping[str, Any] | None = None,
        lm: Any = None,
        manager: Any = None,
    ) -> Pipeline:
        """Read a pipeline saved by ``save``. Callables it references must be registered
        (``register`` of ``dspex.pipeline``) or match an ``allow`` pattern ("pkg.mod:fn",
        "pkg.mod:*"); anything else is a ``PipelineError`` naming it."""
        from .serialize import load

        return load(path, allow=allow, pools=pools, lm=lm, manager=manager)

    @classmethod
    def from_dict(
        cls,
        spec: Mapping[str, Any],
        *,
        allow: Sequence[str] = (),
        pools: Mapping[str, Any] | None = None,
        lm: Any = None,
        manager: Any = None,
    ) -> Pipeline:
        from .serialize import pipeline_from_dict

        return pipeline_from_dict(spec, allow=allow, pools=pools, lm=lm, manager=manager)

    def walk(self) -> Iterator[tuple[str, Step]]:
        """Every step with its path, depth first (fallbacks included)."""

        def visit(steps: Sequence[Step], parent: str) -> Iterator[tuple[str, Step]]:
            for s in steps:
                path = f"{parent}/{s.name}" if parent else s.name
                yield path, s
                if isinstance(s, FanOut):
                    yield from visit([s.step], path)
                else:
                    yield from visit(s.children(), path)
                if s.fallback is not None:
                    yield from visit([s.fallback], parent)

        yield from visit(self.steps, "")


def _safe(on_event: Callable[[Event], None] | None) -> Callable[[Event], None] | None:
    """An event callback that cannot break the run by raising."""
    if on_event is None:
        return None

    def emit(event: Event) -> None:
        try:
            on_event(event)
        except Exception:
            pass

    return emit


def pipeline(steps: Sequence[Any], **options: Any) -> Pipeline:
    """``Pipeline(steps, **options)``: the seed's ``DSPex.pipeline([...])``."""
    return Pipeline(steps, **options)
