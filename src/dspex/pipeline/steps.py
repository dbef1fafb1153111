"""Pipeline steps, one module per concern (this module gathers their names):

    base.py         Step (options shared by every kind), StepContext, current_step()
    native_step.py  NativeStep: a callable, a native module, a Template or a signature string
    worker_step.py  WorkerStep: a DSPy module through the router's dispatcher, or any handler
    groups.py       Parallel, Branch, FanOut; as_step / as_steps
    op_step.py      OpStep: an API operation (retrieve, optimize) routed and dispatched as the API
"""

from __future__ import annotations

from .base import Step, StepContext, _current_step, _sig_string, current_step
from .groups import Branch, FanOut, Parallel, as_step, as_steps, branch, fan_out, parallel
from .native_step import NativeStep, native
from .op_step import OpStep, op
from .worker_step import WorkerStep, worker

__all__ = [
    "Branch",
    "FanOut",
    "NativeStep",
    "OpStep",
    "Parallel",
    "Step",
    "StepContext",
    "WorkerStep",
    "_current_step",
    "_sig_string",
    "as_step",
    "as_steps",
    "branch",
    "current_step",
    "fan_out",
    "native",
    "op",
    "parallel",
    "worker",
]
