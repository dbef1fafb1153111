"""Helpers for the Ray backend tests (this directory is not a package: a package named
``ray`` under tests/ would shadow the real one)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(cond: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it is truthy (bounded; fails the test after ``timeout``)."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def node_of(pool: Any) -> dict[int, str]:
    """pid -> node id of the pool's live workers."""
    return {w["pid"]: w["node_id"] for w in pool.stats()["workers"] if w["state"] == "ready"}
