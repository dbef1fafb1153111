"""What a pipeline run did: events (streamed while it runs) and the trace (after).

Events are small frozen dataclasses, emitted in causal order for each step:
``StepStarted`` -> (``StepProgress`` | ``StepRetrying``)* -> ``StepFinished`` |
``StepFailedEvent``; a run starts with ``RunStarted`` and, when it succeeds, ends with
``RunFinished`` carrying the result.

The trace is one ``StepTrace`` per step execution (leaf and group steps alike),
in start order, with where it ran (``native``, ``cache``, or the pool name plus the
worker pid), timings, retries and LM usage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Event",
    "PipelineResult",
    "RunFinished",
    "RunStarted",
    "StepFailedEvent",
    "StepFinished",
    "StepProgress",
    "StepRetrying",
    "StepStarted",
    "StepTrace",
    "Trace",
]


@dataclass(frozen=True)
class Event:
    """Base of every pipeline event. ``path`` is "group/step" for nested steps."""

    run_id: str
    step: str
    path: str
    time: float


@dataclass(frozen=True)
class RunStarted(Event):
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepStarted(Event):
    kind: str = "native"
    where: str = "native"


@dataclass(frozen=True)
class StepProgress(Event):
    """A progress report: from a worker handler's ``ctx.progress(...)`` or a native
    step's ``current_step().progress(...)``."""

    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepRetrying(Event):
    attempt: int = 1
    delay_s: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class StepFinished(Event):
    outputs: dict[str, Any] = field(default_factory=dict)
    where: str = "native"
    pid: int | None = None
    duration_s: float = 0.0
    cached: bool = False


@dataclass(frozen=True)
class StepFailedEvent(Event):
    error: BaseException | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class RunFinished(Event):
    result: PipelineResult | None = None


@dataclass
class StepTrace:
    """One execution of one step."""

    name: str
    path: str
    kind: str  # native | worker | parallel | branch | fan_out
    where: str = "native"  # native | cache | <pool name> | group
    pid: int | None = None
    started: float = 0.0  # time.time()
    ended: float = 0.0
    duration_s: float = 0.0
    attempts: int = 0
    status: str = "running"  # ok | failed | cancelled | fallback | skipped
    error: str | None = None
    cached: bool = False
    usage: dict[str, Any] = field(default_factory=dict)  # prompt/completion tokens, calls, cost
    fallback_of: str | None = None  # set on the trace of a fallback step

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    @property
    def cost(self) -> float:
        return float(self.usage.get("cost", 0.0) or 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "where": self.where,
            "pid": self.pid,
            "started": self.started,
            "ended": self.ended,
            "duration_s": self.duration_s,
            "attempts": self.attempts,
            "retries": self.retries,
            "status": self.status,
            "error": self.error,
            "cached": self.cached,
            "usage": dict(self.usage),
        }


@dataclass
class Trace:
    """Everything one run did. ``steps`` is in start order."""

    run_id: str
    session: str
    pipeline: str
    started: float = field(default_factory=time.time)
    ended: float = 0.0
    steps: list[StepTrace] = field(default_factory=list)
    status: str = "running"

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended - self.started) if self.ended else 0.0

    def step(self, name_or_path: str) -> StepTrace:
        """The (last) trace of the step with this name or path."""
        for st in reversed(self.steps):
            if st.path == name_or_path or st.name == name_or_path:
                return st
        raise KeyError(f"no step {name_or_path!r} in this trace; steps: {[s.path for s in self.steps]}")

    def leaves(self) -> list[StepTrace]:
        """Traces of native and worker steps (no groups)."""
        return [s for s in self.steps if s.kind in ("native", "worker")]

    @property
    def usage(self) -> dict[str, Any]:
        """LM usage summed over the leaf steps."""
        total: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0, "cost": 0.0}
        for st in self.leaves():
            for key in total:
                total[key] += st.usage.get(key, 0) or 0
        total["total_tokens"] = total["prompt_tokens"] + total["completion_tokens"]
        return total

    def rows(self) -> list[dict[str, Any]]:
        """One row per step for tables: step, kind, where, pid, ms, retries, status, tokens."""
        out = []
        for st in self.steps:
            out.append(
                {
                    "step": st.path,
                    "kind": st.kind,
                    "where": st.where,
                    "pid": st.pid,
                    "ms": round(st.duration_s * 1000, 1),
                    "retries": st.retries,
                    "status": st.status,
                    "tokens": (st.usage.get("prompt_tokens", 0) or 0)
                    + (st.usage.get("completion_tokens", 0) or 0),
                }
            )
        return out

    def table(self) -> str:
        """A plain-text table of ``rows()``."""
        rows = self.rows()
        cols = ["step", "kind", "where", "pid", "ms", "retries", "status", "tokens"]
        cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "session": self.session,
            "pipeline": self.pipeline,
            "started": self.started,
            "ended": self.ended,
            "duration_s": self.duration_s,
            "status": self.status,
            "usage": self.usage,
            "steps": [s.as_dict() for s in self.steps],
        }


class PipelineResult(dict[str, Any]):
    """The data at the end of a run (inputs plus every step's outputs), with ``.trace``.

    Fields are also readable as attributes: ``result.answer``.
    """

    trace: Trace

    def __init__(self, data: dict[str, Any], trace: Trace):
        super().__init__(data)
        self.trace = trace

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no field {name!r} in the result; fields: {sorted(self)}") from None

    def __repr__(self) -> str:
        return f"PipelineResult({dict.__repr__(self)})"
