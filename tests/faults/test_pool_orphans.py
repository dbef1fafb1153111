"""Issue 13, finding 6: what handlers start does not outlive their worker.

A handler starts ``sleep 1000`` twice: as its child, and detached (own session, its
parent exited, so it is re-parented). Both must be gone after each of: kill -9 of
the host, ``pool.close()``, recycling (max_requests), kill -9 of the worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspex.pool import Pool
from pool.util import alive, wait_for

POOL_TESTS = Path(__file__).resolve().parent.parent / "pool"
HANDLERS = str(POOL_TESTS / "_fault_handlers.py")
pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def reaped(pids: list[int]) -> Iterator[None]:
    """Kill leftovers whatever the outcome: a failing test must not leak sleepers."""
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _spawn_both(p: Pool) -> tuple[list[int], int]:
    kids = [p.call("spawn", timeout=60), p.call("spawn", True, timeout=60)]
    pids = [k["pid"] for k in kids]
    assert all(alive(pid) for pid in pids)
    return pids, kids[0]["worker"]


def _gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


def test_pool_close_ends_what_handlers_started() -> None:
    p = Pool("orph-close", 1, handlers=[HANDLERS], forward_stderr=False)
    with p:
        pids, _ = _spawn_both(p)
    with reaped(pids):
        wait_for(lambda: _gone(pids), 15, "the handler's processes to end after close()")


def test_recycling_ends_what_handlers_started() -> None:
    with Pool("orph-recycle", 1, handlers=[HANDLERS], max_requests=2, forward_stderr=False) as p:
        pids, worker = _spawn_both(p)  # the second call is this worker's last
        with reaped(pids):
            wait_for(lambda: not alive(worker), 30, "the recycled worker to exit")
            wait_for(lambda: _gone(pids), 15, "the handler's processes to end with their worker")
            assert p.call("ping", timeout=60) != worker
            assert p.stats()["recycles"] >= 1


def test_worker_kill_9_ends_what_handlers_started() -> None:
    with Pool("orph-kill", 1, handlers=[HANDLERS], forward_stderr=False) as p:
        pids, worker = _spawn_both(p)
        with reaped(pids):
            os.kill(worker, signal.SIGKILL)
            wait_for(lambda: _gone(pids), 15, "the handler's processes to end with their killed worker")
            assert p.call("ping", timeout=60) != worker


def test_host_kill_9_ends_what_handlers_started() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(POOL_TESTS / "_orphan_host.py")], stdout=subprocess.PIPE, text=True
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        pids = info["pids"] + [info["worker"]]
        assert all(alive(pid) for pid in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        with reaped(pids):
            wait_for(lambda: _gone(pids), 15, "worker and handler processes to end after the host's kill -9")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(30)
