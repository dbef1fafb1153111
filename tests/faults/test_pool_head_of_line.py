"""Issue 13, finding 5: async calls are not stuck behind a blocking sync handler.

The worker's main thread used to be the only reader of its socket, so while it ran
a blocking sync handler, async calls sent to the same worker waited for it. The
tests below make the sync handler wait (bounded) for something only the async call
does: before the fix that wait always ran out. No wall-clock thresholds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dspex.pool import Pool
from pool.util import bg, wait_for

HANDLERS = str(Path(__file__).resolve().parent.parent / "pool" / "_fault_handlers.py")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    with Pool("hol", 1, handlers=[HANDLERS, "dspex.testing.handlers"], forward_stderr=False) as p:
        yield p


def test_async_call_runs_while_a_sync_handler_blocks(pool: Pool, tmp_path: Path) -> None:
    running, flag = tmp_path / "running", tmp_path / "flag"
    t, out = bg(pool.call, "wait_file", str(running), str(flag), 20.0)
    wait_for(running.exists, 30, "the sync handler to start")
    # the same (only) worker runs the async call meanwhile; it creates the flag
    assert pool.call("amake_file", str(flag), timeout=60) == pool.workers()[0]
    t.join(60)
    assert out == {"value": True}  # before the fix: False (the flag came only after)


async def test_many_async_calls_during_one_sync_call(pool: Pool, tmp_path: Path) -> None:
    import asyncio

    running, flag = tmp_path / "running", tmp_path / "flag"
    t, out = bg(pool.call, "wait_file", str(running), str(flag), 20.0)
    await asyncio.get_running_loop().run_in_executor(None, wait_for, running.exists, 30, "the sync handler")
    pids = await asyncio.gather(*(pool.acall("asleep", 0.1, timeout=60) for _ in range(20)))
    assert pids == [0.1] * 20
    flag.write_text("x")
    await asyncio.get_running_loop().run_in_executor(None, t.join, 60)
    assert out == {"value": True}


def test_callback_from_a_long_sync_handler(pool: Pool) -> None:
    """The relief reader delivers a host-callback reply to the blocked main thread."""
    assert pool.call("slow_callback", "double", 21, callbacks={"double": lambda x: 2 * x}, timeout=60) == 42


def test_slow_stream_with_a_slow_consumer(pool: Pool) -> None:
    """Flow-control credit reaches a long generator handler through the relief reader."""
    import time

    got = []
    for i in pool.stream("slow_count", 200, 0.002, timeout=60):
        got.append(i)
        if i % 50 == 0:
            time.sleep(0.05)  # let the producer run out of credit
    assert got == list(range(200))


def test_cancel_reaches_a_long_generator(pool: Pool) -> None:
    it = pool.stream("slow_count", 100_000, 0.001, timeout=60)
    assert next(it) == 0
    it.close()  # cancels; the worker must notice and stay usable
    assert pool.call("ping", timeout=30) == pool.workers()[0]
    assert pool.stats()["cancelled"] >= 1
