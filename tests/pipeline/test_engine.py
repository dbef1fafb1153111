"""The pipeline engine with native steps only: data flow, groups, retries, timeouts,
fallback, cache, events, batch, cancellation of native steps."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import dspex
from dspex.errors import PipelineError, StepFailed, StepTimeout
from dspex.pipeline import (
    Pipeline,
    RunFinished,
    RunStarted,
    StepFailedEvent,
    StepFinished,
    StepProgress,
    StepRetrying,
    StepStarted,
    branch,
    current_step,
    fan_out,
    native,
    parallel,
    pipeline,
)

pytestmark = pytest.mark.timeout(60)


class Flaky(dspex.LMTransportError):
    """A retryable error (LMTransportError.retryable is True)."""


def test_public_names_from_dspex() -> None:
    import dspex.pipeline as pipeline_pkg  # binds the name dspex.pipeline, i.e. the function pipeline()
    from dspex.pipeline import branch, fan_out, parallel, pipeline, worker

    step = dspex.native(lambda x: x, name="ident", reads="x", writes="y")
    p = dspex.Pipeline([step])
    assert p.run(x=1)["y"] == 1
    assert dspex.pipeline is pipeline is pipeline_pkg and dspex.pipeline([step]).run(x=2)["y"] == 2
    assert dspex.worker is worker
    assert dspex.parallel is parallel
    assert dspex.branch is branch
    assert dspex.fan_out is fan_out


def test_data_flows_and_reads_come_from_parameters() -> None:
    def double(x: int) -> int:
        return x * 2

    def both(x: int, doubled: int, bonus: int = 0) -> dict[str, int]:
        return {"total": x + doubled + bonus, "diff": doubled - x}

    p = pipeline([native(double, writes="doubled"), native(both, writes=["total", "diff"])])
    assert p.steps[0].reads == ("x",)
    r = p.run(x=5)
    assert (r["doubled"], r["total"], r["diff"]) == (10, 15, 5)
    assert r.total == 15  # attribute access
    assert p.run({"x": 1}, bonus=100)["total"] == 103  # optional parameter passed when present


def test_async_and_inline_callables() -> None:
    async def aplus(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    seen: list[int] = []

    def inline_fn(y: int) -> int:
        seen.append(threading.get_ident())
        return y * 3

    p = pipeline([native(aplus, writes="y"), native(inline_fn, writes="z", inline=True)])
    assert p.run(x=1)["z"] == 6
    assert len(seen) == 1


def test_parallel_results_keyed_by_name_not_finishing_order() -> None:
    def slow(x: int) -> int:
        time.sleep(0.15)
        return x + 1

    def fast(x: int) -> int:
        return x + 2

    p = pipeline(
        [parallel([native(slow, writes="a"), native(fast, writes="b")], into="results", name="both")]
    )
    r = p.run(x=1)
    assert list(r["results"]) == ["slow", "fast"]  # declaration order
    assert r["results"] == {"slow": {"a": 2}, "fast": {"b": 3}}
    # without into=, fields merge in declaration order
    r2 = pipeline([parallel([native(slow, writes="a"), native(fast, writes="b")])]).run(x=1)
    assert (r2["a"], r2["b"]) == (2, 3)


def test_parallel_native_steps_overlap() -> None:
    def nap(x: int) -> int:
        time.sleep(0.3)
        return x

    steps = [native(nap, name=f"n{i}", writes=f"o{i}") for i in range(3)]
    r = pipeline([parallel(steps)]).run(x=1)
    sum_steps = sum(r.trace.step(f"n{i}").duration_s for i in range(3))
    assert r.trace.step("parallel").duration_s < sum_steps * 0.8


def test_parallel_concurrency_limit() -> None:
    live = 0
    peak = 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        time.sleep(0.05)
        with lock:
            live -= 1
        return x

    steps = [native(work, name=f"w{i}", writes=f"o{i}") for i in range(6)]
    pipeline([parallel(steps, concurrency=2)]).run(x=0)
    assert peak == 2


def test_branch_by_field_and_callable() -> None:
    def yes(x: int) -> str:
        return "big"

    def no(x: int) -> str:
        return "small"

    by_field = pipeline([branch("flag", then=native(yes, writes="size"), otherwise=native(no, writes="size"))])
    assert by_field.run(x=1, flag=True)["size"] == "big"
    assert by_field.run(x=1, flag=0)["size"] == "small"
    assert by_field.run(x=1, flag=0).trace.step("branch").where == "otherwise"

    by_fn = pipeline(
        [branch(lambda d: d["x"] > 10, then=[native(yes, writes="size")], otherwise=native(no, writes="size"),
                reads="x")]
    )
    assert by_fn.run(x=11)["size"] == "big"
    assert by_fn.run(x=1)["size"] == "small"


def test_fan_out_bounded_and_ordered() -> None:
    live = 0
    peak = 0
    lock = threading.Lock()

    def square(n: int) -> int:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        time.sleep(0.03 * (5 - n % 5))  # later items finish first
        with lock:
            live -= 1
        return n * n

    p = pipeline([fan_out(native(square, writes="sq"), over="numbers", into="squares", concurrency=3)])
    r = p.run(numbers=list(range(10)))
    assert r["squares"] == [n * n for n in range(10)]
    assert peak == 3
    assert len([s for s in r.trace.steps if s.name.startswith("square[")]) == 10


def test_retries_only_retryable_errors_with_trace() -> None:
    calls = {"flaky": 0, "bad": 0}

    def flaky(x: int) -> int:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise Flaky("connection reset")
        return x

    def bad(x: int) -> int:
        calls["bad"] += 1
        raise ValueError("not retryable")

    events: list[Any] = []
    r = pipeline([native(flaky, writes="y", retries=3, backoff=0.001)]).run(x=7, on_event=events.append)
    assert r["y"] == 7 and calls["flaky"] == 3
    assert r.trace.step("flaky").retries == 2
    assert [e.attempt for e in events if isinstance(e, StepRetrying)] == [1, 2]

    with pytest.raises(StepFailed) as info:
        pipeline([native(bad, writes="y", retries=3, backoff=0.001)]).run(x=1)
    assert calls["bad"] == 1  # a ValueError is not retried
    assert info.value.step == "bad" and isinstance(info.value.cause, ValueError)
    assert info.value.trace.step("bad").status == "failed"  # type: ignore[attr-defined]

    calls["flaky"] = -10
    with pytest.raises(StepFailed) as info2:
        pipeline([native(flaky, writes="y", retries=2, backoff=0.001)]).run(x=1)
    assert isinstance(info2.value.cause, Flaky) and info2.value.retryable
    assert info2.value.trace.step("flaky").attempts == 3  # type: ignore[attr-defined]


def test_fallback_runs_on_failure() -> None:
    def primary(x: int) -> int:
        raise RuntimeError("down")

    def backup(x: int) -> int:
        return -x

    r = pipeline([native(primary, writes="y", fallback=native(backup, writes="y"))]).run(x=3)
    assert r["y"] == -3
    assert r.trace.step("primary").status == "fallback"
    assert r.trace.step("backup").fallback_of == "primary"


def test_timeout_is_retryable_and_cancels_async_step() -> None:
    finished = []

    async def hang(x: int) -> int:
        try:
            await asyncio.sleep(30)
        finally:
            finished.append(True)
        return x

    t0 = time.perf_counter()
    with pytest.raises(StepFailed) as info:
        pipeline([native(hang, writes="y", timeout=0.1, retries=1, backoff=0)]).run(x=1)
    assert isinstance(info.value.cause, StepTimeout)
    assert info.value.trace.step("hang").attempts == 2  # type: ignore[attr-defined]
    assert finished == [True, True]  # both attempts were cancelled, not left running
    assert time.perf_counter() - t0 < 30


def test_fail_fast_cancels_native_siblings() -> None:
    state = {"async_cancelled": False, "thread_saw_cancel": False, "thread_done": False}

    async def long_async(x: int) -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["async_cancelled"] = True
            raise
        return x

    def long_thread(x: int) -> int:
        ctx = current_step()
        try:
            if ctx.wait_cancelled(30):
                state["thread_saw_cancel"] = True
            return x
        finally:
            state["thread_done"] = True

    def boom(x: int) -> int:
        time.sleep(0.05)
        raise RuntimeError("boom")

    p = pipeline([parallel([native(long_async, writes="a"), native(long_thread, writes="b"),
                            native(boom, writes="c")])])
    with pytest.raises(StepFailed) as info:
        p.run(x=1)
    assert info.value.step == "boom"
    assert state == {"async_cancelled": True, "thread_saw_cancel": True, "thread_done": True}
    statuses = {s.name: s.status for s in info.value.trace.steps}  # type: ignore[attr-defined]
    assert statuses["long_async"] == "cancelled" and statuses["long_thread"] == "cancelled"


def test_collect_mode_runs_all_and_reports_all() -> None:
    done: list[str] = []

    def ok(x: int) -> int:
        time.sleep(0.05)
        done.append("ok")
        return x

    def bad1(x: int) -> int:
        raise ValueError("one")

    def bad2(x: int) -> int:
        raise KeyError("two")

    p = pipeline([parallel([native(ok, writes="a"), native(bad1, writes="b"), native(bad2, writes="c")],
                           on_error="collect", name="group")])
    with pytest.raises(StepFailed) as info:
        p.run(x=1)
    assert done == ["ok"]
    assert info.value.step == "group"
    assert isinstance(info.value.cause, ExceptionGroup)
    assert sorted(e.step for e in info.value.cause.exceptions) == ["bad1", "bad2"]  # type: ignore[attr-defined]


def test_cache_policy() -> None:
    calls = []

    def expensive(x: int) -> int:
        calls.append(x)
        return x * 10

    p = pipeline([native(expensive, writes="y", cache=2)])
    assert p.run(x=1)["y"] == 10
    r = p.run(x=1)
    assert r["y"] == 10 and calls == [1]
    assert r.trace.step("expensive").cached and r.trace.step("expensive").where == "cache"
    p.run(x=2)
    p.run(x=3)  # evicts x=1 (bounded: 2 entries)
    p.run(x=1)
    assert calls == [1, 2, 3, 1]


def test_stream_event_order() -> None:
    def first(x: int) -> int:
        current_step().progress(pct=50)
        return x + 1

    def second(y: int) -> int:
        return y + 1

    p = pipeline([native(first, writes="y"), parallel([native(second, writes="z")], name="grp")])
    events = list(p.stream(x=1))
    kinds = [(type(e).__name__, e.path) for e in events]
    assert kinds == [
        ("RunStarted", ""),
        ("StepStarted", "first"),
        ("StepProgress", "first"),
        ("StepFinished", "first"),
        ("StepStarted", "grp"),
        ("StepStarted", "grp/second"),
        ("StepFinished", "grp/second"),
        ("StepFinished", "grp"),
        ("RunFinished", ""),
    ]
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert events[-1].result is not None and events[-1].result["z"] == 3
    progress = [e for e in events if isinstance(e, StepProgress)]
    assert progress[0].data == {"pct": 50}
    assert [e.outputs for e in events if isinstance(e, StepFinished) and e.path == "first"] == [{"y": 2}]


def test_stream_failure_and_early_exit() -> None:
    def bad(x: int) -> int:
        raise RuntimeError("nope")

    p = pipeline([native(bad, writes="y")])
    seen: list[Any] = []
    with pytest.raises(StepFailed):
        for e in p.stream(x=1):
            seen.append(e)
    assert isinstance(seen[-1], StepFailedEvent) and isinstance(seen[1], StepStarted)

    ended = threading.Event()

    async def slow(x: int) -> int:
        try:
            await asyncio.sleep(30)
        finally:
            ended.set()
        return x

    gen = pipeline([native(slow, writes="y")]).stream(x=1)
    next(gen)  # RunStarted
    next(gen)  # StepStarted
    gen.close()  # leaving early cancels the run
    assert ended.is_set()


async def test_astream_and_arun() -> None:
    def inc(x: int) -> int:
        return x + 1

    p = pipeline([native(inc, writes="y")])
    assert (await p.arun(x=1))["y"] == 2
    names = [type(e).__name__ async for e in p.astream(x=1)]
    assert names == ["RunStarted", "StepStarted", "StepFinished", "RunFinished"]
    # run() from inside a running loop works too (on a helper thread)
    assert p.run(x=4)["y"] == 5


def test_batch_in_order_bounded_and_failures() -> None:
    def slow_inc(x: int) -> int:
        time.sleep(0.02 * (5 - x))
        return x + 1

    p = pipeline([native(slow_inc, writes="y")])
    results = p.batch([{"x": i} for i in range(5)], concurrency=3)
    assert [r["y"] for r in results] == [1, 2, 3, 4, 5]
    assert len({r.trace.session for r in results}) == 5  # one session per run

    def maybe(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    q = pipeline([native(maybe, writes="y")])
    out = q.batch([{"x": i} for i in range(4)], return_exceptions=True)
    assert isinstance(out[2], StepFailed) and [o["y"] for i, o in enumerate(out) if i != 2] == [0, 1, 3]
    with pytest.raises(StepFailed):
        q.batch([{"x": i} for i in range(4)])
    with pytest.raises(PipelineError):
        q.batch([{"x": 1}, {"nope": 2}])  # every input is checked before anything runs


def test_run_from_threads() -> None:
    def inc(x: int) -> int:
        return x + 1

    p = pipeline([native(inc, writes="y")])
    out: dict[int, int] = {}

    def go(i: int) -> None:
        out[i] = p.run(x=i)["y"]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert out == {i: i + 1 for i in range(4)}


def test_explicit_session_is_kept_and_shared() -> None:
    def who(x: int) -> str:
        return current_step().session

    p = Pipeline([native(who, writes="s")])
    a, b = p.run(x=1), p.run(x=1)
    assert a["s"] != b["s"] and a["s"] == a.trace.session
    assert p.run(x=1, session="mine")["s"] == "mine"


def test_usage_of_native_lm_steps() -> None:
    from dspex.testing import DummyLM

    lm = DummyLM()
    p = pipeline([native("question -> answer"), native(dspex.Predict("answer -> summary"))], lm=lm)
    with dspex.context() as usage:
        r = p.run(question="q?")
    assert r["summary"]
    st = r.trace.step("answer")
    assert st.usage["calls"] == 1 and st.usage["prompt_tokens"] > 0
    assert r.trace.usage["calls"] == 2
    assert usage.calls == 2  # the caller's context sees the pipeline's LM usage
