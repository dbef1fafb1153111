"""One spine: the API and pipeline steps send identical payloads through the router's
dispatcher, explain() names the handlers the pool receives, secrets never travel, and
both paths raise the same dspex error types (issue 10; issue 13 finding 4).

A real DSPy pool runs every call; ``Recorder`` writes down what that pool is sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import dspex
from dspex.errors import ImplementationUnavailable, LMAuthError, RemoteError, StepFailed
from dspex.pipeline import Pipeline, op, worker
from dspex.pool.pool import Pool
from dspex.router import dispatch
from dspex.router.results import from_remote
from dspex.testing import FakeLMServer
from dspex.testing.fake_server import Fault

from .conftest import ENV, lm_for

pytestmark = pytest.mark.timeout(180)

KEY = "sk-spine-0123456789abcdef"


class QA(dspex.Signature):
    """Answer with a number."""

    question: str = dspex.InputField(desc="a sum to work out")
    answer: int = dspex.OutputField(desc="digits only")


class Recorder:
    """A real Pool; every call sent to it is written down as (handler, kwargs)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.name = pool.name
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call_with(self, handler: str, args: Any = (), kwargs: Any = None, **options: Any) -> Any:
        self.calls.append((handler, dict(kwargs or {})))
        return self.pool.call_with(handler, args, kwargs, **options)

    async def acall_detailed(self, handler: str, /, *args: Any, session: Any = None, timeout: Any = None,
                             callbacks: Any = None, on_event: Any = None, **kwargs: Any) -> Any:
        self.calls.append((handler, dict(kwargs)))
        return await self.pool.acall_detailed(handler, *args, session=session, timeout=timeout,
                                              callbacks=callbacks, on_event=on_event, **kwargs)

    def __getattr__(self, name: str) -> Any:  # start, stats, drop_session, ...
        return getattr(self.pool, name)

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
def rec(dspy_pool: Any) -> Iterator[Recorder]:
    dispatch._latency.clear()  # every call starts on dspy.run (no inline choice from earlier tests)
    yield Recorder(dspy_pool)


