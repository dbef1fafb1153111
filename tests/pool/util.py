"""Helpers for the pool tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dspex.pool import Pool

H = "dspex.testing.handlers"


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` until true; fail the test (not hang) after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def busy_pid(p: Pool) -> int:
    """A worker with a call in flight, read from the one stats snapshot that showed it
    (a second snapshot may come after the call ended)."""
    busy: list[int] = []

    def seen() -> bool:
        busy[:] = [w["pid"] for w in p.stats()["workers"] if w["in_flight"]]
        return bool(busy)

    wait_for(seen, what="a busy worker")
    return busy[0]


def full_size(p: Pool) -> bool:
    return len(p.workers()) == p.size and all(w["state"] == "ready" for w in p.stats()["workers"])


def bg(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a daemon thread; the dict gets its ``value`` or ``error`` when it ends."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out
