"""RayPool on a simulated 3-node cluster: the local pool's call semantics, over Ray.

Same handlers (dspex.testing.handlers), same results and error types as the local
pool; calls spread over nodes; crashes, timeouts, overload and sessions.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from ray_util import node_of, wait_until

from dspex.errors import (
    CallTimeout,
    HandlerNotFound,
    PoolClosed,
    PoolOverloaded,
    RemoteError,
    SessionLost,
    WorkerCrashed,
)
from dspex.pool import PoolManager, RayPool

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]

HANDLERS = ["dspex.testing.handlers"]


@pytest.fixture(scope="module")
def pool(ray_cluster):
    """3 workers, one per node (a placement group with STRICT_SPREAD)."""
    p = RayPool("calls", size=3, handlers=HANDLERS, num_cpus=0.5, placement="strict_spread", cancel_grace_s=1.0)
    p.start()
    try:
        yield p
    finally:
        p.close()


def test_values_keep_their_types_like_the_local_pool(pool: RayPool) -> None:
    assert pool.call("echo", 42) == 42
    value = {"t": (1, 2), "s": {3}, "b": b"\x00", 7: None, "big": 2**70, "f": 1.5}
    assert pool.call("echo", value) == value
    assert pool.call("echo", 1, 2, k="v") == {"args": [1, 2], "kwargs": {"k": "v"}}
    with pytest.raises(TypeError, match="cannot send"):
        pool.call("echo", object())


def test_calls_spread_over_the_nodes(pool: RayPool, ray_cluster) -> None:
    nodes = node_of(pool)
    assert len(set(nodes.values())) == 3  # strict_spread: one worker per node
    pids = {pool.call_detailed("pid").value for _ in range(9)}
    assert {nodes[p] for p in pids} == set(nodes.values())
    # The pid a handler reports is the worker the host accounts the call to.
    r = pool.call_detailed("pid")
    assert r.value == r.pid and os.getpid() not in pids


def test_concurrent_callers_use_every_worker(pool: RayPool) -> None:
    seen: set[int] = set()
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(4):
            r = pool.call_detailed("sleep", 0.05)
            with lock:
                seen.add(r.pid)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == set(node_of(pool))


def test_streams_generators_and_async(pool: RayPool) -> None:
    assert list(pool.stream("count", 5)) == [0, 1, 2, 3, 4]
    assert pool.call("count", 3) == [0, 1, 2]  # call() collects a generator's chunks
    assert list(pool.stream("echo", "one")) == ["one"]  # a plain handler streams its result

    async def main() -> None:
        assert await pool.acall("echo", "a") == "a"
        assert [x async for x in pool.astream("acount", 4)] == [0, 1, 2, 3]
        # async concurrent handlers: many in flight on each worker at once
        assert await asyncio.gather(*[pool.acall("asleep", 0.2) for _ in range(12)]) == [0.2] * 12
        r = await pool.acall_detailed("pid")
        assert r.value == r.pid

    asyncio.run(main())


def test_closing_a_stream_early_cancels_it(pool: RayPool) -> None:
    it = pool.stream("count", 10_000, delay=0.01)
    assert next(it) == 0
    it.close()
    wait_until(lambda: pool.stats()["in_flight"] == 0, 30, "the stream to be released")
    assert pool.call("echo", "still fine") == "still fine"


def test_host_callbacks_and_progress_events(pool: RayPool) -> None:
    calls: list[tuple[int, int]] = []

    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    assert pool.call("call_host", "add", 2, 3, callbacks={"add": add}) == 5
    assert calls == [(2, 3)]

    def broken() -> None:
        raise KeyError("no such record")

    assert pool.call("call_host_safe", "broken", callbacks={"broken": broken})[:2] == ["error", "KeyError"]
    with pytest.raises(RemoteError, match="no host callback named 'nope'"):
        pool.call("call_host", "nope", callbacks={"add": add})
    with pytest.raises(RemoteError, match="no host callback named 'nope'"):
        pool.call("call_host", "nope")  # no callbacks at all: the same answer
    events: list[dict] = []
    assert pool.call("progress", 3, on_event=events.append) == 3
    assert [e["step"] for e in events] == [0, 1, 2]

    async def main() -> int:
        async def amul(a: int, b: int) -> int:
            await asyncio.sleep(0)
            return a * b

        return await pool.acall("call_host", "mul", 6, 7, callbacks={"mul": amul})

    assert asyncio.run(main()) == 42

    def refuse(event: dict) -> None:
        raise ValueError("the consumer gave up")

    before = pool.stats()["cancelled"]
    with pytest.raises(ValueError, match="the consumer gave up"):  # the caller's own error, unchanged
        pool.call("progress", 3, on_event=refuse)
    assert pool.stats()["cancelled"] == before + 1  # and the call was stopped in the actor


def test_errors_have_the_local_types(pool: RayPool) -> None:
    with pytest.raises(RemoteError) as info:
        pool.call("fail", "bad input", "ValueError")
    assert info.value.remote_type == "ValueError" and "bad input" in str(info.value)
    assert "Traceback" in info.value.remote_traceback
    with pytest.raises(HandlerNotFound, match="has no handler 'nope'"):
        pool.call("nope")


def test_timeout_cancels_the_call(pool: RayPool) -> None:
    with pytest.raises(CallTimeout, match="passed its deadline"):
        pool.call("sleep", 30, timeout=0.5)

    async def main() -> None:
        with pytest.raises(CallTimeout):
            await pool.acall("asleep", 30, timeout=0.5)

    asyncio.run(main())
    wait_until(lambda: pool.stats()["in_flight"] == 0, 30, "timed-out calls to be released")
    assert pool.call("echo", 1) == 1  # the workers are free again (sleep saw ctx.cancelled)


def test_a_hung_handler_gets_its_worker_restarted(pool: RayPool) -> None:
    """``hang`` ignores cancellation: after cancel_grace_s the actor replaces itself."""
    before = {w["pid"] for w in pool.stats()["workers"]}
    with pytest.raises(CallTimeout):
        pool.call("hang", 60, timeout=0.5)
    wait_until(lambda: pool.stats()["restarts"] >= 1 and len(pool.workers()) == 3, 60, "the restart")
    assert {w["pid"] for w in pool.stats()["workers"]} != before
    assert pool.call("echo", 2) == 2


def test_overload_is_an_immediate_error(ray_cluster) -> None:
    with RayPool("tiny", size=1, handlers=HANDLERS, max_concurrency=1, queue_limit=1, num_cpus=0.1) as p:

        async def main() -> None:
            running = [asyncio.ensure_future(p.acall("sleep", 1.0)) for _ in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(PoolOverloaded, match="in flight"):
                await p.acall("echo", 1)
            assert await asyncio.gather(*running) == [1.0, 1.0]

        asyncio.run(main())
        assert p.stats()["overloaded"] == 1
        assert p.call("echo", 3) == 3


def test_crash_is_worker_crashed_and_ray_restarts_it(ray_cluster) -> None:
    with RayPool("crashy", size=1, handlers=HANDLERS, affinity="strict", num_cpus=0.1) as p:
        with p.session() as s:
            p.call("state_set", "k", "v", session=s)
            assert p.call("state_get", "k", session=s) == "v"
            pid = p.workers()[0]
            with pytest.raises(WorkerCrashed, match="died during call 'crash'"):
                p.call("crash", session=s)
            # Its state died with it: the strict session is lost, not silently empty.
            with pytest.raises(SessionLost, match="strict session"):
                p.call("state_get", "k", session=s)
        # With its only worker down, a call waits for Ray's restart (within its deadline).
        assert p.call_detailed("echo", "waited", timeout=60).value == "waited"
        wait_until(lambda: p.workers() and p.workers()[0] != pid, 60, "Ray to restart the actor")
        assert p.call("echo", "back") == "back"
        assert p.stats()["crashes"] >= 1 and p.stats()["restarts"] >= 1


def test_sessions_pin_state_to_one_worker(pool: RayPool) -> None:
    with pool.session() as s:
        pool.call("state_set", "x", 1, session=s)
        pids = {pool.call_detailed("state_get", "x", session=s).pid for _ in range(5)}
        assert len(pids) == 1
        assert pool.call("state_get", "x", session=s) == 1
    # dropped at exit: the next call of that key starts from nothing
    assert pool.call("state_get", "x", session=s) is None


def test_manager_builds_a_ray_pool_from_config(ray_cluster) -> None:
    mgr = PoolManager({"pools": {"remote": {"backend": "ray", "size": 2, "handlers": HANDLERS,
                                            "num_cpus": 0.1, "placement": "spread"}}})
    try:
        p = mgr.get("remote")
        assert isinstance(p, RayPool) and p.call("echo", 9) == 9
        assert mgr.stats()["remote"]["backend"] == "ray"
    finally:
        mgr.close_all()
    with pytest.raises(PoolClosed):
        p.call("echo", 1)


def test_start_error_names_the_cause(ray_cluster) -> None:
    from dspex.errors import WorkerStartError

    p = RayPool("broken", size=1, handlers=["no_such_handler_module_xyz"], num_cpus=0.1, start_timeout_s=60)
    with pytest.raises(WorkerStartError, match="failed to start") as info:
        p.start()
    assert "no_such_handler_module_xyz" in info.value.stderr_tail
    p.close()


def test_a_pipeline_runs_its_worker_steps_on_the_ray_pool(pool: RayPool) -> None:
    """Pipelines take any PoolBackend: validation reads the handlers, steps share a session."""
    from dspex.errors import PipelineError
    from dspex.pipeline import Pipeline, native, parallel, worker

    p = Pipeline(
        [
            worker(handler="state_set", pool="remote", params={"key": "seen"}, reads={"value": "x"}, writes="set"),
            parallel([
                worker(handler="state_get", pool="remote", params={"key": "seen"}, writes="got", name="get"),
                native(lambda x: x * 2, writes="e", name="double"),
            ], name="group"),
            native(lambda got, e: f"{got}/{e}", writes="out", name="join"),
        ],
        pools={"remote": pool},
    )
    r = p.run(x=7)
    assert r["got"] == 7 and r["out"] == "7/14"  # one session per run: the state step's worker
    assert r.trace.step("get").where == pool.name and r.trace.step("get").pid in pool.workers()
    with pytest.raises(PipelineError, match="no_such_handler"):
        Pipeline([worker(handler="no_such_handler", pool="remote", writes="h")], pools={"remote": pool}).validate()


def test_a_restarted_actor_refuses_a_strict_call_for_state_it_never_had(ray_cluster) -> None:
    """The race the monitor cannot close: Ray restarted the actor before the host noticed.
    The host's view of the incarnation is made stale by hand; the actor itself refuses."""
    with RayPool("incarnation", size=1, handlers=HANDLERS, affinity="strict", num_cpus=0.1) as p:
        p.call("state_set", "k", "v", session="s")
        slot = p._router.slots[0]
        real = slot.incarnation
        slot.incarnation = "an-incarnation-that-died"  # what the host believes
        with pytest.raises(SessionLost):
            p.call("state_get", "k", session="s")
        # The refusal marks the worker down; the probe finds it up under its real incarnation.
        wait_until(lambda: p.stats()["workers"][0]["state"] == "ready" and slot.incarnation == real, 30,
                   "the probe to bring the worker back")
        assert p.call("state_get", "k", session="fresh") is None
        assert p.call("echo", 1) == 1
        # drop_session drops the actor-side state (one worker: nowhere else it could be)
        p.call("state_set", "k2", 2, session="t")
        assert p.call("state_get", "k2", session="t") == 2
        p.drop_session("t")
        wait_until(lambda: p.call("state_get", "k2", session="t") is None, 30, "the drop to reach the actor")


def test_custom_resources_place_workers_and_unplaceable_pools_fail_to_start(ray_cluster) -> None:
    import ray

    accel_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("accel")}
    assert len(accel_nodes) == 1
    with RayPool("accel", size=1, handlers=HANDLERS, num_cpus=0.1, resources={"accel": 1}) as p:
        assert set(p.stats()["nodes"]) == accel_nodes
        assert p.call("echo", "on the accelerator node") == "on the accelerator node"
    from dspex.errors import WorkerStartError

    too_big = RayPool("too-big", size=1, handlers=HANDLERS, num_cpus=0.1, resources={"accel": 2}, start_timeout_s=3)
    with pytest.raises(WorkerStartError, match=r"only 0 of 1 workers ready.*'accel': 2\.0"):
        too_big.start()
    too_big.close()
