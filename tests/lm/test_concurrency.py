"""Many threads and tasks, different LMs and contexts at once: each gets its own."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest

import dspex
from dspex.testing import DummyLM, FakeLMServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def second_server():
    with FakeLMServer() as server:
        yield server


def test_threads_and_tasks_with_different_lms(fake_lm: FakeLMServer, second_server: FakeLMServer) -> None:
    qa = dspex.Predict("question -> answer")
    lms = {
        ("a", "m1"): dspex.LM("openai/m1", api_base=fake_lm.base_url, cache=False),
        ("a", "m2"): dspex.LM("openai/m2", api_base=fake_lm.base_url, cache=False),
        ("b", "m3"): dspex.LM("openai/m3", api_base=second_server.base_url, cache=False),
    }
    keys = list(lms)
    usages: dict[str, dspex.Usage] = {}
    errors: list[BaseException] = []

    def thread_body(i: int) -> None:
        key = keys[i % 3]
        try:
            with dspex.context(lm=lms[key]) as usage:
                for j in range(5):
                    qa(question=f"t{i}-{j}")
            usages[f"t{i}"] = usage
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    async def task_body(i: int) -> None:
        key = keys[i % 3]
        with dspex.context(lm=lms[key]) as usage:
            for j in range(5):
                await qa.acall(question=f"a{i}-{j}")
                await asyncio.sleep(0)
        usages[f"a{i}"] = usage

    async def all_tasks() -> None:
        await asyncio.gather(*[task_body(i) for i in range(12)])

    threads = [threading.Thread(target=thread_body, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    asyncio.run(all_tasks())
    for t in threads:
        t.join()
    assert not errors

    # each request went to the right server with the right model, carrying its own question
    seen_a = Counter(r["json"]["model"] for r in fake_lm.requests)
    seen_b = Counter(r["json"]["model"] for r in second_server.requests)
    assert seen_a == {"m1": 40, "m2": 40}
    assert seen_b == {"m3": 40}
    for server, models in ((fake_lm, {"m1": 0, "m2": 1}), (second_server, {"m3": 2})):
        for r in server.requests:
            user = r["json"]["messages"][-1]["content"]
            who = int(user.split("## question ## ]]\n")[1].split("-")[0][1:])
            assert who % 3 == models[r["json"]["model"]]
    # usage sums per context: 5 calls each, only its own model
    for name, usage in usages.items():
        i = int(name[1:])
        assert usage.calls == 5
        assert set(usage.by_model) == {f"openai/{keys[i % 3][1]}"}


def test_nested_contexts_sum_usage() -> None:
    qa = dspex.Predict("question -> answer")
    lm1, lm2 = DummyLM(model="d/1"), DummyLM(model="d/2")
    with dspex.context(lm=lm1) as outer:
        qa(question="x")
        with dspex.context(lm=lm2) as inner:
            qa(question="y")
            qa(question="z")
    assert inner.calls == 2 and set(inner.by_model) == {"d/2"}
    assert outer.calls == 3 and set(outer.by_model) == {"d/1", "d/2"}
    assert outer.total_tokens > inner.total_tokens > 0


def test_batch_threads_keep_order_and_context(fake_lm: FakeLMServer) -> None:
    qa = dspex.Predict("question -> answer")
    fake_lm.responder = lambda body: "[[ ## answer ## ]]\n" + body["messages"][-1]["content"].split("\n")[1]
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    with dspex.context(lm=lm) as usage:
        preds = qa.batch([{"question": f"q{i}"} for i in range(40)], concurrency=16)
    assert [p.answer for p in preds] == [f"q{i}" for i in range(40)]
    assert usage.calls == 40


async def test_abatch_order_and_errors(fake_lm: FakeLMServer) -> None:
    qa = dspex.Predict("question -> answer")
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False, num_retries=0)
    fake_lm.responder = lambda body: (
        "garbage" if "q3" in body["messages"][-1]["content"] else "[[ ## answer ## ]]\n" + body["messages"][-1]["content"].split("\n")[1]
    )
    out = await qa.abatch([{"question": f"q{i}"} for i in range(8)], concurrency=4, lm=lm, return_exceptions=True)
    assert isinstance(out[3], dspex.ParseError)
    assert [p.answer for i, p in enumerate(out) if i != 3] == [f"q{i}" for i in range(8) if i != 3]
    with pytest.raises(dspex.ParseError):
        await qa.abatch([{"question": f"q{i}"} for i in range(8)], concurrency=4, lm=lm)


def test_batch_errors(fake_lm: FakeLMServer) -> None:
    qa = dspex.Predict("question -> answer")
    lm = DummyLM(responder=lambda m: "bad" if "q2" in m[-1]["content"] else "[[ ## answer ## ]]\nok")
    out = qa.batch([{"question": f"q{i}"} for i in range(5)], lm=lm, return_exceptions=True)
    assert isinstance(out[2], dspex.ParseError) and out[0].answer == "ok"
    with pytest.raises(dspex.ParseError):
        qa.batch([{"question": f"q{i}"} for i in range(5)], lm=lm)
    ex = dspex.Example(question="q0", answer="gold").with_inputs("question")
    assert qa.batch([ex], lm=lm)[0].answer == "ok"


async def test_one_async_pool_per_event_loop(fake_lm: FakeLMServer) -> None:
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False)
    await lm.acomplete([{"role": "user", "content": "x"}])

    def other_loop() -> str:
        return asyncio.run(lm.acomplete([{"role": "user", "content": "y"}])).text

    text = await asyncio.to_thread(other_loop)
    assert text and len(lm._transport._async._by_loop) >= 1
    await lm.acomplete([{"role": "user", "content": "z"}])
