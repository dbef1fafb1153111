"""Worker sessions: module handles, per-call LM binding, concurrency isolation."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

import dspex
from dspex.testing import FakeLMServer

from .conftest import lm_for

pytestmark = pytest.mark.timeout(120)


def test_four_sessions_with_different_lms_never_mix(fake_lm: FakeLMServer, dspy_pool) -> None:
    """4 sessions (2 servers x 2 model names), threads calling at once: each request reaches
    the server and model of its own session's LM."""
    with FakeLMServer() as other:
        other.reset()
        setups = [(fake_lm, "alpha"), (fake_lm, "beta"), (other, "gamma"), (other, "delta")]
        mods = [dspex.predictor("predict", "question -> answer", impl="dspy", lm=lm_for(srv, model), pool=dspy_pool)
                for srv, model in setups]
        n = 6
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(mods))

        def work(mod: dspex.api.WorkerModule, model: str) -> None:
            try:
                barrier.wait()
                for i in range(n):
                    pred = mod(question=f"{model} #{i}")
                    assert isinstance(pred.answer, str)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(m, model)) for m, (_, model) in zip(mods, setups, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for m in mods:
            m.close()
        assert not errors, errors
        for srv, names in ((fake_lm, {"alpha", "beta"}), (other, {"gamma", "delta"})):
            seen = Counter()
            for r in srv.requests:
                model = r["json"]["model"]
                question = r["json"]["messages"][-1]["content"]
                assert model in names, f"{model} reached the wrong server"
                assert f"{model} #" in question, f"a {model} request carried another session's input"
                seen[model] += 1
            assert seen == {name: n for name in names}


def test_create_call_state_delete(fake_lm: FakeLMServer, dspy_pool) -> None:
    lm = lm_for(fake_lm)
    mod = dspex.predictor("chain_of_thought", "question -> answer: int", impl="dspy", lm=lm, pool=dspy_pool)
    sid = mod.session
    assert mod.module_id in dspy_pool.call("dspy.modules", session=sid)
    fake_lm.script(["[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\n7\n\n[[ ## completed ## ]]"])
    assert mod(question="?").answer == 7
    state = mod.dump_state()
    assert set(state) == {"predict"} and state["predict"]["signature"]["fields"][1]["prefix"] == "Reasoning:"
    mod.close()
    assert mod.module_id not in dspy_pool.call("dspy.modules", session=sid)
    with pytest.raises(RuntimeError, match="closed"):
        mod(question="?")


def test_lm_travels_by_name_not_secret(fake_lm: FakeLMServer, dspy_pool, monkeypatch) -> None:
    """An LM spec never carries a key: the worker reads the variable named by api_key_env."""
    monkeypatch.setenv("DSPEX_TEST_KEY", "host-secret")
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, api_key_env="DSPEX_TEST_KEY", cache=False)
    spec = lm.to_spec()
    assert "host-secret" not in repr(spec)
    dspex.predict("question -> answer", {"question": "?"}, impl="dspy", lm=lm, pool=dspy_pool)
    auth = fake_lm.requests[-1]["headers"].get("authorization") or fake_lm.requests[-1]["headers"].get("Authorization")
    # The worker's environment has no DSPEX_TEST_KEY (it was set after the pool started).
    assert auth is not None and "host-secret" not in auth
    with pytest.raises(dspex.RemoteError, match="api_key"):
        dspy_pool.call("dspy.run", module="Predict", signature="q -> a", inputs={"q": "x"},
                       lm={"model": "openai/x", "api_key": "leak"})


def test_module_allowlist(dspy_pool) -> None:
    with pytest.raises(dspex.RemoteError, match="allowlist"):
        dspy_pool.call("dspy.create", module="os.system", signature="q -> a")


def test_worker_module_recreated_after_worker_loss(fake_lm: FakeLMServer, dspy_pool) -> None:
    """If the session's module is gone (worker replaced), the handle re-creates it with its state."""
    mod = dspex.predictor("predict", "question -> answer", impl="dspy", lm=lm_for(fake_lm), pool=dspy_pool,
                          demos=[{"question": "a?", "answer": "b"}])
    try:
        dspy_pool.call("dspy.delete", module_id=mod.module_id, session=mod.session)  # simulate the loss
        fake_lm.script(["[[ ## answer ## ]]\nok\n\n[[ ## completed ## ]]"])
        assert mod(question="c?").answer == "ok"
        # The re-created module kept the demo: it is in the prompt.
        assert any("a?" in m["content"] for m in fake_lm.requests[-1]["json"]["messages"])
    finally:
        mod.close()


def test_usage_reported_inside_a_context(fake_lm: FakeLMServer, dspy_pool) -> None:
    lm = lm_for(fake_lm)
    with dspex.context() as usage:
        pred = dspex.predict("question -> answer", {"question": "?"}, impl="dspy", lm=lm, pool=dspy_pool)
    assert usage.calls == 1 and usage.prompt_tokens > 0
    assert pred.get_lm_usage()
    # Outside a context nobody collects usage: the worker skips DSPy's tracker.
    assert not dspex.predict("question -> answer", {"question": "?"}, impl="dspy", lm=lm, pool=dspy_pool).get_lm_usage()


def test_inline_and_threaded_run_agree(dspy_pool) -> None:
    from dspex import router
    from dspex.router import dispatch

    spec = {"kind": "dummy", "answers": {"answer": "x"}, "always": True}
    kw = {"module": "Predict", "signature": "question -> answer", "inputs": {"question": "?"}, "lm": spec}
    a = dspy_pool.call_with("dspy.run", kwargs=kw)
    b = dspy_pool.call_with("dspy.run_inline", kwargs=kw)
    assert a["outputs"] == b["outputs"] == {"answer": "x"}
    # The API's choice: unknown or slow LMs -> threaded; LMs seen answering fast -> inline.
    d = router.decide("predict", None, impl="dspy")
    assert d.handlers == ("dspy.run",)
    assert dispatch.handler_for(d, "never-seen") == "dspy.run"
    dispatch.observe("slow-lm", 0.2)
    dispatch.observe("fast-lm", 0.001)
    assert dispatch.handler_for(d, "slow-lm") == "dspy.run"
    assert dispatch.handler_for(d, "fast-lm") == "dspy.run_inline"
