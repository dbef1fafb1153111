"""Secrets never leak; Predict's LM/adapter resolution, checks, grammar, usage; the fake server itself."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import threading

import pytest

import dspex
from dspex.testing import DummyLM, FakeLMServer, Fault

pytestmark = pytest.mark.timeout(60)
KEY = "sk-test-SECRET-0123456789"
MSGS = [{"role": "user", "content": "hi"}]


def test_key_never_leaks(fake_lm: FakeLMServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_KEY", KEY)
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, api_key_env="MY_KEY", cache=False, num_retries=0)
    explicit = dspex.LM("openai/fake", api_base=fake_lm.base_url, api_key=KEY, cache=False, num_retries=0)
    lm.complete(MSGS)
    explicit.complete(MSGS)
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in fake_lm.requests)  # it is sent...
    texts = [repr(lm), repr(explicit), json.dumps(lm.to_spec()), json.dumps(explicit.to_spec()), str(list(lm.history)), str(list(explicit.history))]
    # ...but the provider echoes it in an error, and the error text is scrubbed
    fake_lm.script([Fault.status(401, {"message": f"Incorrect API key provided: {KEY}"}), Fault.status(500, f"boom {KEY}")])
    for client in (lm, explicit):
        with pytest.raises(dspex.LMError) as info:
            client.complete(MSGS)
        texts += [str(info.value), repr(info.value), str(info.value.body)]
    assert pickle.loads(pickle.dumps(explicit))._api_key is None  # keys do not travel
    texts.append(caplog.text)
    for text in texts:
        assert KEY not in text
    assert lm.to_spec()["api_key_env"] == "MY_KEY"
    assert dspex.LM.from_spec(json.loads(json.dumps(lm.to_spec()))).to_spec() == lm.to_spec()


def test_lm_resolution_order(fake_lm: FakeLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from dspex.settings import reset_config

    call_lm, own_lm, ctx_lm = DummyLM(model="d/call"), DummyLM(model="d/own"), DummyLM(model="d/ctx")
    p = dspex.Predict("question -> answer", lm=own_lm)
    with dspex.context(lm=ctx_lm):
        p(question="1", lm=call_lm)
        p(question="2")
        dspex.Predict("question -> answer")(question="3")
    assert len(call_lm.requests) == len(own_lm.requests) == len(ctx_lm.requests) == 1
    # config [lm]
    (tmp_path / "dspex.toml").write_text(f'[lm]\nmodel = "openai/from-config"\napi_base = "{fake_lm.base_url}"\ncache = false\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSPEX_CONFIG", raising=False)
    reset_config()
    try:
        dspex.Predict("question -> answer")(question="4")
        assert fake_lm.requests[-1]["json"]["model"] == "from-config"
        # no LM anywhere and the local model disabled -> a clear error
        (tmp_path / "dspex.toml").write_text("[local]\nenabled = false\n")
        reset_config()
        with pytest.raises(dspex.ImplementationUnavailable, match="lm="):
            dspex.Predict("question -> answer")(question="5")
    finally:
        reset_config()


def test_adapter_resolution_and_instructions() -> None:
    lm = DummyLM()
    p = dspex.Predict("question -> answer")
    with dspex.context(adapter=dspex.JSONAdapter()):
        p(question="x", lm=lm)
    assert "JSON object" in lm.requests[-1][-1]["content"]
    p.instructions = "Be brief."
    p.demos = [{"question": "a", "answer": "b"}]
    p(question="y", lm=lm)
    assert "Be brief." in lm.requests[-1][0]["content"] and len(lm.requests[-1]) == 4


def test_check_retries_with_feedback_then_fails() -> None:
    lm = DummyLM([{"answer": "1"}, {"answer": "3"}, {"answer": "5"}])
    seen = []

    def even(pred):
        seen.append(pred.answer)
        if int(pred.answer) % 2:
            raise AssertionError(f"{pred.answer} is odd")  # plain raise: pytest rewrites `assert` messages

    p = dspex.Predict("question -> answer", check=even, max_tries=3)
    with pytest.raises(dspex.CheckFailed) as info:
        p(question="pick", lm=lm)
    assert info.value.attempts == 3 and info.value.feedback == "5 is odd" and info.value.prediction.answer == "5"
    assert seen == ["1", "3", "5"]
    last = lm.requests[-1]
    assert "`hint_` (str): A hint to the module from an earlier run" in last[0]["content"]
    assert "[[ ## hint_ ## ]]\nYour previous answer was rejected: 3 is odd\nPrevious answer:\nanswer: 3" in last[-1]["content"]
    ok = dspex.Predict("question -> answer", check=lambda p: None if p.answer == "2" else "want 2")
    assert ok(question="q", lm=DummyLM([{"answer": "1"}, {"answer": "2"}])).answer == "2"


def test_grammar_sent_when_supported(fake_lm: FakeLMServer) -> None:
    lm = dspex.LM("openai/llama", api_base=fake_lm.base_url, grammar=True, cache=False, max_tokens=64)
    dspex.Predict("question -> answer: int")(question="x", lm=lm)
    grammar = fake_lm.requests[-1]["json"].get("grammar")
    assert isinstance(grammar, str) and "root" in grammar
    dspex.Predict("question -> answer: int")(question="x", lm=dspex.LM("openai/plain", api_base=fake_lm.base_url, cache=False))
    assert "grammar" not in fake_lm.requests[-1]["json"]


def test_prediction_usage_and_n(fake_lm: FakeLMServer) -> None:
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    pred = dspex.Predict("question -> answer", n=3)(question="x", lm=lm)
    assert fake_lm.requests[-1]["json"]["n"] == 3 and len(pred.completions) == 3
    usage = pred.get_lm_usage()["openai/fake"]
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_positional_args_rejected() -> None:
    with pytest.raises(TypeError, match="keyword"):
        dspex.Predict("question -> answer")("x", lm=DummyLM())


# ------------------------------------------------------------------ the fake server itself


def test_fake_server_64_concurrent_keepalive_connections_and_a_hang(fake_lm: FakeLMServer) -> None:
    fake_lm.latency = 0.05
    fake_lm.script([Fault.hang()])  # the first request hangs for good; the others must still be served
    hung = socket.create_connection(("127.0.0.1", fake_lm.port))
    body = b'{"model":"x","messages":[]}'
    hung.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False, timeout=10)

    async def run() -> list:
        return await asyncio.gather(*[lm.acomplete(MSGS) for _ in range(128)])

    # wait until the hung request is logged so it takes the Fault
    for _ in range(200):
        if fake_lm.requests:
            break
        threading.Event().wait(0.01)
    out = asyncio.run(run())
    hung.close()
    assert len(out) == 128 and len(fake_lm.requests) == 129


def test_fake_server_autofill_json_and_models(fake_lm: FakeLMServer) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{fake_lm.base_url}/models", timeout=5) as r:
        assert json.loads(r.read())["data"][0]["id"] == "fake"
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    pred = dspex.Predict("question -> answer: int, ok: bool, tags: list[str]")(question="x", lm=lm, adapter=dspex.JSONAdapter())
    assert pred.answer == 1 and pred.ok is True and pred.tags and isinstance(pred.tags[0], str)
    fake_lm.autofill = False
    with pytest.raises(dspex.LMBadResponse):
        lm.complete(MSGS, cache=False)


@pytest.mark.timeout(30)
def test_fake_server_subprocess() -> None:
    with FakeLMServer.subprocess(latency=0.01) as server:
        server.script(["scripted", Fault.rate_limit(retry_after=0.1), "after 429"])
        lm = dspex.LM("openai/fake", api_base=server.base_url, cache=False)
        assert lm.complete(MSGS).text == "scripted"
        assert lm.complete(MSGS).text == "after 429"
        reqs = server.requests
        assert len(reqs) == 3 and reqs[2]["time"] - reqs[1]["time"] >= 0.1
        server.reset()
        assert server.requests == []
        pid = server.pid
    import os

    with pytest.raises(OSError):
        os.kill(pid, 0)


def test_dummy_lm_modes() -> None:
    lm = DummyLM(["[[ ## answer ## ]]\nraw"], autofill=False)
    p = dspex.Predict("question -> answer")
    assert p(question="x", lm=lm).answer == "raw"
    with pytest.raises(IndexError):
        p(question="x", lm=lm)
    assert asyncio.run(p.acall(question="x", lm=DummyLM())).answer == "fake answer"
