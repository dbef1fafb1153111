"""Native implementations: everything dspex runs in the caller's process.

    signature.py  signatures (string and class forms), field types
    adapters.py   ChatAdapter / JSONAdapter: prompt formatting and reply parsing
    values.py     Example, Prediction
    template.py   checked templates for custom prompt steps
    lm.py         LM clients (OpenAI-compatible, Anthropic), retries, rate limits
    cache.py      request cache (memory LRU + optional SQLite)
    predict.py    Predict, ChainOfThought, output checks
    retrieve.py   BM25 over a local corpus

``dspex.native`` (the attribute of ``dspex``) is not this package but the function that
builds a native pipeline step (``native`` of ``dspex.pipeline``, the seed's ``{:native, Module,
opts}``); import from this package with ``from dspex.native.lm import LM`` (see
docs/internals.md, "one name, one thing").
"""

from __future__ import annotations
