"""Pipelines: steps that mix native and worker execution, in sequence and in parallel.

    import dspex

    research = dspex.pipeline([          # the package is callable: same as dspex.pipeline.pipeline
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

    steps.py       native / worker / parallel / branch / fan_out
    core.py        Pipeline: validate, run/arun, batch/abatch, stream/astream
    runner.py      the async core: retries, timeouts, fallback, cache, cancellation
    validation.py  the wiring checks
    trace.py       events and the trace
    render.py      Mermaid diagrams
    serialize.py   YAML/JSON save and load, the callable registry and allowlist
    otel.py        OpenTelemetry spans (when installed)
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .core import Pipeline, pipeline
from .serialize import register, registered, unregister
from .steps import (
    Branch,
    FanOut,
    NativeStep,
    Parallel,
    Step,
    StepContext,
    WorkerStep,
    branch,
    current_step,
    fan_out,
    native,
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

__all__ = [
    "Branch",
    "Event",
    "FanOut",
    "NativeStep",
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
    "parallel",
    "pipeline",
    "register",
    "registered",
    "unregister",
    "worker",
]


class _PipelineModule(types.ModuleType):
    """``dspex.pipeline`` is this package (``import dspex.pipeline`` binds the name to
    it), so the package itself is callable: ``dspex.pipeline([...])`` builds a Pipeline."""

    def __call__(self, steps: Any, **options: Any) -> Pipeline:
        return pipeline(steps, **options)


sys.modules[__name__].__class__ = _PipelineModule
