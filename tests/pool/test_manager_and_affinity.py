"""PoolManager under concurrent first use, worker-stderr settings, hint affinity's bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import dspex.pool
from dspex.errors import ConfigError, WorkerStartError
from dspex.pool import Pool, PoolManager, set_default_manager

from .util import H, busy_pid, full_size, wait_for
from .util import bg as _bg

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(120)


def _at_once(n: int, fn: Any) -> list[Any]:
    """Run fn(i) on n threads released together; their results (or exceptions)."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    return out


# -- PoolManager.get under a race ---------------------------------------------------


def test_concurrent_first_get_returns_a_started_pool() -> None:
    mgr = PoolManager({"pools": {"race": {"size": 2, "handlers": [H], "forward_stderr": False}}})
    try:
        got: list[Pool] = []

        def use(i: int) -> Any:
            pool = mgr.get("race")
            got.append(pool)
            return pool.call("echo", i)

        out = _at_once(16, use)
        assert out == list(range(16))  # no HandlerNotFound "it has: none"
        assert len({id(p) for p in got}) == 1 and mgr.started() == ["race"]
    finally:
        mgr.close_all()


def test_concurrent_first_get_shares_the_start_error(tmp_path: Path) -> None:
    mgr = PoolManager(
        {"pools": {"bad": {"size": 1, "handlers": ["no_such_module_dspex_test"], "forward_stderr": False,
                           "start_timeout_s": 30}}}
    )
    try:
        out = _at_once(8, lambda i: mgr.get("bad"))
        assert all(isinstance(e, WorkerStartError) for e in out), out
        assert "no_such_module_dspex_test" in str(out[0].stderr_tail)
        assert mgr.started() == []
    finally:
        mgr.close_all()


def test_calls_during_another_threads_start_wait_for_it() -> None:
    p = Pool("midstart", 2, handlers=[H], forward_stderr=False)
    try:
        t, res = _bg(p.start)
        out = _at_once(8, lambda i: p.call("echo", i))
        t.join(60)
        assert "error" not in res and out == list(range(8))
    finally:
        p.close()


# -- worker stderr: public settings --------------------------------------------------


def test_manager_forward_stderr_default_and_per_pool_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSPEX_POOL_STDERR", raising=False)
    mgr = PoolManager({"pools": {"a": {"size": 1, "handlers": [H]}, "b": {"size": 1, "handlers": [H],
                                                                          "forward_stderr": True}}},
                      forward_stderr=False)
    assert mgr.config("a")["forward_stderr"] is False
    assert mgr.config("b")["forward_stderr"] is True
    assert Pool("x", 1).forward_stderr is True
    monkeypatch.setenv("DSPEX_POOL_STDERR", "quiet")
    assert Pool("x", 1).forward_stderr is False
    assert Pool("x", 1, forward_stderr=True).forward_stderr is True
    monkeypatch.setenv("DSPEX_POOL_STDERR", "loud")
    with pytest.raises(ConfigError, match="DSPEX_POOL_STDERR"):
        Pool("x", 1)


def test_set_default_manager() -> None:
    before = dspex.pool.manager()
    mine = PoolManager({"pools": {}}, forward_stderr=False)
    try:
        assert set_default_manager(mine, replace=False) is before  # one exists: kept
        assert set_default_manager(mine) is mine
        assert dspex.pool.manager() is mine
    finally:
        set_default_manager(before)
    assert dspex.pool.manager() is before


@pytest.mark.parametrize("mode", ["quiet", "forward"])
def test_worker_stderr_reaches_the_host_only_when_forwarded(mode: str, tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(f"""
        from dspex.pool import Pool
        with Pool("say", 1, handlers=[{str(HERE / "_proc_handlers.py")!r}]) as p:
            print(p.call("say", "hello-from-the-worker"))
    """))
    env = {**os.environ, "DSPEX_POOL_STDERR": mode}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello-from-the-worker"
    assert ("hello-from-the-worker" in out.stderr) is (mode == "forward")


# -- hint affinity: wait for the session's worker a bounded time -------------------


def test_hint_spills_when_the_sessions_worker_stays_busy() -> None:
    with Pool("hint", 2, handlers=[H], affinity="hint", forward_stderr=False) as p:
        home = p.call_detailed("pid", session="s").pid
        t, res = _bg(p.call, "sleep", 60, session="s")
        assert busy_pid(p) == home
        # the bound (hint_wait_s, default 0.05 s) passes long before the 60 s call ends
        assert p.call_detailed("pid", session="s").pid != home
        assert p.stats()["sessions"] == 1
    t.join(10)
    assert "error" in res  # the pool closed under it


def test_hint_waits_for_its_worker_within_the_bound() -> None:
    # a bound far longer than the running call: the session's worker takes it, though
    # another worker is idle all along
    with Pool("hintwait", 2, handlers=[H], affinity="hint", hint_wait_s=60, forward_stderr=False) as p:
        home = p.call_detailed("pid", session="s").pid
        t, res = _bg(p.call, "sleep", 0.3, session="s")
        assert busy_pid(p) == home
        assert p.call_detailed("pid", session="s").pid == home
        t.join(10)
        assert res == {"value": 0.3}


def test_hint_without_a_bound_spills_at_once() -> None:
    with Pool("hint0", 2, handlers=[H], affinity="hint", hint_wait_s=0, forward_stderr=False) as p:
        home = p.call_detailed("pid", session="s").pid
        _bg(p.call, "sleep", 60, session="s", timeout=30)
        busy_pid(p)
        assert p.call_detailed("pid", session="s").pid != home


def test_hint_call_waiting_for_a_worker_that_dies_runs_elsewhere(tmp_path: Path) -> None:
    fault_handlers = str(Path(__file__).with_name("_fault_handlers.py"))
    with Pool("hintdie", 2, handlers=[H, fault_handlers], affinity="hint", hint_wait_s=600, forward_stderr=False) as p:
        p.call("state_set", "k", "v", session="s")
        home = p.call_detailed("pid", session="s").pid
        marker = tmp_path / "running"
        t1, r1 = _bg(p.call, "wait_file", str(marker), str(tmp_path / "never"), 600.0, session="s")
        # running, not only sent: a call the worker never read would be re-dispatched
        wait_for(marker.exists, what="the call to run")
        assert int(marker.read_text()) == home
        t2, r2 = _bg(p.call_detailed, "state_get", "k", session="s")
        wait_for(lambda: p.stats()["queue_depth"] == 1, what="the hint call waiting for its worker")
        os.kill(home, signal.SIGKILL)
        t1.join(30)
        t2.join(30)
        assert "error" in r1  # the running call died with its worker
        assert r2["value"].pid != home and r2["value"].value is None  # not SessionLost: re-routed
        wait_for(lambda: full_size(p), what="the pool back at size")
