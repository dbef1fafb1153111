"""Issue 13, finding 12: a call that provably never started is re-dispatched.

"Never started" (``_Supervisor._finalize``): its frame was not completely written
(EPIPE: the worker was already gone), or its frame was the last thing written and the
worker closed with bytes of ours unread (ECONNRESET), or it was a serial call queued
behind another in the same worker. Such calls run on a live worker; a call the worker
may have started still fails with WorkerCrashed (handlers need not be idempotent).

The races are made deterministic with SIGSTOP: a stopped template cannot report its
workers' deaths, a stopped worker cannot read what we write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspex.errors import WorkerCrashed
from dspex.pool import Pool
from pool.util import H, alive, bg, wait_for

HANDLERS = str(Path(__file__).resolve().parent.parent / "pool" / "_fault_handlers.py")
pytestmark = pytest.mark.timeout(120)


def _zombie_or_gone(pid: int) -> bool:
    return not alive(pid)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_calls_to_idle_workers_that_already_died_are_redispatched() -> None:
    """Every worker killed while idle; the host has not heard of it yet (template stopped):
    the calls routed to the dead workers are written to closed sockets (EPIPE) and must
    run on the replacements, not fail with WorkerCrashed."""
    with Pool("redispatch", 2, handlers=[H], forward_stderr=False) as p:
        old = p.workers()
        zpid = p.stats()["template"]["pid"]
        with stopped(zpid):
            for pid in old:
                os.kill(pid, signal.SIGKILL)
            for pid in old:
                wait_for(lambda pid=pid: _zombie_or_gone(pid), 10, "the workers to die")
            calls = [bg(p.call, "echo", i, timeout=60) for i in range(6)]
            wait_for(lambda: p.stats()["in_flight"] + p.stats()["queue_depth"] >= 1, 30, "calls in the pool")
        for t, _ in calls:
            t.join(60)
        assert [out for _, out in calls] == [{"value": i} for i in range(6)]  # before: WorkerCrashed
        assert not set(p.workers()) & set(old)
        assert p.stats()["requeued"] >= 1


async def test_async_call_to_a_dead_idle_worker_is_redispatched() -> None:
    with Pool("redispatch-a", 1, handlers=[H], forward_stderr=False) as p:
        old = p.workers()[0]
        zpid = p.stats()["template"]["pid"]
        with stopped(zpid):
            os.kill(old, signal.SIGKILL)
            await asyncio.get_running_loop().run_in_executor(None, wait_for, lambda: _zombie_or_gone(old), 10)
            task = asyncio.ensure_future(p.acall("echo", "a", timeout=60))
            await asyncio.sleep(0.2)
        assert await task == "a"


def test_a_call_written_but_never_read_is_redispatched() -> None:
    """The worker is stopped, so our frame sits unread in its socket; then it is killed.
    The kernel reports ECONNRESET: the call never started and runs on the replacement."""
    with Pool("unread", 1, handlers=[H], forward_stderr=False) as p:
        old = p.workers()[0]
        with stopped(old):
            t, out = bg(p.call_detailed, "echo", "late", timeout=60)
            wait_for(lambda: p.stats()["in_flight"] == 1, 30, "the call in flight")
            os.kill(old, signal.SIGKILL)
        t.join(60)
        assert "value" in out, out  # before the fix: WorkerCrashed
        assert out["value"].value == "late" and out["value"].pid != old


def test_a_call_that_started_still_fails_with_worker_crashed() -> None:
    with Pool("started", 1, handlers=[HANDLERS, H], forward_stderr=False) as p:
        old = p.workers()[0]
        with pytest.raises(WorkerCrashed):
            p.call("selfkill", timeout=60)
        assert p.call("ping", timeout=60) != old
