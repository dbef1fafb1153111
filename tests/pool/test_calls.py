"""Calls, results, errors, streaming, events, callbacks, sessions, stats on a real pool."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from dspex.errors import HandlerNotFound, PoolClosed, ProtocolError, RemoteError
from dspex.pool import CallResult, Context, Pool, handler

from .util import H, wait_for

pytestmark = pytest.mark.timeout(60)


def test_echo_and_detailed(pool: Pool) -> None:
    assert pool.call("echo", 42) == 42
    assert pool.call("echo", 1, 2, k="v") == {"args": [1, 2], "kwargs": {"k": "v"}}
    res = pool.call_detailed("pid")
    assert isinstance(res, CallResult)
    assert res.value == res.pid and res.pid in pool.workers()
    assert res.elapsed_s > 0
    assert pool.call_with("echo", args=(5,)) == 5
    # option names reach the handler through call_with
    assert pool.call_with("echo", kwargs={"timeout": 3}) == {"args": [], "kwargs": {"timeout": 3}}


def test_handler_raising_gives_remote_error_with_traceback(pool: Pool) -> None:
    with pytest.raises(RemoteError) as ei:
        pool.call("fail", "bad value", type="ValueError")
    err = ei.value
    assert err.remote_type == "ValueError"
    assert err.remote_message == "bad value"
    assert "Traceback" in err.remote_traceback and "in fail" in err.remote_traceback


def test_unknown_handler(pool: Pool) -> None:
    with pytest.raises(HandlerNotFound, match="nope"):
        pool.call("nope")


def test_unsendable_argument_is_a_clear_type_error(pool: Pool) -> None:
    with pytest.raises(TypeError, match="allow_pickle"):
        pool.call("echo", object())


def test_generator_call_collects_and_stream_yields(pool: Pool) -> None:
    assert pool.call("count", 4) == [0, 1, 2, 3]
    assert list(pool.stream("count", 4)) == [0, 1, 2, 3]
    assert list(pool.stream("echo", "one")) == ["one"]  # a plain handler streams its result
    assert pool.call("acount", 3) == [0, 1, 2]


def test_stream_chunks_arrive_while_the_handler_runs(pool: Pool) -> None:
    it = pool.stream("count", 3, delay=0.2)
    assert next(it) == 0
    assert pool.stats()["in_flight"] >= 1  # the generator has not finished yet
    assert list(it) == [1, 2]


def test_stream_closed_early_cancels(pool: Pool) -> None:
    it = pool.stream("count", 10_000, delay=0.01)
    assert next(it) == 0
    it.close()
    wait_for(lambda: pool.stats()["in_flight"] == 0, what="the cancelled stream to stop")


async def test_astream_and_acall(pool: Pool) -> None:
    assert await pool.acall("echo", "a") == "a"
    chunks = [c async for c in pool.astream("acount", 3)]
    assert chunks == [0, 1, 2]
    assert [c async for c in pool.astream("count", 2)] == [0, 1]
    res = await pool.acall_detailed("pid")
    assert res.value == res.pid


async def test_async_handlers_run_concurrently_in_one_worker() -> None:
    async with Pool("conc", 1, handlers=[H], forward_stderr=False) as p:
        pids = await asyncio.gather(*(p.acall("rendezvous", "k", 5) for _ in range(5)))
        assert len(set(pids)) == 1  # all five were inside one worker at once


def test_progress_events(pool: Pool) -> None:
    events: list[dict[str, int]] = []
    assert pool.call("progress", 3, on_event=events.append) == 3
    assert events == [{"step": 0, "of": 3}, {"step": 1, "of": 3}, {"step": 2, "of": 3}]


async def test_progress_events_async(pool: Pool) -> None:
    events: list[dict[str, int]] = []
    assert await pool.acall("progress", 2, on_event=events.append) == 2
    await asyncio.sleep(0)
    assert [e["step"] for e in events] == [0, 1]


def test_callbacks_result_and_exception(pool: Pool) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    def boom() -> None:
        raise ValueError("host says no")

    assert pool.call("call_host", "add", 2, 3, callbacks={"add": add}) == 5
    out = pool.call("call_host_safe", "boom", callbacks={"boom": boom})
    assert out[0] == "error" and out[1] == "ValueError" and out[2] == "host says no"
    assert "in boom" in out[3]  # the host traceback travels too
    # an uncaught callback error surfaces as a RemoteError of the call
    with pytest.raises(RemoteError, match="host says no"):
        pool.call("call_host", "boom", callbacks={"boom": boom})
    # unknown callback name
    out = pool.call("call_host_safe", "missing")
    assert out[1] == "LookupError"


async def test_async_callbacks() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async with Pool("acb", 1, handlers=[H], callbacks={"double": double}, forward_stderr=False) as p:
        assert await p.acall("acall_host", "double", 21) == 42
        assert await p.acall("call_host", "double", 4) == 8


def test_slow_callback_does_not_block_other_calls(pool: Pool) -> None:
    release = threading.Event()
    out: list[object] = []

    def slow() -> str:
        release.wait(10)
        return "slow done"

    t = threading.Thread(target=lambda: out.append(pool.call("call_host", "slow", callbacks={"slow": slow})))
    t.start()
    wait_for(lambda: pool.stats()["in_flight"] >= 1, what="the slow call")
    for i in range(20):
        assert pool.call("echo", i) == i  # served while the callback is still blocked
    assert t.is_alive()
    release.set()
    t.join(10)
    assert out == ["slow done"]


def test_sessions_keep_state_on_their_worker(pool: Pool) -> None:
    with pool.session() as s:
        pool.call("state_set", "k", [1, 2], session=s)
        pids = {pool.call_detailed("pid", session=s).pid for _ in range(10)}
        assert len(pids) == 1
        assert pool.call("state_get", "k", session=s) == [1, 2]
        assert pool.stats()["sessions"] >= 1
    # dropped: the worker forgot it
    assert pool.call("state_get", "k", session=s) is None
    pool.drop_session(s)


def test_stats_contents(pool: Pool) -> None:
    for i in range(10):
        pool.call("echo", i)
    st = pool.stats()
    for key in (
        "queue_depth",
        "in_flight",
        "calls",
        "errors",
        "restarts",
        "recycles",
        "latency_s",
        "workers",
        "timeouts",
        "crashes",
    ):
        assert key in st
    assert st["calls"] >= 10
    lat = st["latency_s"]
    assert lat["count"] >= 10 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert len(st["workers"]) == 2
    for w in st["workers"]:
        assert w["pid"] > 0 and w["rss_mb"] > 0 and w["age_s"] >= 0 and w["requests"] >= 0
    assert st["template"]["mode"] == "fork"
    assert "echo" in st["handlers"]


def test_frame_size_limits() -> None:
    with Pool("small", 1, handlers=[H], max_frame=4096, forward_stderr=False) as p:
        with pytest.raises(ProtocolError, match="max_frame"):
            p.call("echo", b"x" * 10_000)
        pid = p.call("pid")
        with pytest.raises(ProtocolError):
            p.call("blob", 10_000)  # the worker's reply is too big: refused, worker kept
        assert p.call("pid") == pid
        assert p.call("blob", 100) == b"x" * 100


def test_allow_pickle_opt_in() -> None:
    import datetime as dt

    value = dt.datetime(2024, 1, 2, 3, 4, 5)
    with Pool("pickle", 1, handlers=[H], allow_pickle=True, forward_stderr=False) as p:
        assert p.call("echo", value) == value


def test_spawn_start_method() -> None:
    with Pool("spawn", 1, handlers=[H], start_method="spawn", forward_stderr=False) as p:
        assert p.call("echo", 7) == 7
        assert p.stats()["template"]["mode"] == "spawn"


async def test_async_context_manager_and_closed_pool() -> None:
    async with Pool("actx", 1, handlers=[H], forward_stderr=False) as p:
        assert await p.acall("echo", 1) == 1
        pids = p.workers()
    with pytest.raises(PoolClosed):
        await p.acall("echo", 1)
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}/cmdline") or not _alive(pid), what="exit")


def _alive(pid: int) -> bool:
    from .util import alive

    return alive(pid)


def test_lazy_start_on_first_call() -> None:
    p = Pool("lazy", 1, handlers=[H], forward_stderr=False)
    try:
        assert p.workers() == []
        assert p.call("echo", 3) == 3
        assert len(p.workers()) == 1
    finally:
        p.close()


def test_handler_decorator_forms_and_local_context() -> None:
    @handler("t.add")
    def add(ctx: Context, a: int, b: int) -> int:
        return a + b + len(ctx.state)

    @handler(concurrent=True)
    async def t_async(ctx: Context) -> str:
        return await ctx.acallback("hi")

    ctx = Context.local(callbacks={"hi": lambda: "hello"})
    assert add(ctx, 1, 2) == 3
    assert asyncio.run(t_async(ctx)) == "hello"
    assert add.__dspex_handler__.kind == "sync"  # type: ignore[attr-defined]
    assert t_async.__dspex_handler__.concurrent  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="already registered"):

        @handler("t.add")
        def other(ctx: Context) -> None: ...


def test_many_threads_many_calls(pool: Pool) -> None:
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for i in range(300):
                assert pool.call("echo", (k, i)) == (k, i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    time.sleep(0)


def test_large_frames_round_trip(pool: Pool) -> None:
    big = b"\x01" * (20 * 1024 * 1024)  # larger than the socket buffers: partial writes
    assert pool.call("echo", big) == big
    out: list[bytes] = []
    threads = [threading.Thread(target=lambda: out.append(pool.call("echo", big))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out == [big] * 3


async def test_large_frames_async(pool: Pool) -> None:
    big = {"k": "x" * (5 * 1024 * 1024), "n": list(range(1000))}
    results = await asyncio.gather(*(pool.acall("echo", big) for _ in range(3)))
    assert results == [big] * 3


def test_missing_interpreter_is_a_start_error() -> None:
    from dspex.errors import WorkerStartError

    p = Pool("nopython", 1, handlers=[H], python="/nonexistent/python3", forward_stderr=False)
    try:
        with pytest.raises(WorkerStartError, match="python"):
            p.start()
    finally:
        p.close()


def test_stream_flow_control_bounds_a_slow_consumer() -> None:
    from dspex.pool.protocol import STREAM_WINDOW

    with Pool("flow", 1, handlers=[H], forward_stderr=False) as p:
        it = p.stream("tick", 1000, "k")
        assert next(it) == 0
        time.sleep(0.5)  # give an unbounded producer every chance to run ahead
        ahead = p.call("produced", "k")
        assert ahead <= STREAM_WINDOW + 2, ahead
        assert list(it) == list(range(1, 1000))
        assert p.call("produced", "k") == 1000


async def test_async_stream_flow_control() -> None:
    async with Pool("aflow", 1, handlers=[H], forward_stderr=False) as p:
        got = [c async for c in p.astream("acount", 500)]
        assert got == list(range(500))
        got = [c async for c in p.astream("tick", 300, "a")]
        assert got == list(range(300))
        got = [c async for c in p.astream("tcount", 300)]
        assert got == list(range(300))
        assert list(p.stream("tcount", 200)) == list(range(200))
