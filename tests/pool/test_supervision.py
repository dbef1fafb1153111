"""Supervision with real processes and real signals: crashes, hangs, start failures,
orphans, overload, cancellation, recycling, bad frames, session affinity."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dspex.errors import (
    CallTimeout,
    PoolClosed,
    PoolOverloaded,
    ProtocolError,
    SessionLost,
    WorkerCrashed,
    WorkerStartError,
)
from dspex.pool import Pool

from .util import H, alive, busy_pid, full_size, wait_for
from .util import bg as _bg

pytestmark = pytest.mark.timeout(60)


def test_kill9_busy_worker_fails_only_its_call_and_queued_calls_complete(tmp_path: Path) -> None:
    fault_handlers = str(Path(__file__).with_name("_fault_handlers.py"))
    with Pool("crash", 1, handlers=[H, fault_handlers], forward_stderr=False) as p:
        assert p.call("echo", 0) == 0
        marker = tmp_path / "running"
        t, out = _bg(p.call, "wait_file", str(marker), str(tmp_path / "never"), 60.0)
        # running, not only sent: a call the worker never read would be re-dispatched
        wait_for(marker.exists, what="the call to run")
        pid = int(marker.read_text())
        queued = [_bg(p.call, "echo", i) for i in range(5)]
        wait_for(lambda: p.stats()["queue_depth"] == 5, what="5 queued calls")
        os.kill(pid, signal.SIGKILL)
        t.join(20)
        assert not t.is_alive()  # it did not wait for the 30 s sleep
        err = out["error"]
        assert isinstance(err, WorkerCrashed)
        assert err.pid == pid and err.signal == signal.SIGKILL
        for i, (qt, qout) in enumerate(queued):
            qt.join(20)
            assert qout == {"value": i}
        wait_for(lambda: full_size(p), what="the pool back to size")
        assert pid not in p.workers() and not alive(pid)
        st = p.stats()
        assert st["crashes"] == 1 and st["restarts"] == 1


def test_crash_exit_code_reported() -> None:
    with Pool("exitcode", 2, handlers=[H], forward_stderr=False) as p:
        with pytest.raises(WorkerCrashed) as ei:
            p.call("crash", code=3)
        assert ei.value.exitcode == 3
        wait_for(lambda: full_size(p), what="the pool back to size")
        assert p.call("echo", 1) == 1


def test_pipelined_calls_behind_a_crash_are_requeued() -> None:
    with Pool("pipe", 1, handlers=[H], forward_stderr=False) as p:
        for i in range(5):
            p.call("echo", i)  # echo is now known to be short: it may be pipelined
        results: list[Any] = []
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                results.append(p.call("echo", i))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        pid = p.workers()[0]
        os.kill(pid, signal.SIGKILL)
        for t in threads:
            t.join(20)
        # at most the one running call failed; everything pipelined behind it ran again
        assert len(errors) <= 1 and all(isinstance(e, WorkerCrashed) for e in errors)
        assert len(results) + len(errors) == 200


def test_hung_handler_times_out_and_worker_is_replaced() -> None:
    with Pool("hang", 1, handlers=[H], forward_stderr=False) as p:
        pid = p.call("pid")
        t0 = time.monotonic()
        with pytest.raises(CallTimeout) as ei:
            p.call("hang", timeout=0.5)
        assert time.monotonic() - t0 < 30  # not the handler's hour
        assert ei.value.pid == pid
        wait_for(lambda: not alive(pid), what="the hung worker to die")
        new = p.call("pid")
        assert new != pid
        assert p.stats()["timeouts"] == 1


def test_call_timeout_default_from_pool() -> None:
    with Pool("hang2", 1, handlers=[H], call_timeout_s=0.3, forward_stderr=False) as p:
        with pytest.raises(CallTimeout):
            p.call("hang")
        assert p.call("echo", 2) == 2


def test_import_failure_gives_start_error_and_backs_off(tmp_path: Path) -> None:
    bad = tmp_path / "bad_handlers.py"
    bad.write_text("raise RuntimeError('boom at import time')\n")
    p = Pool("bad", 2, handlers=[str(bad)], backoff_base_s=0.5, forward_stderr=False)
    try:
        with pytest.raises(WorkerStartError) as ei:
            p.start()
        assert "boom at import time" in ei.value.stderr_tail
        assert "RuntimeError" in str(ei.value)
        with pytest.raises(WorkerStartError):
            p.call("echo", 1)  # fails fast while nothing can start
        time.sleep(2.0)
        attempts = p.stats()["start_attempts"]
        # backoff 0.5, 1, 2 s: a handful of attempts, not a storm
        assert 2 <= attempts <= 4, attempts
    finally:
        p.close()


_HOST_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from dspex.pool import Pool
    p = Pool("orphans", 2, handlers=["dspex.testing.handlers"]).start()
    p.call("echo", 1)
    print(json.dumps({"workers": p.workers(), "template": p.stats()["template"]["pid"]}), flush=True)
    time.sleep(60)
    """
)


