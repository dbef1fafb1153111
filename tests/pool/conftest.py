"""Shared pool fixture: one small pool per module for the non-destructive tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dspex.pool import Pool

from .util import H


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    with Pool("test", 2, handlers=[H], forward_stderr=False) as p:
        yield p
