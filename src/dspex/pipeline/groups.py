"""Group steps: ``parallel``, ``branch``, ``fan_out``; and ``as_step`` (anything -> a Step)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from ..errors import PipelineError
from .base import _ON_ERROR, Step, StepOptions, _field_names
from .native_step import _callable_name, native

if TYPE_CHECKING:
    from .runner import RunState
    from .trace import StepTrace

__all__ = ["Branch", "FanOut", "Parallel", "as_step", "as_steps", "branch", "fan_out", "parallel"]

class Parallel(Step):
    """Steps run concurrently on the same data. See ``parallel()``."""

    kind = "parallel"

    def __init__(
        self,
        steps: Sequence[Any],
        *,
        name: str | None = None,
        concurrency: int | None = None,
        on_error: str = "fail_fast",
        into: str | None = None,
        **options: Any,
    ):
        if on_error not in _ON_ERROR:
            raise PipelineError(f"parallel(on_error={on_error!r}) must be one of {list(_ON_ERROR)}")
        self.steps = as_steps(steps)
        self.concurrency = concurrency
        self.on_error = on_error
        self.into = into
        reads: dict[str, Any] = {}
        writes: dict[str, Any] = {}
        for s in self.steps:
            for k in s.reads:
                reads.setdefault(k, s.read_types.get(k))
            for k in s.writes:
                writes.setdefault(k, s.write_types.get(k))
        if into is not None:
            writes = {into: dict}
        super().__init__(
            name=name or "parallel",
            reads=list(reads),
            writes=list(writes),
            read_types=reads,
            write_types=writes,
            named=name is not None,
            **options,
        )

    def children(self) -> list[Step]:
        return list(self.steps)

    def where(self) -> str:
        return "group"

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        results = await rt.gather(
            [(s, data) for s in self.steps], st.path, self.concurrency, fail_fast=self.on_error == "fail_fast"
        )
        by_name = {s.name: out for s, out in zip(self.steps, results, strict=True)}
        if self.into is not None:
            return {self.into: by_name}
        merged: dict[str, Any] = {}
        for s in self.steps:  # declaration order, never finishing order
            merged.update(by_name[s.name])
        return merged


def parallel(
    steps: Sequence[Any],
    *,
    name: str | None = None,
    concurrency: int | None = None,
    on_error: str = "fail_fast",
    into: str | None = None,
    **options: Unpack[StepOptions],
) -> Parallel:
    """Run ``steps`` concurrently (at most ``concurrency`` at once) on the same data.

    Their outputs are merged by field in declaration order (two steps writing the same
    field is a wiring error), or, with ``into="field"``, stored as
    ``{step name: {its outputs}}`` under that field. ``on_error="fail_fast"`` (default):
    the first failure cancels the running siblings (their worker calls too) and is
    raised; ``"collect"``: every step runs to its end and all failures are raised
    together (``StepFailed`` whose cause is an ``ExceptionGroup``).
    """
    return Parallel(
        steps,
        name=name,
        concurrency=concurrency,
        on_error=on_error,
        into=into,
        **options,
    )


class Branch(Step):
    """``then`` or ``otherwise`` steps by a condition. See ``branch()``."""

    kind = "branch"

    def __init__(
        self,
        condition: str | Callable[[Mapping[str, Any]], Any],
        then: Any,
        otherwise: Any = None,
        *,
        name: str | None = None,
        reads: str | Sequence[str] | None = None,
        **options: Any,
    ):
        self.condition = condition
        self.then = as_steps(then if isinstance(then, list | tuple) else [then])
        self.otherwise = (
            []
            if otherwise is None
            else as_steps(otherwise if isinstance(otherwise, list | tuple) else [otherwise])
        )
        cond_reads = list(_field_names(reads) or ())
        if isinstance(condition, str):
            cond_reads = [condition, *[c for c in cond_reads if c != condition]]
        elif not callable(condition):
            raise PipelineError("branch(condition=...) must be a field name or a callable on the data")
        self.condition_reads = tuple(cond_reads)
        # reads = condition fields + what each arm needs from outside; writes = what
        # both arms write (only those are certain afterwards)
        then_reads, then_writes = _seq_io(self.then)
        else_reads, else_writes = _seq_io(self.otherwise)
        reads_all: dict[str, Any] = dict.fromkeys(cond_reads)
        for k, v in [*then_reads.items(), *else_reads.items()]:
            reads_all.setdefault(k, v)
        writes_all = {k: v for k, v in then_writes.items() if k in else_writes}
        self.maybe_writes = tuple(k for k in {**then_writes, **else_writes} if k not in writes_all)
        super().__init__(
            name=name or "branch",
            reads=list(reads_all),
            writes=list(writes_all),
            read_types=reads_all,
            write_types=writes_all,
            named=name is not None,
            **options,
        )

    def children(self) -> list[Step]:
        return [*self.then, *self.otherwise]

    def where(self) -> str:
        return "group"

    def condition_label(self) -> str:
        if isinstance(self.condition, str):
            return self.condition
        return _callable_name(self.condition)

    def test(self, data: Mapping[str, Any]) -> bool:
        if isinstance(self.condition, str):
            return bool(data.get(self.condition))
        return bool(self.condition(dict(data)))

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        arm = self.then if self.test(data) else self.otherwise
        st.where = "then" if arm is self.then else "otherwise"
        return await rt.run_sequence(arm, data, st.path)


def branch(
    condition: str | Callable[[Mapping[str, Any]], Any],
    then: Any,
    otherwise: Any = None,
    *,
    name: str | None = None,
    reads: str | Sequence[str] | None = None,
    **options: Unpack[StepOptions],
) -> Branch:
    """Run ``then`` (a step or a list of steps) when ``condition`` holds, else ``otherwise``.

    ``condition`` is a field name (its truthiness) or a callable given a copy of the data
    (declare the fields it looks at with ``reads=`` so the wiring check knows). Only the
    fields both arms write count as written afterwards.
    """
    return Branch(
        condition,
        then,
        otherwise,
        name=name,
        reads=reads,
        **options,
    )


class FanOut(Step):
    """One step mapped over a list field. See ``fan_out()``."""

    kind = "fan_out"

    def __init__(
        self,
        step: Any,
        *,
        over: str,
        into: str,
        item: str | None = None,
        concurrency: int = 4,
        on_error: str = "fail_fast",
        name: str | None = None,
        **options: Any,
    ):
        if on_error not in _ON_ERROR:
            raise PipelineError(f"fan_out(on_error={on_error!r}) must be one of {list(_ON_ERROR)}")
        self.step = as_step(step)
        self.over = over
        self.into = into
        self.concurrency = max(1, int(concurrency))
        self.on_error = on_error
        if item is None:
            free = list(self.step.reads)
            item = free[0] if len(free) == 1 else None
        self.item = item
        inner_reads = {k: v for k, v in self.step.read_types.items() if k != item}
        item_type = self.step.read_types.get(item) if item else None
        reads = {over: (list[item_type] if item_type is not None else None), **inner_reads}  # type: ignore[valid-type]
        if len(self.step.writes) == 1:
            out_t = self.step.write_types.get(self.step.writes[0])
            into_t: Any = list[out_t] if out_t is not None else list  # type: ignore[valid-type]
        else:
            into_t = list
        super().__init__(
            name=name or f"fan_out_{into}",
            reads=list(reads),
            writes=[into],
            read_types=reads,
            write_types={into: into_t},
            named=name is not None,
            **options,
        )

    def children(self) -> list[Step]:
        return [self.step]

    def where(self) -> str:
        return "group"

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        items = data[self.over]
        if not isinstance(items, list | tuple):
            raise TypeError(f"fan_out over {self.over!r} needs a list, got {type(items).__name__}")
        assert self.item is not None  # checked by validation
        jobs = []
        for i, value in enumerate(items):
            jobs.append((self.step.with_name(f"{self.step.name}[{i}]"), {**data, self.item: value}))
        results = await rt.gather(jobs, st.path, self.concurrency, fail_fast=self.on_error == "fail_fast")
        if len(self.step.writes) == 1:
            key = self.step.writes[0]
            return {self.into: [r[key] for r in results]}
        return {self.into: list(results)}


def fan_out(
    step: Any,
    *,
    over: str,
    into: str,
    item: str | None = None,
    concurrency: int = 4,
    on_error: str = "fail_fast",
    name: str | None = None,
    **options: Unpack[StepOptions],
) -> FanOut:
    """Run ``step`` once per element of the list field ``over``, at most ``concurrency``
    at a time; results go to ``into`` as a list in input order (the single field the step
    writes, or a dict of its writes). Each element is bound to the field ``item``
    (default: the step's only read)."""
    return FanOut(
        step,
        over=over,
        into=into,
        item=item,
        concurrency=concurrency,
        on_error=on_error,
        name=name,
        **options,
    )


def as_step(obj: Any) -> Step:
    """A Step from a step, a callable, a native module, a Template or a signature string."""
    if isinstance(obj, Step):
        return obj
    if isinstance(obj, list | tuple):
        raise PipelineError(
            "a list is not a step: wrap concurrent steps in dspex.parallel([...]); "
            "a branch arm may be a list"
        )
    return native(obj)


def as_steps(objs: Sequence[Any]) -> list[Step]:
    return [as_step(o) for o in objs]


def _seq_io(steps: Sequence[Step]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fields read from outside, fields written) of a sequence of steps."""
    reads: dict[str, Any] = {}
    writes: dict[str, Any] = {}
    for s in steps:
        for k in s.reads:
            if k not in writes:
                reads.setdefault(k, s.read_types.get(k))
        for k in s.writes:
            writes[k] = s.write_types.get(k)
    return reads, writes
