"""Native implementations: everything dspex runs in the caller's process.

    signature.py  signatures (string and class forms), field types
    adapters.py   ChatAdapter / JSONAdapter: prompt formatting and reply parsing
    values.py     Example, Prediction
    template.py   checked templates for custom prompt steps
    lm.py         LM clients (OpenAI-compatible, Anthropic), retries, rate limits
    cache.py      request cache (memory LRU + optional SQLite)
    predict.py    Predict, ChainOfThought, output checks
    retrieve.py   BM25 over a local corpus

The package object is also callable: ``dspex.native(fn, ...)`` builds a native
pipeline step (see ``dspex.pipeline.native``). That keeps the seed's
``{:native, Module, opts}`` spelling without a second name for this package.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _NativeModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ..pipeline import native as native_step

        return native_step(*args, **kwargs)


sys.modules[__name__].__class__ = _NativeModule
