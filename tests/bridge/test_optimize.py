"""DSPy optimizers in a worker: end to end against the fake LM, progress, cancel, crash, resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import pytest

import dspex
from dspex.testing import FakeLMServer

from .conftest import lm_for

pytestmark = pytest.mark.timeout(180)

TRAIN = [dspex.Example(question=f"What is {i}+{i}?", answer=str(2 * i)).with_inputs("question") for i in range(1, 5)]

CONFIGS = {
    "labeled": {"k": 2},
    "bootstrap": {"max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    "bootstrap_rs": {"max_bootstrapped_demos": 1, "max_labeled_demos": 1, "num_candidate_programs": 1},
    "miprov2": {"auto": None, "num_candidates": 2, "num_trials": 2, "minibatch": False,
                "max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    "copro": {"breadth": 2, "depth": 1},
    "simba": {"bsize": 2, "num_candidates": 2, "max_steps": 1, "max_demos": 1},
    "gepa": {"max_metric_calls": 12},
}


def lenient(example: dspex.Example, prediction: dspex.Prediction) -> float:
    return 1.0 if prediction.answer else 0.0


def gepa_metric(example: dspex.Example, prediction: dspex.Prediction) -> dict:
    # Never perfect, so GEPA reflects (calls its reflection LM) instead of skipping.
    return {"score": 0.5, "feedback": "Answer with the number only."}


def assert_same_prompts(result: dspex.api.OptimizeResult, tmp_path) -> None:
    """The state runs natively (Predict.load) and in DSPy, with byte-identical prompts."""
    import dspy

    inputs = {"question": "What is 9+9?"}
    path = tmp_path / f"{result.optimizer}.json"
    result.save(path)
    cot = result.module == "ChainOfThought"
    native = (dspex.ChainOfThought if cot else dspex.Predict)("question -> answer").load(path)
    npred = native.predict if cot else native
    n_msgs = dspex.ChatAdapter().format(npred.signature, demos=npred.demos, inputs=inputs)
    dmod = (dspy.ChainOfThought if cot else dspy.Predict)("question -> answer")
    dmod.load(str(path))
    dpred = dmod.predict if cot else dmod
    d_msgs = dspy.ChatAdapter().format(dpred.signature, dpred.demos, inputs)
    assert n_msgs == d_msgs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_optimizer_end_to_end(name: str, fake_lm: FakeLMServer, opt_pool, tmp_path) -> None:
    events: list[dict] = []
    metric = gepa_metric if name == "gepa" else lenient
    result = dspex.optimize(dspex.Predict("question -> answer"), TRAIN, optimizer=name, metric=metric,
                            lm=lm_for(fake_lm), pool=opt_pool, progress=events.append, **CONFIGS[name])
    assert result.optimizer == name and result.module == "Predict"
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "done"
    if name != "labeled":
        assert result.lm_calls > 0 and result.metric_calls > 0
        assert len(fake_lm.requests) >= result.lm_calls
    if name in ("labeled", "bootstrap"):
        assert result.state["demos"], "few-shot optimizers must leave demos"
    assert_same_prompts(result, tmp_path)
    # The result is also a runnable native program.
    pred = result.program(question="What is 5+5?", lm=lm_for(fake_lm))
    assert isinstance(pred.answer, str)


def test_chain_of_thought_program_and_worker_metric(fake_lm: FakeLMServer, opt_pool, tmp_path) -> None:
    """A ChainOfThought program, metric given as 'module:function' (imported in the worker)."""
    prog = dspex.ChainOfThought("question -> answer")
    result = dspex.optimize(prog, TRAIN, optimizer="bootstrap", metric="bridge_test_metrics:lenient",
                            lm=lm_for(fake_lm), pool=opt_pool, max_bootstrapped_demos=2, max_labeled_demos=0)
    assert result.module == "ChainOfThought"
    assert len(result.state["predict"]["demos"]) == 2
    assert "reasoning" in result.state["predict"]["demos"][0]
    assert_same_prompts(result, tmp_path)


def test_unknown_option_is_a_clear_error(fake_lm: FakeLMServer, opt_pool) -> None:
    with pytest.raises(dspex.ConfigError, match="takes no option 'num_trails'") as info:
        dspex.optimize("question -> answer", TRAIN, optimizer="miprov2", metric=lenient, lm=lm_for(fake_lm),
                       pool=opt_pool, auto=None, num_trails=2)
    assert isinstance(info.value.__cause__, dspex.RemoteError) and info.value.__cause__.code == "option"


MIPRO_LONG = {"auto": None, "num_candidates": 2, "num_trials": 30, "minibatch": False,
              "max_bootstrapped_demos": 1, "max_labeled_demos": 1}


async def test_mipro_progress_streams_before_the_result(fake_lm: FakeLMServer, opt_pool) -> None:
    received: list[tuple[float, dict]] = []
    result = await dspex.aoptimize(
        dspex.Predict("question -> answer"), TRAIN, optimizer="miprov2", metric=lenient, lm=lm_for(fake_lm),
        pool=opt_pool, progress=lambda e: received.append((time.monotonic(), e)),
        **{**MIPRO_LONG, "num_trials": 3},
    )
    done_at = time.monotonic()
    trials = [e for _, e in received if e["kind"] == "trial"]
    assert [t["trial"] for t in trials] == [1, 2, 3, 4][: len(trials)] and len(trials) >= 3
    assert all(isinstance(t["score"], float) for t in trials)
    assert any(e["kind"] == "stage" for _, e in received)
    # Every event was delivered while the call was running, before the result came back.
    assert all(t <= done_at for t, _ in received)
    assert result.trials == [{k: v for k, v in t.items() if k != "kind"} for t in trials]
    assert result.score == max(t["score"] for t in trials)


async def test_cancelling_mipro_frees_the_worker(fake_lm: FakeLMServer, opt_pool) -> None:
    fake_lm.latency = 0.05
    pid_before = opt_pool.workers()[0]
    first_lm = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_event(e: dict) -> None:
        if e["kind"] == "lm":
            loop.call_soon_threadsafe(first_lm.set)

    task = asyncio.ensure_future(dspex.aoptimize(
        dspex.Predict("question -> answer"), TRAIN, optimizer="miprov2", metric=lenient, lm=lm_for(fake_lm),
        pool=opt_pool, progress=on_event, **MIPRO_LONG))
    await asyncio.wait_for(first_lm.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The worker stops the run itself (the metric/LM wrappers see ctx.cancelled) ...
    deadline = time.monotonic() + 8  # less than the pool's cancel grace: it was not killed
    while opt_pool.stats()["in_flight"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert opt_pool.stats()["in_flight"] == 0
    assert opt_pool.workers() == [pid_before]
    n = len(fake_lm.requests)
    await asyncio.sleep(0.5)
    assert len(fake_lm.requests) == n, "the cancelled optimization kept calling the LM"
    # ... and the same worker serves the next call.
    fake_lm.latency = 0.0
    assert opt_pool.call("dspy.ping")["pid"] == pid_before
    again = dspex.optimize("question -> answer", TRAIN, optimizer="labeled", lm=lm_for(fake_lm), pool=opt_pool, k=1)
    assert len(again.state["demos"]) == 1


def test_worker_crash_during_optimization(fake_lm: FakeLMServer, opt_pool) -> None:
    fake_lm.latency = 0.05
    started = threading.Event()
    pid: list[int] = []

    def on_event(e: dict) -> None:
        if e["kind"] == "start":
            pid.append(e["pid"])
        if e["kind"] == "lm":
            started.set()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            dspex.optimize(dspex.Predict("question -> answer"), TRAIN, optimizer="miprov2", metric=lenient,
                           lm=lm_for(fake_lm), pool=opt_pool, progress=on_event, **MIPRO_LONG)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(60)
    os.kill(pid[0], signal.SIGKILL)
    t.join(60)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], dspex.WorkerCrashed), errors
    fake_lm.latency = 0.0
    # The pool replaced the worker; the next call works.
    new_pid = opt_pool.call("dspy.ping", timeout=60)["pid"]
    assert new_pid != pid[0]


def test_checkpoint_resume(fake_lm: FakeLMServer, opt_pool, tmp_path) -> None:
    ckpt = tmp_path / "run.json"
    kw = {"optimizer": "bootstrap", "metric": lenient, "lm": lm_for(fake_lm), "pool": opt_pool,
          "checkpoint": ckpt, "max_bootstrapped_demos": 1, "max_labeled_demos": 0}
    first = dspex.optimize("question -> answer", TRAIN, **kw)
    saved = json.loads(ckpt.read_text())
    assert saved["completed"] and saved["result"]["state"] == first.state
    fake_lm.clear_requests()
    again = dspex.optimize("question -> answer", TRAIN, **kw)
    assert again.resumed and again.state == first.state
    assert fake_lm.requests == []  # a completed run is not repeated
    # An interrupted run (checkpoint not completed) runs again and says after how many trials.
    ckpt.write_text(json.dumps({"optimizer": "bootstrap", "completed": False, "trials": [{"trial": 1}]}))
    rerun = dspex.optimize("question -> answer", TRAIN, **kw)
    assert not rerun.resumed and rerun.resumed_after == 1 and rerun.lm_calls > 0
    assert json.loads(ckpt.read_text())["completed"]


async def test_optimize_events_async_iterator(fake_lm: FakeLMServer, opt_pool) -> None:
    kinds = []
    result = None
    async for event in dspex.api.optimize_events(
        "question -> answer", TRAIN, optimizer="miprov2", metric=lenient, lm=lm_for(fake_lm), pool=opt_pool,
        **{**MIPRO_LONG, "num_trials": 2},
    ):
        kinds.append(event["kind"])
        if event["kind"] == "result":
            result = event["result"]
    assert kinds[0] == "start" and kinds[-1] == "result" and "trial" in kinds
    assert kinds.index("trial") < kinds.index("result")
    assert isinstance(result, dspex.api.OptimizeResult) and result.trials
