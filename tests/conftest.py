"""Shared fixtures for the whole test suite.

``fake_lm``: one FakeLMServer (OpenAI + Anthropic APIs on 127.0.0.1) for the
session; its script, log, latency and responder are reset before every test.
DSPy, when a test imports it, must not download a price list: set the env first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dspex.testing import FakeLMServer


@pytest.fixture(scope="session")
def _fake_lm_server() -> Iterator[FakeLMServer]:
    server = FakeLMServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_lm(_fake_lm_server: FakeLMServer) -> Iterator[FakeLMServer]:
    """The session's FakeLMServer, with an empty script and log for this test."""
    _fake_lm_server.reset()
    yield _fake_lm_server
    _fake_lm_server.reset()
