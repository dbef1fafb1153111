"""dspex: a runtime for DSPy-style language-model programs.

The public API is the names in ``__all__``. They load lazily (PEP 562), so
``import dspex`` stays small and never imports DSPy or any other heavy library.

    native/    in-process: signatures, adapters, LM clients, Predict, cache, retrieval
    pool/      supervised worker processes (our Snakepit)
    bridge/    DSPy exposed as pool handlers (imported only inside workers)
    router/    the op table, routing policy and dispatcher; api/ is the operation layer
    pipeline/  steps that mix native and worker execution
    wire.py    the host <-> bridge contract (handler names, codes; stdlib only)
    local/     the embedded default model, run as a managed service
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._lazy import attach
from .errors import (
    CallTimeout,
    CheckFailed,
    ConfigError,
    ContextWindowExceeded,
    DspexError,
    HandlerNotFound,
    ImplementationUnavailable,
    InputError,
    LMAuthError,
    LMBadResponse,
    LMError,
    LMRateLimited,
    LMTimeout,
    LMTransportError,
    LocalModelError,
    ParseError,
    PipelineError,
    PoolClosed,
    PoolError,
    PoolOverloaded,
    ProtocolError,
    RemoteError,
    SessionLost,
    SignatureError,
    StepFailed,
    StepTimeout,
    TemplateError,
    WorkerCrashed,
    WorkerStartError,
)
from .settings import Usage, context, current, load_config, set_default_lm_provider


def _embedded_lm() -> Any:
    """The last-resort LM: the embedded local model (loaded on first use only)."""
    from .local import default_lm

    return default_lm()


set_default_lm_provider(_embedded_lm)

# One name, one thing: dspex.native / dspex.pipeline are the step-builder functions, not the
# subpackages of the same names. Loading both (tiny) packages here means no later submodule
# import rebinds those attributes (the import system binds a package's name in its parent
# only when it first loads it); the functions then load lazily below. docs/internals.md.
importlib.import_module(".native", __name__)
importlib.import_module(".pipeline", __name__)
del globals()["native"], globals()["pipeline"]

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    # native core
    "Signature": ".native.signature",
    "InputField": ".native.signature",
    "OutputField": ".native.signature",
    "ChatAdapter": ".native.adapters",
    "JSONAdapter": ".native.adapters",
    "Example": ".native.values",
    "Prediction": ".native.values",
    "Template": ".native.template",
    "LM": ".native.lm",
    "Predict": ".native.predict",
    "ChainOfThought": ".native.predict",
    "Module": ".native.module",
    "BaseLM": ".native.lm",
    "BM25": ".native.retrieve",
    # the implementation-agnostic API (router-backed)
    "signature": ".api",
    "compile_signature": ".api",
    "predict": ".api",
    "apredict": ".api",
    "predictor": ".api",
    "chain_of_thought": ".api",
    "react": ".api",
    "optimize": ".api",
    "aoptimize": ".api",
    "retrieve": ".api",
    "aretrieve": ".api",
    "explain": ".api",
    "run_program": ".api",
    "arun_program": ".api",
    "router_stats": ".api",
    # pipelines
    "native": ".pipeline",
    "pipeline": ".pipeline",
    "Pipeline": ".pipeline",
    "worker": ".pipeline",
    "parallel": ".pipeline",
    "branch": ".pipeline",
    "fan_out": ".pipeline",
}

__all__ = [  # noqa: RUF022 - grouped by layer
    "__version__",
    # settings
    "context",
    "current",
    "load_config",
    "Usage",
    # errors (the tree in errors.py)
    "DspexError",
    "ConfigError",
    "SignatureError",
    "TemplateError",
    "ParseError",
    "CheckFailed",
    "InputError",
    "LMError",
    "LMRateLimited",
    "LMTimeout",
    "LMAuthError",
    "ContextWindowExceeded",
    "LMBadResponse",
    "LMTransportError",
    "PoolError",
    "WorkerStartError",
    "WorkerCrashed",
    "CallTimeout",
    "PoolOverloaded",
    "SessionLost",
    "PoolClosed",
    "ProtocolError",
    "HandlerNotFound",
    "RemoteError",
    "ImplementationUnavailable",
    "PipelineError",
    "StepFailed",
    "StepTimeout",
    "LocalModelError",
    # lazily loaded (see _LAZY)
    "Signature",
    "InputField",
    "OutputField",
    "ChatAdapter",
    "JSONAdapter",
    "Example",
    "Prediction",
    "Template",
    "LM",
    "Predict",
    "ChainOfThought",
    "Module",
    "BaseLM",
    "BM25",
    "signature",
    "compile_signature",
    "predict",
    "apredict",
    "predictor",
    "chain_of_thought",
    "react",
    "optimize",
    "aoptimize",
    "retrieve",
    "aretrieve",
    "explain",
    "router_stats",
    "run_program",
    "arun_program",
    "pipeline",
    "Pipeline",
    "worker",
    "parallel",
    "branch",
    "fan_out",
    # subpackages
    "native",  # the native pipeline step builder (the package is dspex.native.*, imported by path)
    "pool",
    "testing",
]

_SUBPACKAGES = {"pool", "testing", "bridge", "local", "router", "api", "wire"}


_lazy_getattr, __dir__ = attach(__name__, _LAZY, globals())


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    return _lazy_getattr(name)  # stores the value: later lookups skip this function


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import pool, testing
    from .api import (
        aoptimize,
        apredict,
        aretrieve,
        arun_program,
        chain_of_thought,
        compile_signature,
        explain,
        optimize,
        predict,
        predictor,
        react,
        retrieve,
        router_stats,
        run_program,
        signature,
    )
    from .native.adapters import ChatAdapter, JSONAdapter
    from .native.lm import LM, BaseLM
    from .native.module import Module
    from .native.predict import ChainOfThought, Predict
    from .native.retrieve import BM25
    from .native.signature import InputField, OutputField, Signature
    from .native.template import Template
    from .native.values import Example, Prediction
    from .pipeline import Pipeline, branch, fan_out, native, parallel, pipeline, worker