def _reply(*fields: tuple[str, str]) -> str:
    return "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in fields) + "[[ ## completed ## ]]"


def _without_id(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "module_id"}


def test_predict_api_and_pipeline_send_the_same_payload(fake_lm: FakeLMServer, rec: Recorder) -> None:
    fake_lm.script([_reply(("answer", "4"))] * 2)
    lm = lm_for(fake_lm)
    with dspex.context():  # a usage sink, as every pipeline step has one
        pred = dspex.predict(QA, {"question": "2+2"}, impl="dspy", lm=lm, pool=rec)
    result = Pipeline([worker("dspy.Predict", signature=QA, lm=lm)], pools={"dspy": rec}).run(question="2+2")
    (h1, api), (h2, step) = rec.take()
    assert pred.answer == result["answer"] == 4
    assert h1 == h2 == "dspy.run" and api == step
    # Instructions and field descriptions travel; the LM as its secret-free spec.
    assert api["signature"] == {"spec": "question -> answer: int", "instructions": "Answer with a number.",
                                "fields": {"question": {"desc": "a sum to work out"},
                                           "answer": {"desc": "digits only"}}}
    assert api["lm"] == lm.to_spec() and api["module"] == "Predict"
    assert dspex.explain("predict", QA, impl="dspy").handlers == (h1,)


def test_chain_of_thought_handle_and_step_send_the_same_payload(fake_lm: FakeLMServer, rec: Recorder) -> None:
    fake_lm.script([_reply(("reasoning", "adding"), ("answer", "4"))] * 2)
    lm = lm_for(fake_lm)
    with dspex.context():
        cot = dspex.chain_of_thought(QA, impl="dspy", lm=lm, pool=rec)
        try:
            pred = cot(question="2+2")
        finally:
            cot.close()
    step = worker("dspy.ChainOfThought", signature=QA, lm=lm)
    result = Pipeline([step], pools={"dspy": rec}).run(question="2+2")
    calls = rec.take()
    (create_h, create), (call_h, call), *_, (run_h, run) = calls
    assert pred.answer == result["answer"] == 4 and result["reasoning"] == "adding"
    # The handle splits the one payload in two: made once, called many times.
    assert {**_without_id(create), **_without_id(call)} == run
    assert run["signature"]["instructions"] == "Answer with a number." and run["module"] == "ChainOfThought"
    # explain() names exactly what was sent, for the handle (the API default) and the step.
    assert dspex.explain("chain_of_thought", QA, impl="dspy").handlers == (create_h, call_h) == ("dspy.create",
                                                                                                 "dspy.call")
    assert dspex.explain("chain_of_thought", QA, impl="dspy", form="call").handlers == (run_h,)
    assert step.decision().handlers == (run_h,)


def lookup(topic: str) -> str:
    """Look a topic up."""
    return f"{topic}: two moons"


def test_react_handle_and_step_send_the_same_payload(fake_lm: FakeLMServer, rec: Recorder) -> None:
    turn = [_reply(("next_thought", "look"), ("next_tool_name", "lookup"), ("next_tool_args", '{"topic": "mars"}')),
            _reply(("next_thought", "done"), ("next_tool_name", "finish"), ("next_tool_args", "{}")),
            _reply(("reasoning", "from the notes"), ("answer", "2"))]
    fake_lm.script(turn * 2)
    lm = lm_for(fake_lm)
    with dspex.context():
        agent = dspex.react(QA, tools=[lookup], lm=lm, pool=rec, max_iters=3)
        try:
            pred = agent(question="how many moons has mars?")
        finally:
            agent.close()
    step = worker("dspy.ReAct", signature=QA, lm=lm, tools=[lookup], max_iters=3)
    result = Pipeline([step], pools={"dspy": rec}).run(question="how many moons has mars?")
    (create_h, create), (call_h, call), *_, (run_h, run) = rec.take()
    assert pred.answer == result["answer"] == 2
    assert pred.trajectory["observation_0"] == "mars: two moons"
    assert {**_without_id(create), **_without_id(call)} == run
    assert run["tools"][0]["name"] == "lookup" and run["tools"][0]["callback"] == "dspex.tool.lookup"
    assert dspex.explain("react", QA, impl="dspy").handlers == (create_h, call_h)
    assert step.decision().handlers == (run_h,) == ("dspy.run",)


def test_optimize_api_and_pipeline_send_the_same_payload(opt_pool: Any) -> None:
    opt = Recorder(opt_pool)
    trainset = [{"question": "1+1", "answer": 2}, {"question": "2+2", "answer": 4}]
    program = dspex.Predict(QA)
    lm = {"kind": "dummy", "answers": {"answer": "2"}, "always": True}
    res = dspex.optimize(program, trainset, optimizer="labeled", lm=lm, pool=opt, k=2)
    step = op("optimize", program=program, optimizer="labeled", lm=lm, pool=opt, k=2)
    out = Pipeline([step]).run(trainset=trainset)["optimized"]
    (h1, api), (h2, piped) = opt.take()
    assert h1 == h2 == "dspy.optimize" and api == piped
    assert res.state == out.state and len(res.state["demos"]) == 2
    d = dspex.explain("optimize")
    assert d.handlers == (h1,) and d.pool == "optimizer"


def test_retrieve_api_and_pipeline_send_the_same_payload(rec: Recorder) -> None:
    hits = dspex.retrieve("moons of mars", k=2, source="dense:solar_system", pool=rec)
    step = op("retrieve", source="dense:solar_system", k=2, reads={"query": "question"}, pool=rec)
    passages = Pipeline([step]).run(question="moons of mars")["passages"]
    (h1, api), (h2, piped) = rec.take()
    assert h1 == h2 == "dspy.embed_search" and api == piped and hits == passages and len(hits) == 2
    assert dspex.explain("retrieve", source="dense:solar_system").handlers == (h1,)
    # A natively served source runs in process on both paths: nothing reaches the pool.
    native = Pipeline([op("retrieve", source="bm25:solar_system", k=2, pool=rec)]).run(query="moons of mars")
    assert native["passages"] == dspex.retrieve("moons of mars", k=2, source="bm25:solar_system") and not rec.calls


def test_config_lm_travels_as_its_spec_on_both_paths(fake_lm: FakeLMServer, rec: Recorder, tmp_path: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The config [lm] table (api_key in it) goes through LM.to_spec() on every path."""
    from dspex import settings

    conf = tmp_path / "dspex.toml"
    conf.write_text(f'[lm]\nmodel = "openai/fake"\napi_base = "{fake_lm.base_url}"\napi_key = "{KEY}"\n'
                    "cache = false\nnum_retries = 0\n")
    monkeypatch.setenv("DSPEX_CONFIG", str(conf))
    settings.reset_config()
    try:
        fake_lm.script([_reply(("answer", "4"))] * 2)
        with dspex.context():
            dspex.predict(QA, {"question": "2+2"}, impl="dspy", pool=rec)
        Pipeline([worker("dspy.Predict", signature=QA)], pools={"dspy": rec}).run(question="2+2")
    finally:
        monkeypatch.delenv("DSPEX_CONFIG")
        settings.reset_config()
    (_, api), (_, step) = rec.take()
    assert api == step and KEY not in repr(api) and "api_key" not in api["lm"]
    assert api["lm"]["model"] == "openai/fake"


def test_disabled_local_model_is_one_error_type_on_every_path(rec: Recorder, tmp_path: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from dspex import settings

    conf = tmp_path / "dspex.toml"
    conf.write_text("[local]\nenabled = false\n")
    monkeypatch.setenv("DSPEX_CONFIG", str(conf))
    monkeypatch.delenv("DSPEX_LM", raising=False)
    settings.reset_config()
    try:
        for impl in ("native", "dspy"):
            with pytest.raises(ImplementationUnavailable, match="embedded local model is disabled"):
                dspex.predict(QA, {"question": "2+2"}, impl=impl, pool=rec)
        for step in (worker("dspy.Predict", signature=QA), dspex.native(QA)):
            with pytest.raises(StepFailed) as info:
                Pipeline([step], pools={"dspy": rec}).run(question="2+2")
            assert isinstance(info.value.cause, ImplementationUnavailable)
    finally:
        monkeypatch.delenv("DSPEX_CONFIG")
        settings.reset_config()
    assert rec.calls == []  # refused in the host: nothing was sent


# --------------------------------------------------------------------------- finding 4: the key leak

@pytest.fixture(scope="module")
def keyed_pool() -> Iterator[Any]:
    """A DSPy pool whose workers hold the API key in their environment (as in production)."""
    pool = Pool("bridge-keyed", size=1, handlers=["dspex.bridge.dspy_handlers"], preload=["dspy"],
                env={**ENV, "SPINE_KEY": KEY}, call_timeout_s=120)
    pool.start()
    try:
        yield pool
    finally:
        pool.close()


def _echo_key() -> Fault:
    return Fault.status(401, {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error"})


def _no_key(exc: BaseException) -> None:
    seen: BaseException | None = exc
    while seen is not None:
        assert KEY not in str(seen), type(seen)
        assert KEY not in str(getattr(seen, "remote_traceback", "")), type(seen)
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "cause", None)


def test_provider_error_echoing_the_key_is_scrubbed_and_typed(fake_lm: FakeLMServer, keyed_pool: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_KEY", KEY)
    lm = lm_for(fake_lm, api_key_env="SPINE_KEY")
    fake_lm.script([_echo_key()] * 3)
    errors = []
    for impl in ("dspy", "native"):
        with pytest.raises(LMAuthError) as info:
            dspex.predict(QA, {"question": "2+2"}, impl=impl, lm=lm, pool=keyed_pool)
        errors.append(info.value)
    with pytest.raises(StepFailed) as step_info:
        Pipeline([worker("dspy.Predict", signature=QA, lm=lm)], pools={"dspy": keyed_pool}).run(question="2+2")
    assert isinstance(step_info.value.cause, LMAuthError)
    # The provider really echoed the key, and the worker really sent it (from its env).
    assert any(KEY in str(r["headers"]) for r in fake_lm.requests)
    for exc in [*errors, step_info.value]:
        _no_key(exc)
    dspy_error = errors[0]
    assert isinstance(dspy_error.__cause__, RemoteError) and dspy_error.__cause__.code == "lm.auth"
    assert dspy_error.status == 401 and "***" in str(dspy_error)


def test_host_scrubs_what_an_untagged_worker_error_carries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second line of defence: the host mapping scrubs its own secrets from any error."""
    monkeypatch.setenv("SOME_PROVIDER_API_KEY", KEY)
    raw = RemoteError("httpx.HTTPError", f"401 for key {KEY}", f"Traceback ...\nkey={KEY}\n")
    out = from_remote(raw)
    assert isinstance(out, RemoteError) and KEY not in str(out) and KEY not in out.remote_traceback
    assert "***" in out.remote_message


def test_cli_predict_impl_dspy_scrubs_the_key_and_exits_3(fake_lm: FakeLMServer, tmp_path: Any) -> None:
    fake_lm.script([_echo_key()] * 6)
    conf = tmp_path / "dspex.toml"
    conf.write_text('[pools.dspy]\nsize = 1\nhandlers = ["dspex.bridge.dspy_handlers"]\npreload = ["dspy"]\n'
                    'env = { DSPEX_DSPY_CACHE = "off", LITELLM_LOCAL_MODEL_COST_MAP = "True" }\n')
    env = {**os.environ, "SPINE_KEY": KEY, "DSPEX_CONFIG": str(conf), "DSPEX_CACHE": "off",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    codes = {}
    for impl, debug in (("dspy", []), ("native", []), ("dspy-debug", ["--debug"])):
        out = subprocess.run(
            [sys.executable, "-m", "dspex.cli", "predict", "question -> answer", "question=2+2", "--impl",
             impl.removesuffix("-debug"), "--lm", "openai/fake", "--api-base", fake_lm.base_url,
             "--api-key-env", "SPINE_KEY", *debug],
            capture_output=True, text=True, timeout=150, env=env,
        )
        assert KEY not in out.stdout + out.stderr, (impl, out.stderr)
        codes[impl] = (out.returncode, out.stderr.strip().splitlines()[-1])
    assert codes["dspy"][0] == codes["native"][0] == codes["dspy-debug"][0] == 3, codes
    assert "***" in codes["dspy"][1] or "refused the credentials" in codes["dspy"][1]
