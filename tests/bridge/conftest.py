"""Fixtures for the bridge tests: small real pools running the DSPy handlers.

Pools are session-scoped (DSPy imports once per pool template) and tiny: the
machine is shared. LMs point at the suite's FakeLMServer with caching off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspex
from dspex.pool.pool import Pool

HERE = Path(__file__).resolve().parent
# Workers import test helpers (metrics) from here.
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off", "PYTHONPATH": str(HERE), "PYTHONFAULTHANDLER": "1"}


def make_pool(name: str, size: int = 1, **kw: object) -> Pool:
    return Pool(name, size=size, handlers=["dspex.bridge.dspy_handlers"], preload=["dspy"], env=ENV,
                call_timeout_s=120, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def dspy_pool() -> Iterator[Pool]:
    pool = make_pool("bridge-test", size=2)
    pool.start()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def opt_pool() -> Iterator[Pool]:
    """One worker, like the default ``optimizer`` pool: a free worker is easy to observe."""
    pool = make_pool("bridge-opt", size=1, affinity="strict", cancel_grace_s=10.0)
    pool.start()
    try:
        yield pool
    finally:
        pool.close()


def lm_for(server: object, model: str = "fake", **kw: object) -> dspex.LM:
    base = server.base_url  # type: ignore[attr-defined]
    return dspex.LM(f"openai/{model}", api_base=base, cache=False, max_tokens=256, temperature=0.0,
                    num_retries=0, **kw)
