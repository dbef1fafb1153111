"""The embedded model server as a managed service: start, share, restart, stop, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from dspex.errors import LocalModelError
from dspex.local import MODELS, LocalModelService, serve, server_status, stop_server
from dspex.local._proc import pid_alive as _pid_alive
from dspex.local._state import paths as _paths

MODEL_ALIAS = MODELS["smollm2-135m"].alias  # conftest: the fast model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


def test_start_health_status(local_service: LocalModelService) -> None:
    url = local_service.ensure_running()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    status = local_service.status()
    assert status["healthy"] is True and status["running"] is True
    assert status["owned_by_me"] is True
    assert MODEL_ALIAS in status["models"]
    assert status["n_threads"] >= 1
    body = httpx.get(f"{url}/models", timeout=30).json()
    assert [m["id"] for m in body["data"]] == [MODEL_ALIAS]
    state_file, _, _ = _paths(local_service.model_path)
    state = json.loads(state_file.read_text())
    assert state["pid"] == status["pid"] and state["base_url"] == url
    assert state["owner_pid"] == os.getpid()


def test_second_instance_reuses_the_running_server(local_service: LocalModelService) -> None:
    url = local_service.ensure_running()
    other = LocalModelService()
    assert other.ensure_running() == url
    assert other.owned is False
    assert other.status()["pid"] == local_service.status()["pid"]
    other.stop()  # an adopter lets go; it never stops someone else's server
    assert local_service.status()["healthy"] is True


def test_worker_env_points_at_the_server(
    local_service: LocalModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = local_service.ensure_running()
    env = local_service.env()
    assert env == {"DSPEX_LOCAL_BASE_URL": url}
    monkeypatch.setenv("DSPEX_LOCAL_BASE_URL", url.removesuffix("/v1"))
    worker_side = LocalModelService()
    assert worker_side.ensure_running() == url
    assert worker_side.owned is False


def test_env_url_that_is_down_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DSPEX_LOCAL_BASE_URL", f"http://127.0.0.1:{port}/v1")
    with pytest.raises(LocalModelError, match="DSPEX_LOCAL_BASE_URL"):
        LocalModelService().ensure_running()


def test_restart_after_kill_9_then_stop(local_service: LocalModelService) -> None:
    url = local_service.ensure_running()
    old_pid = local_service.status()["pid"]
    os.kill(old_pid, signal.SIGKILL)
    assert _wait_dead(old_pid, 10)
    new_url = local_service.ensure_running()  # the check before use notices and restarts
    new_pid = local_service.status()["pid"]
    assert new_pid != old_pid and _pid_alive(new_pid), (old_pid, new_pid)
    assert new_url == url  # same port: URLs already handed to workers stay valid
    reply = httpx.post(
        f"{new_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0},
        timeout=60,
    )
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] is not None

    local_service.stop()
    assert _wait_dead(new_pid, 5)
    state_file, _, _ = _paths(local_service.model_path)
    assert not state_file.exists()
    assert local_service.base_url is None
    assert local_service.ensure_running().startswith("http://127.0.0.1:")  # back for the next tests


_HOST = textwrap.dedent(
    """
    import json, sys, threading, time
    from dspex.local import LocalModelService
    svc = LocalModelService()
    # Start from a thread that then ends: the server must not die with that thread.
    t = threading.Thread(target=svc.ensure_running)
    t.start(); t.join()
    time.sleep(1.0)
    st = svc.status()
    print(json.dumps({"pid": st["pid"], "healthy": st["healthy"]}), flush=True)
    time.sleep(120)
    """
)


def test_no_orphan_server_after_host_is_kill_9d(tmp_path: Path) -> None:
    env = dict(os.environ, DSPEX_LOCAL_STATE_DIR=str(tmp_path))  # its own server, not the shared one
    host = subprocess.Popen(
        [sys.executable, "-c", _HOST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        assert line, host.stderr.read() if host.stderr else ""
        info = json.loads(line)
        server_pid = info["pid"]
        assert info["healthy"] is True and _pid_alive(server_pid)
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
        assert _wait_dead(server_pid, 10), "the server outlived its kill -9'd host"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(timeout=10)


def test_serve_detached_status_and_stop_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_LOCAL_STATE_DIR", str(tmp_path))
    info = serve(detach=True, startup_timeout=120)
    pid = info["pid"]
    try:
        assert info["healthy"] is True and info["detached"] is True and info["owner_pid"] is None
        # any process adopts it
        svc = LocalModelService()
        assert svc.ensure_running() == info["base_url"] and svc.owned is False
        # `dspex lm status` / `dspex lm stop` through the module's CLI
        env = dict(os.environ)
        out = subprocess.run(
            [sys.executable, "-m", "dspex.local", "status"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert status["pid"] == pid and status["healthy"] is True
        out = subprocess.run(
            [sys.executable, "-m", "dspex.local", "stop"], capture_output=True, text=True, timeout=60, env=env
        )
        assert out.returncode == 0 and "stopped" in out.stdout
        assert _wait_dead(pid, 10)
        assert server_status()["running"] is False
    finally:
        stop_server()


def test_forked_child_never_stops_the_parents_server(local_service: LocalModelService) -> None:
    url = local_service.ensure_running()
    pid = local_service.status()["pid"]
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(r)
            same = local_service.ensure_running() == url and not local_service.owned
            local_service._at_exit()  # what its atexit would do
            os.write(w, b"ok" if same else b"no")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    _, status = os.waitpid(child, 0)
    assert answer == b"ok" and os.waitstatus_to_exitcode(status) == 0
    assert _pid_alive(pid) and local_service.status()["healthy"] is True
    assert local_service.owned is True
