"""Fixtures of the CLI tests (helpers live in cli_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory (no dspex.toml above it in /tmp)."""
    d = tmp_path / "work"
    d.mkdir()
    return d


# `fake_lm` (a FakeLMServer, reset per test) comes from tests/conftest.py.
