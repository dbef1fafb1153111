"""Issue 13, findings 9 and 11: recycling limits and the queue hold under fast load.

9. ``max_requests=50`` let a worker serve 583 calls and ``max_rss_mb=80`` let one
   reach 642 MB: a retiring worker kept getting calls until its replacement was up.
   Limits now hold at dispatch time (in-flight calls count), the worker checks its own
   peak RSS after every call, and ``max_mem_mb`` is a hard backstop (RLIMIT_DATA).
11. The queue was bounded by count only: 1,000 queued 1 MiB calls took the host to
   1 GB. ``queue_max_bytes`` (default 128 MiB) bounds the bytes of queued requests.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from pathlib import Path

import pytest

from dspex.errors import PoolClosed, PoolOverloaded, RemoteError
from dspex.pool import Pool
from dspex.pool._state import DEFAULT_QUEUE_MAX_BYTES
from pool.util import H, bg, wait_for

HANDLERS = str(Path(__file__).resolve().parent.parent / "pool" / "_fault_handlers.py")
pytestmark = pytest.mark.timeout(180)


def _hammer(p: Pool, handler: str, args: tuple[object, ...], threads: int, per_thread: int) -> list[object]:
    """``threads`` callers making ``per_thread`` calls each; every CallResult."""
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            for _ in range(per_thread):
                r = p.call_with(handler, args, timeout=60, detailed=True)
                with lock:
                    results.append(r)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors[:3]
    return results


def test_max_requests_holds_under_fast_load() -> None:
    with Pool("maxreq", 2, handlers=[H], max_requests=10, forward_stderr=False) as p:
        results = _hammer(p, "echo", (1,), threads=8, per_thread=40)
        per_pid = collections.Counter(r.pid for r in results)  # type: ignore[attr-defined]
        assert sum(per_pid.values()) == 320
        assert max(per_pid.values()) <= 10, per_pid.most_common(3)  # before the fix: dozens
        assert p.stats()["recycles"] >= 320 // 10 - 2


def test_max_rss_mb_holds_under_fast_load() -> None:
    with Pool("maxrss-probe", 1, handlers=[H], forward_stderr=False) as probe:
        base = probe.call("rss", timeout=60)
    limit = base + 40
    step = 4
    with Pool("maxrss", 2, handlers=[H], max_rss_mb=limit, forward_stderr=False) as p:
        results = _hammer(p, "leak", (step,), threads=6, per_thread=25)  # 600 MB asked in all
        peak = max(r.value for r in results)  # type: ignore[attr-defined]
        # what was already sent to the worker when it passed the limit may still run
        slack = step * (p.pipeline_depth + 4)
        assert peak <= limit + slack, (peak, limit)  # before the fix: hundreds of MB over
        assert p.stats()["recycles"] >= 2


def test_max_mem_mb_is_a_hard_cap() -> None:
    with Pool("maxmem-probe", 1, handlers=[HANDLERS], forward_stderr=False) as probe:
        data_mb = probe.call("vm_data_mb", timeout=60)
    cap = data_mb + 150  # headroom for the worker's threads (each stack counts)
    with Pool("maxmem", 1, handlers=[HANDLERS], max_mem_mb=cap, forward_stderr=False) as p:
        assert p.call("alloc", 16, timeout=60) == 16 * 1048576
        with pytest.raises(RemoteError) as info:
            p.call("alloc", cap + 100, timeout=60)
        assert info.value.remote_type == "MemoryError"
        assert p.call("alloc", 16, timeout=60) == 16 * 1048576  # the worker carries on


def test_queue_is_bounded_by_bytes_by_default(tmp_path: Path) -> None:
    """1,000 queued 1 MiB calls: PoolOverloaded once 128 MiB are queued."""
    blob = b"x" * (1 << 20)
    with Pool("qbytes", 1, handlers=[HANDLERS, H], forward_stderr=False) as p:
        assert p.queue_max_bytes == DEFAULT_QUEUE_MAX_BYTES
        running, flag = tmp_path / "running", tmp_path / "flag"
        t, out = bg(p.call, "wait_file", str(running), str(flag), 60.0)
        wait_for(running.exists, 30, "the worker to be busy")

        async def flood() -> list[object]:
            calls = [asyncio.ensure_future(p.acall("echo", blob, timeout=120)) for _ in range(1000)]
            await asyncio.sleep(0)
            s = p.stats()
            assert s["queue_bytes"] <= p.queue_max_bytes
            assert 100 < s["queue_depth"] <= DEFAULT_QUEUE_MAX_BYTES // len(blob)
            flag.write_text("x")  # let the queue drain
            return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(flood())
        t.join(60)
        overloaded = [o for o in outcomes if isinstance(o, PoolOverloaded)]
        ok = [o for o in outcomes if o == blob]
        assert len(ok) + len(overloaded) == 1000, {type(o).__name__ for o in outcomes}
        assert len(overloaded) >= 1000 - 129  # before the fix: 0 (all 1,000 queued: 1 GB)
        assert "queue_max_bytes" in str(overloaded[0])
        assert out == {"value": True}


def test_one_call_larger_than_queue_max_bytes_still_runs(tmp_path: Path) -> None:
    blob = b"y" * (3 << 20)
    with Pool("qbig", 1, handlers=[HANDLERS, H], queue_max_bytes=1 << 20, forward_stderr=False) as p:
        running, flag = tmp_path / "running", tmp_path / "flag"
        t, _ = bg(p.call, "wait_file", str(running), str(flag), 60.0)
        wait_for(running.exists, 30, "the worker to be busy")
        first, out = bg(p.call, "echo", blob, timeout=60)  # queued alone: admitted
        wait_for(lambda: p.stats()["queue_depth"] == 1, 30, "the big call to queue")
        with pytest.raises(PoolOverloaded):
            p.call("echo", b"z", timeout=60)  # any more bytes: refused
        flag.write_text("x")
        first.join(60)
        assert out == {"value": blob}
        t.join(60)


def test_queue_bytes_are_released() -> None:
    with Pool("qrel", 1, handlers=[H], queue_max_bytes=4 << 20, forward_stderr=False) as p:
        for _ in range(3):  # far more than 4 MiB in all, never more than that queued
            _hammer(p, "echo", (b"q" * (256 << 10),), threads=8, per_thread=5)
        assert p.stats()["queue_bytes"] == 0


def test_closing_with_a_full_queue_resets_its_bytes(tmp_path: Path) -> None:
    p = Pool("qclose", 1, handlers=[HANDLERS, H], forward_stderr=False)
    with p:
        running = tmp_path / "running"
        bg(p.call, "wait_file", str(running), str(tmp_path / "never"), 60.0)
        wait_for(running.exists, 30, "the worker to be busy")
        queued = [bg(p.call, "echo", b"a" * 1000, timeout=60) for _ in range(5)]
        wait_for(lambda: p.stats()["queue_depth"] == 5, 30, "five queued calls")
    for t, out in queued:
        t.join(30)
        assert isinstance(out.get("error"), PoolClosed)
    assert p.stats()["queue_bytes"] == 0