def test_no_orphans_after_host_sigkill() -> None:
    host = subprocess.Popen([sys.executable, "-c", _HOST_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        info = json.loads(line)
        pids = [*info["workers"], info["template"]]
        assert len(pids) == 3 and all(alive(pid) for pid in pids)
        os.kill(host.pid, signal.SIGKILL)
        host.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in pids), timeout=2.0, what="workers to die with the host")
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(5)


def test_overload_rejects_at_once() -> None:
    with Pool("over", 1, handlers=[H], queue_limit=2, forward_stderr=False) as p:
        t, out = _bg(p.call, "sleep", 30)
        busy_pid(p)
        q1 = _bg(p.call, "echo", 1)
        q2 = _bg(p.call, "echo", 2)
        wait_for(lambda: p.stats()["queue_depth"] == 2, what="a full queue")
        with pytest.raises(PoolOverloaded):
            p.call("echo", 3)
        assert p.stats()["overloaded"] == 1
    for th, res in (q1, q2, (t, out)):
        th.join(10)
        assert isinstance(res.get("error"), PoolClosed)


async def test_asyncio_cancellation_queued_and_running() -> None:
    async with Pool("cancel", 1, handlers=[H], forward_stderr=False) as p:
        pid = await p.acall("pid")
        running = asyncio.ensure_future(p.acall("sleep", 30))
        await asyncio.sleep(0)
        while not p.stats()["in_flight"]:
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(p.acall("echo", 1))
        while not p.stats()["queue_depth"]:
            await asyncio.sleep(0.01)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert p.stats()["queue_depth"] == 0  # removed from the queue
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        # the sync handler saw ctx.cancelled and stopped: same worker, free again
        assert await p.acall("pid", timeout=20) == pid
        async_task = asyncio.ensure_future(p.acall("asleep", 30))
        while not p.stats()["in_flight"]:
            await asyncio.sleep(0.01)
        async_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await async_task
        while p.stats()["in_flight"]:
            await asyncio.sleep(0.01)
        assert await p.acall("pid") == pid  # the worker's task was cancelled, not the worker
        assert p.stats()["cancelled"] == 3


