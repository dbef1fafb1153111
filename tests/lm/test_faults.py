"""LM client failures against the fake server: retries, timeouts, typed errors. Nothing may hang."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import dspex
from dspex.testing import FakeLMServer, Fault, Reply

pytestmark = pytest.mark.timeout(30)
MSGS = [{"role": "user", "content": "hi"}]


def lm_for(server: FakeLMServer, **kw) -> dspex.LM:
    kw.setdefault("cache", False)
    return dspex.LM("openai/fake", api_base=server.base_url, **kw)


@pytest.mark.parametrize("http_date", [False, True])
def test_429_then_success_honours_retry_after(fake_lm: FakeLMServer, http_date: bool) -> None:
    retry_after = 1.0 if http_date else 0.4  # HTTP dates have 1 s resolution
    fake_lm.script([Fault.rate_limit(retry_after=retry_after, http_date=http_date), "ok"])
    out = lm_for(fake_lm, num_retries=2).complete(MSGS)
    assert out.text == "ok"
    first, second = fake_lm.requests
    gap = second["time"] - first["time"]
    # a lower bound only; an HTTP date is rounded down to the second by the server clock
    assert gap >= (retry_after - 1.0 if http_date else retry_after)


async def test_429_async_then_success(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.rate_limit(retry_after=0.3), "ok"])
    out = await lm_for(fake_lm, num_retries=1).acomplete(MSGS)
    assert out.text == "ok"
    first, second = fake_lm.requests
    assert second["time"] - first["time"] >= 0.3


def test_429_without_retries_is_typed(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.rate_limit(retry_after=7)])
    with pytest.raises(dspex.LMRateLimited) as info:
        lm_for(fake_lm, num_retries=0).complete(MSGS)
    assert info.value.status == 429 and info.value.retry_after == 7.0 and info.value.retryable
    assert len(fake_lm.requests) == 1


def test_server_error_is_retried(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.server_error(503), Fault.server_error(500), "fine"])
    lm = lm_for(fake_lm, num_retries=3)
    lm._backoff_base = 0.01
    assert lm.complete(MSGS).text == "fine"
    assert len(fake_lm.requests) == 3


def test_server_error_exhausts_retries(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.server_error(502)] * 2)
    with pytest.raises(dspex.LMBadResponse) as info:
        lm_for(fake_lm, num_retries=1).complete(MSGS)
    assert info.value.status == 502 and info.value.retryable
    assert len(fake_lm.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(fake_lm: FakeLMServer, status: int) -> None:
    fake_lm.script([Fault.status(status), "never"])
    expected = dspex.LMAuthError if status in (401, 403) else dspex.LMBadResponse
    with pytest.raises(expected) as info:
        lm_for(fake_lm, num_retries=3).complete(MSGS)
    assert info.value.status == status and not info.value.retryable
    assert len(fake_lm.requests) == 1
    if status == 401:
        assert "OPENAI_API_KEY" in str(info.value)


@pytest.mark.parametrize("style", ["openai", "llamacpp", "anthropic"])
def test_context_window_detected(fake_lm: FakeLMServer, style: str) -> None:
    fake_lm.script([Fault.context_window(style)])
    model = "anthropic/claude" if style == "anthropic" else "openai/fake"
    lm = dspex.LM(model, api_base=fake_lm.base_url, cache=False, num_retries=3)
    with pytest.raises(dspex.ContextWindowExceeded) as info:
        lm.complete(MSGS)
    assert len(fake_lm.requests) == 1
    assert "context window" in str(info.value)


def test_hang_times_out(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.hang()])
    with pytest.raises(dspex.LMTimeout) as info:
        lm_for(fake_lm, timeout=0.5, num_retries=0).complete(MSGS)
    assert isinstance(info.value, TimeoutError) and info.value.retryable
    # the hung request does not block others
    assert lm_for(fake_lm).complete(MSGS).text


async def test_hang_times_out_async(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.hang()])
    with pytest.raises(dspex.LMTimeout):
        await lm_for(fake_lm, timeout=0.5, num_retries=0).acomplete(MSGS)


def test_timeout_then_retry_succeeds(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.hang(), "after hang"])
    assert lm_for(fake_lm, timeout=0.3, num_retries=1).complete(MSGS).text == "after hang"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_fails_fast_without_retries() -> None:
    port = _free_port()
    lm = dspex.LM("openai/fake", api_base=f"http://127.0.0.1:{port}/v1", num_retries=0, cache=False)
    start = time.monotonic()
    with pytest.raises(dspex.LMTransportError) as info:
        lm.complete(MSGS)
    elapsed = time.monotonic() - start
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "server is running" in msg
    assert elapsed < 5  # generous bound against a hung connect; measured ~1 ms (see bench)


async def test_connection_refused_async() -> None:
    lm = dspex.LM("openai/fake", api_base=f"http://127.0.0.1:{_free_port()}/v1", num_retries=0, cache=False)
    with pytest.raises(dspex.LMTransportError):
        await lm.acomplete(MSGS)


@pytest.mark.parametrize("fault", [Fault.malformed(), Fault.wrong_shape()])
def test_malformed_bodies(fake_lm: FakeLMServer, fault: Fault) -> None:
    fake_lm.script([fault])
    with pytest.raises(dspex.LMBadResponse):
        lm_for(fake_lm, num_retries=2).complete(MSGS)
    assert len(fake_lm.requests) == 1


def test_closed_connection_is_a_transport_error(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.close(), "back"])
    assert lm_for(fake_lm, num_retries=1).complete(MSGS).text == "back"


def test_stale_keepalive_connection_is_replaced(fake_lm: FakeLMServer) -> None:
    lm = lm_for(fake_lm)
    lm.complete(MSGS)
    fake_lm.stop()  # drops every connection, including our pooled one
    fake_lm._thread = None
    port = fake_lm.port
    fake_lm._port = port
    fake_lm._ready.clear()
    fake_lm.start()
    assert fake_lm.port == port
    assert lm.complete(MSGS).text


def test_anthropic_request_shape(fake_lm: FakeLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-123")
    lm = dspex.LM("anthropic/claude-x", api_base=fake_lm.base_url, cache=False)
    out = lm.complete([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], temperature=0)
    req = fake_lm.requests[0]
    assert req["path"] == "/v1/messages"
    assert req["json"]["system"] == "be brief"
    assert req["json"]["messages"] == [{"role": "user", "content": "hi"}]
    assert req["json"]["max_tokens"] == 1024 and req["json"]["temperature"] == 0
    assert req["headers"]["x-api-key"] == "sk-ant-test-123"
    assert req["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in req["headers"]
    assert out.usage["prompt_tokens"] > 0 and out.text


def test_openai_request_shape(fake_lm: FakeLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = dspex.LM("openai/m", api_base=fake_lm.base_url, cache=False, temperature=0.2, max_tokens=64, grammar=True)
    assert lm.supports_grammar
    lm.complete(MSGS, grammar='root ::= "x"', n=2)
    body = fake_lm.requests[0]["json"]
    assert body == {"model": "m", "messages": MSGS, "temperature": 0.2, "max_tokens": 64, "grammar": 'root ::= "x"', "n": 2}
    assert "Authorization" not in fake_lm.requests[0]["headers"]  # local server, no key set


def test_n_choices(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Reply(texts=["a", "b", "c"])])
    out = lm_for(fake_lm).complete(MSGS, n=3)
    assert out.texts == ["a", "b", "c"] and out.text == "a"


def test_rate_limit_rps_spaces_requests(fake_lm: FakeLMServer) -> None:
    lm = lm_for(fake_lm, rps=10)
    for _ in range(4):
        lm.complete(MSGS)
    times = [r["time"] for r in fake_lm.requests]
    # capacity 10 tokens burst; then exhausted -> check the bucket arithmetic directly below
    assert len(times) == 4
    from dspex.native.lm import TokenBucket

    bucket = TokenBucket(rate=5, capacity=1)
    assert bucket.reserve() == 0.0
    assert bucket.reserve() == pytest.approx(0.2, abs=0.02)
    assert bucket.reserve() == pytest.approx(0.4, abs=0.02)


def test_rate_limit_rpm_from_threads_and_tasks(fake_lm: FakeLMServer) -> None:
    lm = lm_for(fake_lm, rpm=600)  # 10/s, burst 10
    import threading

    threads = [threading.Thread(target=lm.complete, args=(MSGS,)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def many() -> None:
        await asyncio.gather(*[lm.acomplete(MSGS) for _ in range(5)])

    asyncio.run(many())
    times = sorted(r["time"] for r in fake_lm.requests)
    assert len(times) == 15
    # 15 requests at 10/s with a burst of 10 cannot finish in under ~0.5 s
    assert times[-1] - times[0] >= 0.4


def test_total_timeout_bounds_a_call_over_its_retries(fake_lm: FakeLMServer) -> None:
    # Without total_timeout this call makes 4 attempts of 1 s each (plus backoff waits).
    fake_lm.script([Fault.hang()] * 4)
    lm = lm_for(fake_lm, timeout=1.0, num_retries=3, total_timeout=1.2)
    with pytest.raises(dspex.LMTimeout, match=r"total_timeout=1.2 s") as info:
        lm.complete(MSGS)
    assert len(fake_lm.requests) < 4 and isinstance(info.value.__cause__, dspex.LMTimeout)
    assert _spec_total_timeout(lm) == 1.2


def test_total_timeout_gives_up_before_a_wait_it_cannot_afford(fake_lm: FakeLMServer) -> None:
    # The server asks for a 30 s wait: within a 2 s budget that retry cannot happen, so the
    # caller learns now (a typed timeout naming the 429) instead of after the wait.
    fake_lm.script([Fault.rate_limit(retry_after=30), "late"])
    with pytest.raises(dspex.LMTimeout, match="Rate limit") as info:
        lm_for(fake_lm, num_retries=3, total_timeout=2.0).complete(MSGS)
    assert isinstance(info.value.__cause__, dspex.LMRateLimited) and len(fake_lm.requests) == 1


async def test_total_timeout_async(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Fault.hang()] * 4)
    with pytest.raises(dspex.LMTimeout, match="total_timeout"):
        await lm_for(fake_lm, timeout=1.0, num_retries=3, total_timeout=1.2).acomplete(MSGS)
    assert len(fake_lm.requests) < 4


def test_total_timeout_must_be_positive(fake_lm: FakeLMServer) -> None:
    with pytest.raises(dspex.ConfigError, match="total_timeout"):
        lm_for(fake_lm, total_timeout=0)


def _spec_total_timeout(lm: dspex.LM) -> float | None:
    spec = lm.to_spec()
    assert "total_timeout" not in (lm.extra or {})  # a constructor option, not a request field
    return dspex.LM.from_spec(spec).total_timeout
