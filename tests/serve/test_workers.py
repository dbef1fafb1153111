"""Worker-backed endpoints: a crash is a clean 5xx and the next call works; the session
header keeps a client's calls (and its worker-side state) on one worker."""

from __future__ import annotations

from typing import Any

_POOL = {"w": {"size": 2, "handlers": ["dspex.testing.handlers"]}}


def test_worker_crash_is_a_clean_502_then_recovers(serve: Any) -> None:
    srv = serve(programs=[{"name": "crash", "handler": "crash", "pool": "w", "signature": "code: int -> nothing"},
                          {"name": "pid", "handler": "pid", "pool": "w", "signature": "-> pid: int"}], pools=_POOL)
    r = srv.client.post("/v1/programs/crash", json={"code": 3})
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["type"] == "WorkerCrashed" and err["retryable"] is True and "Traceback" not in r.text
    ok = srv.client.post("/v1/programs/pid", json={})
    assert ok.status_code == 200 and isinstance(ok.json()["outputs"]["pid"], int)
    again = srv.client.post("/v1/programs/crash", json={"code": 3})  # and again, after the replacement
    assert again.status_code == 502
    assert srv.client.post("/v1/programs/pid", json={}).status_code == 200


def test_session_header_keeps_calls_and_state_on_one_worker(serve: Any) -> None:
    srv = serve(programs=[
        {"name": "set", "handler": "state_set", "pool": "w", "signature": "key, value -> ok"},
        {"name": "get", "handler": "state_get", "pool": "w", "signature": "key -> value"},
        {"name": "pid", "handler": "pid", "pool": "w", "signature": "-> pid: int"},
    ], pools=_POOL)
    c = srv.client
    h = {"X-Dspex-Session": "user-42"}
    assert c.post("/v1/programs/set", json={"key": "k", "value": "v42"}, headers=h).status_code == 200
    pids = {c.post("/v1/programs/pid", json={}, headers=h).json()["outputs"]["pid"] for _ in range(8)}
    assert len(pids) == 1
    got = c.post("/v1/programs/get", json={"key": "k"}, headers=h).json()
    assert got["outputs"] == {"value": "v42"} and got["session"] == "user-42"
    other = c.post("/v1/programs/get", json={"key": "k"}, headers={"X-Dspex-Session": "user-7"}).json()
    assert other["outputs"] == {"value": None}  # another session: its own (empty) state
    assert c.post("/v1/programs/get", json={"key": "k"}).json()["outputs"] == {"value": None}


def test_not_ready_when_a_pool_cannot_start(serve: Any) -> None:
    import time

    srv = serve(programs=[{"name": "echo", "handler": "echo", "pool": "bad", "signature": "x -> y"}],
                pools={"bad": {"size": 1, "handlers": ["no_such_module_xyz"], "start_timeout_s": 5}}, ready=False)
    deadline = time.monotonic() + 60
    while srv.service.problem is None and time.monotonic() < deadline:
        time.sleep(0.05)
    r = srv.client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "WorkerStartError" in r.json()["problem"] and "no_such_module_xyz" not in r.text  # details: log only
    call = srv.client.post("/v1/programs/echo", json={"x": 1})
    assert call.status_code == 503 and call.json()["error"]["type"] == "NotReady" and "Traceback" not in call.text
    assert srv.client.get("/healthz").status_code == 200  # alive, just not ready


def test_handler_output_that_breaks_its_signature_is_a_502(serve: Any) -> None:
    srv = serve(programs=[{"name": "bad", "handler": "echo", "pool": "w", "signature": "x -> n: int"},
                          {"name": "any", "handler": "echo", "pool": "w", "signature": "x -> y"}], pools=_POOL)
    r = srv.client.post("/v1/programs/bad", json={"x": "1"})
    assert r.status_code == 502 and r.json()["error"]["type"] == "OutputMismatch"
    assert "'n'" in r.json()["error"]["message"] and "integer" in r.json()["error"]["message"]
    doc = srv.client.get("/openapi.json").json()
    out = doc["paths"]["/v1/programs/any"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert out["properties"]["outputs"]["properties"]["y"] == {}  # an untyped field of code: any JSON value
    assert srv.client.post("/v1/programs/any", json={"x": "1"}).status_code == 200
