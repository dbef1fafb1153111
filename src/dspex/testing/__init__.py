"""Testing tools for dspex users and for dspex's own tests.

    FakeLMServer   a real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions
                   and Anthropic Messages APIs: scripted replies, faults (429 +
                   Retry-After, 5xx, hang, malformed JSON, 401, context window),
                   autofill of the requested output fields, latency, a request log;
                   in-process (background thread) or as a subprocess
    Reply, Fault   script items for FakeLMServer
    DummyLM        an in-process deterministic LM with LM's interface

Pool test handlers live in ``dspex.testing.handlers`` (imported on its own).
Names load lazily so ``import dspex.testing`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

__all__ = ["DummyLM", "FakeLMServer", "Fault", "RemoteFakeLMServer", "Reply", "autofill"]

_LAZY = {
    "FakeLMServer": ".fake_server",
    "RemoteFakeLMServer": ".fake_server",
    "Reply": ".fake_server",
    "Fault": ".fake_server",
    "DummyLM": ".dummy",
    "autofill": "._autofill",
}


__getattr__ = attach(__name__, _LAZY, globals())[0]


if TYPE_CHECKING:  # pragma: no cover
    from ._autofill import autofill
    from .dummy import DummyLM
    from .fake_server import FakeLMServer, Fault, RemoteFakeLMServer, Reply
