"""A one-worker DSPy pool for the few router tests that run something in DSPy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dspex import settings
from dspex.pool.pool import Pool


@pytest.fixture(scope="session")
def router_pool() -> Iterator[Pool]:
    pool = Pool("router-test", size=1, handlers=["dspex.bridge.dspy_handlers"], preload=["dspy"],
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off",
                     "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}, call_timeout_s=60)
    pool.start()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """Write a dspex.toml and make it the config for this test."""

    def write(text: str) -> None:
        path = tmp_path / "dspex.toml"
        path.write_text(text)
        monkeypatch.setenv("DSPEX_CONFIG", str(path))
        settings.reset_config()

    yield write
    monkeypatch.delenv("DSPEX_CONFIG", raising=False)
    settings.reset_config()
