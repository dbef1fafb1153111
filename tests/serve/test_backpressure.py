"""Overload is answered at once (429/503 + Retry-After), never queued; a client that
disconnects cancels its call (the LM connection or the worker call is dropped)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx

import dspex
from dspex.testing import Fault

from . import programs_for_tests as progs
from .slow_lm import SlowLM


def _wait(cond: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def test_in_flight_limit_answers_429_with_retry_after(serve: Any, lm: Any) -> None:
    progs.started.clear()
    srv = serve(programs=[{"name": "slow", "object": "serve.programs_for_tests:slow"},
                          {"name": "qa", "signature": "question -> answer"}],
                lm=lm, max_in_flight=1, retry_after_s=3)
    first: dict[str, Any] = {}
    t = threading.Thread(target=lambda: first.update(r=httpx.post(srv.url + "/v1/programs/slow",
                                                                 json={"seconds": 1.5}, timeout=30)))
    t.start()
    assert progs.started.wait(20)
    r = srv.client.post("/v1/programs/qa", json={"question": "q"})
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["type"] == "TooManyRequests" and r.json()["error"]["retryable"] is True
    s = srv.client.post("/v1/programs/qa/stream", json={"question": "q"})
    assert s.status_code == 429
    t.join(30)
    assert first["r"].status_code == 200 and first["r"].json()["outputs"] == {"slept": 1.5}
    assert srv.client.post("/v1/programs/qa", json={"question": "q"}).status_code == 200  # bound released
    assert 'dspex_serve_rejected_total{reason="in_flight"} 2.0' in srv.client.get("/metrics").text


def test_lm_rate_limit_becomes_429_with_its_retry_after(serve: Any, lm: Any, fake_lm: Any) -> None:
    srv = serve(programs=[{"name": "qa", "signature": "question -> answer"}], lm=lm)
    fake_lm.script([Fault.rate_limit(retry_after=7)])
    r = srv.client.post("/v1/programs/qa", json={"question": "q"})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "LMRateLimited"
    assert srv.client.post("/v1/programs/qa", json={"question": "q"}).status_code == 200


def test_pool_overload_becomes_503_with_retry_after(serve: Any) -> None:
    srv = serve(programs=[{"name": "sleep", "handler": "sleep", "pool": "tiny", "signature": "seconds: float -> s"}],
                pools={"tiny": {"size": 1, "handlers": ["dspex.testing.handlers"], "queue_limit": 1,
                                "pipeline_depth": 1}})

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
            return list(await asyncio.gather(*(c.post("/v1/programs/sleep", json={"seconds": 0.5})
                                               for _ in range(6))))

    codes = [r.status_code for r in asyncio.run(burst())]
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
    over = next(r for r in asyncio.run(burst()) if r.status_code == 503)
    assert over.headers["retry-after"] == "1" and over.json()["error"]["type"] == "PoolOverloaded"


def test_disconnect_cancels_the_lm_call(serve: Any) -> None:
    with SlowLM(delay=60) as slow:
        lm = dspex.LM("openai/slow", api_base=slow.base_url, cache=False, num_retries=0, timeout=120)
        srv = serve(programs=[{"name": "qa", "signature": "question -> answer"}], lm=lm)
        try:
            httpx.post(srv.url + "/v1/programs/qa", json={"question": "q"}, timeout=httpx.Timeout(30, read=1.0))
        except httpx.ReadTimeout:
            pass  # the client gave up and closed its connection
        assert _wait(lambda: slow.closed_early == 1), (slow.received, slow.closed_early)
        assert slow.received == 1 and slow.answered == 0
        assert _wait(lambda: 'dspex_serve_cancelled_total{endpoint="qa"} 1.0' in srv.client.get("/metrics").text)
        assert srv.service.in_flight.count == 0


def test_disconnect_cancels_a_stream_and_a_worker_call(serve: Any) -> None:
    srv = serve(programs=[{"name": "sleep", "handler": "sleep", "pool": "p", "signature": "seconds: float -> s"}],
                pools={"p": {"size": 1, "handlers": ["dspex.testing.handlers"]}})
    pool = srv.service.manager.get("p")
    for path in ("/v1/programs/sleep", "/v1/programs/sleep/stream"):
        before = pool.stats()["cancelled"]
        try:
            with httpx.stream("POST", srv.url + path, json={"seconds": 60},
                              timeout=httpx.Timeout(30, read=1.0)) as r:
                for _ in r.iter_bytes():
                    pass
        except httpx.ReadTimeout:
            pass
        assert _wait(lambda b=before: pool.stats()["cancelled"] == b + 1), pool.stats()
    # the worker is free again: a short call runs at once
    r = srv.client.post("/v1/programs/sleep", json={"seconds": 0.01})
    assert r.status_code == 200 and r.json()["outputs"] == {"s": 0.01}
    assert srv.service.in_flight.count == 0


def test_disconnect_cancels_an_async_object_program(serve: Any) -> None:
    progs.started.clear()
    progs.cancelled.clear()
    srv = serve(programs=[{"name": "slow", "object": "serve.programs_for_tests:slow"}])
    try:
        httpx.post(srv.url + "/v1/programs/slow", json={"seconds": 60}, timeout=httpx.Timeout(30, read=1.0))
    except httpx.ReadTimeout:
        pass
    assert progs.started.is_set()
    assert progs.cancelled.wait(20)  # the coroutine saw CancelledError
    assert _wait(lambda: srv.service.metrics.cancelled.get("slow") == 1)