def test_keyboard_interrupt_cancels_running_call() -> None:
    with Pool("kbd", 1, handlers=[H], forward_stderr=False) as p:
        pid = p.call("pid")
        main = threading.get_ident()

        def interrupt() -> None:
            busy_pid(p)
            signal.pthread_kill(main, signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            p.call("sleep", 30)
        wait_for(lambda: p.stats()["in_flight"] == 0, what="the cancelled call to stop")
        assert p.call("pid") == pid


def test_ignored_cancellation_kills_the_worker(tmp_path: Path) -> None:
    fault_handlers = str(Path(__file__).with_name("_fault_handlers.py"))
    with Pool("ign", 1, handlers=[H, fault_handlers], cancel_grace_s=0.3, forward_stderr=False) as p:
        pid = p.call("pid")
        marker = tmp_path / "running"

        async def go() -> None:
            # a handler that ignores ctx.cancelled; cancel once it runs (a call cancelled
            # before the worker read it is answered "cancelled" without a kill)
            task = asyncio.ensure_future(p.acall("wait_file", str(marker), str(tmp_path / "never"), 30.0))
            while not marker.exists():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(go())
        wait_for(lambda: not alive(pid), what="the worker that ignored cancellation to be killed")
        assert p.call("pid") != pid


def test_recycling_under_load_loses_no_call() -> None:
    with Pool("recycle", 2, handlers=[H], max_requests=50, forward_stderr=False) as p:
        errors: list[BaseException] = []
        seen: set[int] = set()

        def run(k: int) -> None:
            for i in range(150):
                try:
                    r = p.call_detailed("echo", [k, i])
                    assert r.value == [k, i]
                    seen.add(r.pid)
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
        assert errors == []
        st = p.stats()
        # a retiring worker serves until its replacement is ready, so it may pass
        # max_requests a little: count a handful of recycles, not exactly 1200 / 50
        assert st["recycles"] >= 4 and st["crashes"] == 0 and st["errors"] == 0
        assert len(seen) >= 4
        wait_for(lambda: full_size(p), what="the pool back to size")


def test_recycling_by_rss_and_age() -> None:
    with Pool("rss", 1, handlers=[H], max_rss_mb=200, forward_stderr=False) as p:
        pid = p.call("pid")
        assert p.call("leak", 250) >= 200
        wait_for(lambda: p.workers() and pid not in p.workers(), what="recycling by RSS")
        assert p.stats()["recycles"] == 1
        assert p.call("rss") < 200
    with Pool("age", 1, handlers=[H], max_age_s=0.3, forward_stderr=False) as p:
        pid = p.call("pid")
        wait_for(lambda: p.workers() and pid not in p.workers(), what="recycling by age")
        assert p.call("echo", 1) == 1


@pytest.mark.parametrize("kind", ["garbage", "oversized", "notalist"])
def test_bad_frames_from_a_worker(kind: str) -> None:
    with Pool("frames", 1, handlers=[H], forward_stderr=False) as p:
        pid = p.call("pid")
        with pytest.raises(ProtocolError):
            p.call("bad_frame", kind)
        wait_for(lambda: not alive(pid), what="the bad worker to be killed")
        assert p.call("echo", "still here") == "still here"
        assert p.stats()["protocol_errors"] == 1


@pytest.mark.parametrize("affinity", ["strict", "hint"])
def test_session_when_its_worker_dies(affinity: str) -> None:
    with Pool("aff", 2, handlers=[H], affinity=affinity, forward_stderr=False) as p:
        p.call("state_set", "k", "v", session="s")
        pid = p.call_detailed("pid", session="s").pid
        assert all(p.call_detailed("pid", session="s").pid == pid for _ in range(5))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: full_size(p) and pid not in p.workers(), what="replacement")
        if affinity == "strict":
            with pytest.raises(SessionLost):
                p.call("state_get", "k", session="s")
            p.drop_session("s")
            assert p.call("state_get", "k", session="s") is None  # a fresh session
        else:
            res = p.call_detailed("state_get", "k", session="s")
            assert res.value is None and res.pid != pid  # spilled transparently, state gone
            assert all(p.call_detailed("pid", session="s").pid == res.pid for _ in range(5))


def test_strict_session_waits_for_its_worker() -> None:
    with Pool("strictwait", 2, handlers=[H], affinity="strict", forward_stderr=False) as p:
        pid = p.call_detailed("pid", session="a").pid
        t, out = _bg(p.call, "sleep", 0.5, session="a")
        busy_pid(p)
        # the other worker is idle, but a strict call waits for its own
        assert p.call_detailed("pid", session="a").pid == pid
        t.join(10)
        assert out == {"value": 0.5}


def test_session_store_is_bounded() -> None:
    with Pool("cap", 1, handlers=[H], max_sessions=5, forward_stderr=False) as p:
        for i in range(20):
            p.call("state_set", "k", i, session=f"s{i}")
        assert p.stats()["sessions"] == 5
        assert p.call("state_get", "k", session="s19") == 19
        # evicted sessions were dropped in the worker too
        assert p.call("state_get", "k", session="s0") is None


def test_start_timeout(tmp_path: Path) -> None:
    slow = tmp_path / "slow_handlers.py"
    slow.write_text("import sys, time\nprint('importing slowly', file=sys.stderr, flush=True)\ntime.sleep(60)\n")
    # 5 s leaves a loaded machine time to start the template and print; the import sleeps 60 s
    p = Pool("slow", 1, handlers=[str(slow)], start_timeout_s=5.0, backoff_base_s=5.0, forward_stderr=False)
    try:
        t0 = time.monotonic()
        with pytest.raises(WorkerStartError) as ei:
            p.start()
        assert time.monotonic() - t0 < 55  # gave up at its deadline, did not wait for the import
        assert "importing slowly" in ei.value.stderr_tail
    finally:
        p.close()
