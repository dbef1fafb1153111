"""Pipelines with worker steps on a real pool (dspex.testing.handlers): concurrency with
native steps, fail-fast cancellation of worker calls, crashes, sessions, retries,
timeouts, progress events, trace contents."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dspex.errors import RemoteError, StepFailed, StepTimeout, WorkerCrashed
from dspex.pipeline import (
    Pipeline,
    StepProgress,
    current_step,
    native,
    parallel,
    pipeline,
    worker,
)
from dspex.pool import Pool

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    with Pool("tp", 3, handlers=["dspex.testing.handlers"], cancel_grace_s=2.0) as p:
        yield p


def _wait_idle(pool: Pool, timeout: float = 10.0) -> dict[str, Any]:
    """Poll until no call is in flight (bounded); return the stats then."""
    deadline = time.monotonic() + timeout
    while True:
        stats = pool.stats()
        if stats["in_flight"] == 0 and stats["queue_depth"] == 0:
            return stats
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def test_parallel_native_and_worker_steps_run_concurrently(pool: Pool) -> None:
    def nap(x: int) -> float:
        time.sleep(0.3)
        return 0.3

    p = Pipeline(
        [
            parallel(
                [
                    native(nap, writes="a"),
                    worker(handler="sleep", pool="tp", params={"seconds": 0.3}, writes="b", name="w1"),
                    worker(handler="sleep", pool="tp", params={"seconds": 0.3}, writes="c", name="w2"),
                ],
                name="group",
            )
        ],
        pools={"tp": pool},
    )
    r = p.run(x=1)
    assert (r["a"], r["b"], r["c"]) == (0.3, 0.3, 0.3)
    steps = [r.trace.step(n) for n in ("nap", "w1", "w2")]
    total = r.trace.step("group").duration_s
    assert total < sum(s.duration_s for s in steps) * 0.8
    assert steps[1].where == "tp" and steps[1].pid in pool.workers()
    assert steps[0].where == "native" and steps[0].pid is None


def test_fail_fast_cancels_worker_and_native_siblings(pool: Pool) -> None:
    cancelled_before = pool.stats()["cancelled"]
    seen = {"native_cancelled": False}

    def long_native(x: int) -> int:
        if current_step().wait_cancelled(30):
            seen["native_cancelled"] = True
        return x

    def boom(x: int) -> int:
        time.sleep(0.2)  # the worker call is running by now
        raise RuntimeError("boom")

    p = Pipeline(
        [
            parallel(
                [
                    worker(handler="sleep", pool="tp", params={"seconds": 30}, writes="w", name="long_worker"),
                    native(long_native, writes="n"),
                    native(boom, writes="b"),
                ]
            )
        ],
        pools={"tp": pool},
    )
    with pytest.raises(StepFailed) as info:
        p.run(x=1)
    assert info.value.step == "boom"
    assert seen["native_cancelled"]
    trace = info.value.trace  # type: ignore[attr-defined]
    assert trace.step("long_worker").status == "cancelled"
    stats = _wait_idle(pool)
    assert stats["in_flight"] == 0  # the worker is free again
    assert stats["cancelled"] == cancelled_before + 1
    assert pool.call("echo", 5, timeout=10) == 5


def test_worker_crash_surfaces_and_next_run_succeeds(pool: Pool) -> None:
    crashing = Pipeline([worker(handler="crash", pool="tp", reads=["code"], writes="never")], pools={"tp": pool})
    with pytest.raises(StepFailed) as info:
        crashing.run(code=3)
    assert isinstance(info.value.cause, WorkerCrashed)
    assert info.value.step == "crash" and info.value.retryable
    ok = Pipeline([worker(handler="echo", pool="tp", reads=["x"], writes="y")], pools={"tp": pool})
    assert ok.run(x=42)["y"] == {"args": [], "kwargs": {"x": 42}}  # echo of keyword arguments


def test_kill_9_of_the_worker_mid_run(pool: Pool, tmp_path: Path) -> None:
    marker = tmp_path / "running"

    def killer(x: int) -> int:
        # Kill -9 the worker once the call runs there: a call the worker never read would be
        # re-dispatched (pool finding 12), so wait for the handler's own marker file.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = marker.read_text() if marker.exists() else ""
            if text:
                pid = int(text)
                os.kill(pid, signal.SIGKILL)
                return pid
            time.sleep(0.01)
        raise AssertionError("the victim call never started")

    p = Pipeline(
        [
            parallel(
                [
                    worker(handler="sleep", pool="tp", params={"seconds": 20, "marker": str(marker)}, writes="w",
                           name="victim"),
                    native(killer, writes="killed"),
                ]
            )
        ],
        pools={"tp": pool},
    )
    with pytest.raises(StepFailed) as info:
        p.run(x=1)
    assert info.value.step == "victim" and isinstance(info.value.cause, WorkerCrashed)
    ok = Pipeline([worker(handler="echo", pool="tp", reads=["x"], writes="y")], pools={"tp": pool})
    assert ok.run(x=7)["y"]["kwargs"] == {"x": 7}


def test_one_session_per_run_shared_by_its_worker_steps_and_dropped(pool: Pool) -> None:
    p = Pipeline(
        [
            worker(handler="state_set", pool="tp", params={"key": "k"}, reads=["value"], writes="set"),
            worker(handler="state_get", pool="tp", params={"key": "k"}, writes="got"),
        ],
        pools={"tp": pool},
    )
    r = p.run(value="v1")
    assert r["got"] == "v1"  # the second step found the first one's worker-side state
    assert r.trace.step("state_get").pid == r.trace.step("state_set").pid
    fresh = Pipeline([worker(handler="state_get", pool="tp", params={"key": "k"}, writes="got")],
                     pools={"tp": pool}).run()
    assert fresh["got"] is None  # a new run, a new session
    assert pool.stats()["sessions"] == 0  # run sessions are dropped at the end
    # an explicit session is kept, so state lives across runs
    p.run(value="v2", session="keep-me")
    again = Pipeline([worker(handler="state_get", pool="tp", params={"key": "k"}, writes="got")],
                     pools={"tp": pool}).run(session="keep-me")
    assert again["got"] == "v2"
    pool.drop_session("keep-me")


def test_retries_on_retryable_worker_errors_only(pool: Pool) -> None:
    crash = Pipeline([worker(handler="crash", pool="tp", writes="x", retries=1, backoff=0.01)],
                     pools={"tp": pool})
    with pytest.raises(StepFailed) as info:
        crash.run()
    assert info.value.trace.step("crash").attempts == 2  # type: ignore[attr-defined]
    fail = Pipeline([worker(handler="fail", pool="tp", params={"message": "no"}, writes="x", retries=3)],
                    pools={"tp": pool})
    with pytest.raises(StepFailed) as info2:
        fail.run()
    assert isinstance(info2.value.cause, RemoteError) and not info2.value.retryable
    assert info2.value.trace.step("fail").attempts == 1  # type: ignore[attr-defined]


def test_worker_step_timeout_frees_the_worker(pool: Pool) -> None:
    p = Pipeline([worker(handler="sleep", pool="tp", params={"seconds": 30}, writes="x", timeout=0.3)],
                 pools={"tp": pool})
    with pytest.raises(StepFailed) as info:
        p.run()
    assert isinstance(info.value.cause, StepTimeout)
    assert _wait_idle(pool)["in_flight"] == 0


def test_worker_fallback_to_native(pool: Pool) -> None:
    def backup() -> str:
        return "native answer"

    p = Pipeline(
        [worker(handler="fail", pool="tp", writes="answer", fallback=native(backup, writes="answer"))],
        pools={"tp": pool},
    )
    r = p.run()
    assert r["answer"] == "native answer"
    assert r.trace.step("fail").status == "fallback"


def test_progress_events_are_forwarded(pool: Pool) -> None:
    p = Pipeline([worker(handler="progress", pool="tp", reads=["n"], writes="done")], pools={"tp": pool})
    events = list(p.stream(n=3))
    progress = [e for e in events if isinstance(e, StepProgress)]
    assert len(progress) == 3 and all(e.step == "progress" for e in progress)
    names = [type(e).__name__ for e in events]
    assert names.index("StepStarted") < names.index("StepProgress") < names.index("StepFinished")


def test_reads_mapping_and_validation_against_a_started_pool(pool: Pool) -> None:
    p = pipeline([worker(handler="echo", pool="tp", reads={"x": "question"}, writes="answer")],
                 pools={"tp": pool})
    assert p.run(question="hi")["answer"] == {"args": [], "kwargs": {"x": "hi"}}
    bad = pipeline([worker(handler="nope", pool="tp", writes="y")], pools={"tp": pool})
    with pytest.raises(Exception, match="handler 'nope', which pool 'tp' does not have"):
        bad.run()


def test_batch_with_worker_steps(pool: Pool) -> None:
    p = Pipeline([worker(handler="echo", pool="tp", reads=["x"], writes="y")], pools={"tp": pool})
    results = p.batch([{"x": i} for i in range(8)], concurrency=4)
    assert [r["y"]["kwargs"]["x"] for r in results] == list(range(8))
    assert len({r.trace.session for r in results}) == 8
