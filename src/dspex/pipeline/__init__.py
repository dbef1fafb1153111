"""Pipelines: steps that mix native and worker execution, in sequence and in parallel.

    import dspex

    research = dspex.pipeline([          # dspex.pipeline is the function pipeline() of this package
        dspex.native("question -> search_queries: list[str]"),            # in-process Predict
        dspex.worker("dspy.ChainOfThought",                                # DSPy, in a worker
                     signature="search_queries -> refined_queries", pool="dspy"),
        dspex.parallel([search_bm25, dense_step, colbert_step], concurrency=3),
        dspex.branch("needs_review", then=review_step, otherwise=dspex.native(passthrough)),
        dspex.fan_out(summarize, over="passages", into="summaries", concurrency=4),
        dspex.native(format_markdown, writes="markdown"),
    ])
    result = research.run(question="...")      # or await .arun, .batch, .stream, .astream
    result["markdown"], result.trace.table()

A dict of fields flows through the run; each step reads and writes named fields
(from its signature, its parameters, or ``reads=``/``writes=``). The wiring is
checked before anything runs (``PipelineError`` lists every problem). Each run has
one fresh session id that every worker step passes, so the worker-side state of a
run is found again; it is dropped when the run ends.

    steps.py       the step kinds (base, native_step, worker_step, op_step, groups)
    core.py        Pipeline: validate, run/arun, batch/abatch, stream/astream
    runner.py      the async core: retries, timeouts, fallback, cache, cancellation
    validation.py  the wiring checks
    trace.py       events and the trace
    render.py      Mermaid diagrams
    serialize.py   YAML/JSON save and load, the callable registry and allowlist
    otel.py        OpenTelemetry spans (when installed)

Names load lazily (PEP 562), so ``import dspex`` can load this package cheaply: it does,
to keep ``dspex.pipeline`` the *function* (see docs/internals.md, "one name, one thing").
Import from it with ``from dspex.pipeline import Pipeline, native, worker``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# public name -> module of this package that defines it
_LAZY: dict[str, str] = {
    "Pipeline": ".core",
    "pipeline": ".core",
    "register": ".serialize",
    "registered": ".serialize",
    "unregister": ".serialize",
    **dict.fromkeys(
        ["Branch", "FanOut", "NativeStep", "OpStep", "Parallel", "Step", "StepContext", "WorkerStep", "branch",
         "current_step", "fan_out", "native", "op", "parallel", "worker"],
        ".steps",
    ),
    **dict.fromkeys(
        ["Event", "PipelineResult", "RunFinished", "RunStarted", "StepFailedEvent", "StepFinished", "StepProgress",
         "StepRetrying", "StepStarted", "StepTrace", "Trace"],
        ".trace",
    ),
}

__all__ = [
    "Branch",
    "Event",
    "FanOut",
    "NativeStep",
    "OpStep",
    "Parallel",
    "Pipeline",
    "PipelineResult",
    "RunFinished",
    "RunStarted",
    "Step",
    "StepContext",
    "StepFailedEvent",
    "StepFinished",
    "StepProgress",
    "StepRetrying",
    "StepStarted",
    "StepTrace",
    "Trace",
    "WorkerStep",
    "branch",
    "current_step",
    "fan_out",
    "native",
    "op",
    "parallel",
    "pipeline",
    "register",
    "registered",
    "unregister",
    "worker",
]


__getattr__, __dir__ = attach(__name__, _LAZY, globals())


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .core import Pipeline, pipeline
    from .serialize import register, registered, unregister
    from .steps import (
        Branch,
        FanOut,
        NativeStep,
        OpStep,
        Parallel,
        Step,
        StepContext,
        WorkerStep,
        branch,
        current_step,
        fan_out,
        native,
        op,
        parallel,
        worker,
    )
    from .trace import (
        Event,
        PipelineResult,
        RunFinished,
        RunStarted,
        StepFailedEvent,
        StepFinished,
        StepProgress,
        StepRetrying,
        StepStarted,
        StepTrace,
        Trace,
    )
