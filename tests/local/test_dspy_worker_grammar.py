"""DSPy in workers on the embedded model: the bridge's dspy.LM sends a grammar per request.

* The grammar reaches the server: a FakeLMServer sees a ``grammar`` body field when the
  LM spec says ``grammar=True`` and none otherwise (real pool, real DSPy).
* The grammar is the one for the prompt DSPy wrote (ChatAdapter and JSONAdapter
  wording, types from the prompt), and no grammar when the prompt's fields cannot be
  read (never a broken request).
* For real: Predict and ChainOfThought in a worker against the embedded model; every
  reply parses with the right types, and no worker starts its own llama server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspex
from dspex.local import LocalModelService
from dspex.pool.pool import Pool
from dspex.testing import FakeLMServer

pytestmark = pytest.mark.timeout(240)

ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off", "PYTHONFAULTHANDLER": "1"}
MAX_TOKENS = 96  # short replies: the model runs on a shared CPU


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    # No DSPEX_LOCAL_BASE_URL on purpose: the LM spec's api_base is all a worker needs.
    p = Pool(
        "grammar-test",
        size=1,
        handlers=["dspex.bridge.dspy_handlers"],
        preload=["dspy"],
        env=ENV,
        call_timeout_s=200,
    )
    p.start()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLMServer]:
    with FakeLMServer() as server:
        yield server


def _spec(base_url: str, grammar: bool | None) -> dict[str, Any]:
    lm = dspex.LM(
        "openai/fake",
        api_base=base_url,
        cache=False,
        num_retries=0,
        max_tokens=200,
        temperature=0.0,
        grammar=grammar,
    )
    return lm.to_spec()


# --------------------------------------------------------------------------- wire (fake server)


@pytest.mark.timeout(120)
def test_grammar_reaches_the_server_only_when_the_spec_says_so(pool: Pool, fake: FakeLMServer) -> None:
    for grammar, adapter in ((True, None), (True, "json"), (None, None), (False, None)):
        fake.reset()
        out = pool.call(
            "dspy.run",
            module="ChainOfThought",
            signature="question -> answer: int",
            inputs={"question": "2+2?"},
            lm=_spec(fake.base_url, grammar),
            adapter=adapter,
            usage=False,
        )
        assert isinstance(out["outputs"]["answer"], int)
        bodies = [r["json"] for r in fake.requests if r["path"].endswith("/chat/completions")]
        assert bodies, fake.requests
        body = bodies[-1]
        if grammar:
            assert "grammar" in body, body.keys()
            if adapter == "json":
                assert body["grammar"].startswith('root ::= "{')
                assert '\\"reasoning\\": ' in body["grammar"] and '\\"answer\\": ' in body["grammar"]
            else:
                assert "[[ ## reasoning ## ]]" in body["grammar"] and "[[ ## answer ## ]]" in body["grammar"]
                assert "int ::=" in body["grammar"]
            assert body["max_tokens"] == 200  # the hosted_vllm spelling is kept
        else:
            assert "grammar" not in body
        assert body["model"] == "fake"


def test_grammar_for_dspy_prompts() -> None:
    """The grammar is read off the messages DSPy's adapters really write."""
    import dspy

    from dspex.bridge._lm import grammar_for_messages
    from dspex.native.adapters import ChatAdapter
    from dspex.native.grammar import gbnf_for
    from dspex.native.signature import signature

    spec = "question, context: list[str] -> reasoning, answer: int, tags: list[str], ok: bool"
    msgs = dspy.ChatAdapter().format(
        dspy.Signature(spec), demos=[], inputs={"question": "q", "context": ["c"]}
    )
    assert grammar_for_messages(msgs, 300) == gbnf_for(signature(spec), ChatAdapter(), max_tokens=300)
    msgs = dspy.JSONAdapter().format(
        dspy.Signature(spec), demos=[], inputs={"question": "q", "context": ["c"]}
    )
    assert grammar_for_messages(msgs, 300) == gbnf_for(signature(spec), "json", max_tokens=300)
    cot = dspy.ChainOfThought("question -> choice: Literal['yes', 'no']")
    msgs = dspy.ChatAdapter().format(cot.predict.signature, demos=[], inputs={"question": "q"})
    grammar = grammar_for_messages(msgs, 128)
    assert grammar is not None and '"yes"' in grammar and "[[ ## reasoning ## ]]" in grammar
    # Not a DSPy prompt, an unknown type, or a reminder that disagrees with the system message: no grammar.
    assert grammar_for_messages([{"role": "user", "content": "hello"}], 100) is None
    unknown = [
        {
            "role": "user",
            "content": "Respond with the corresponding output fields, starting with the field "
            "`[[ ## a ## ]]` (must be formatted as a valid Python MyModel), and then ending with the marker "
            "for `[[ ## completed ## ]]`.",
        }
    ]
    assert grammar_for_messages(unknown, 100) is None
    mismatch = [
        {
            "role": "system",
            "content": "Your output fields are:\n1. `a` (str): \n2. `b` (str):\nAll "
            "interactions will be structured in the following way",
        },
        {
            "role": "user",
            "content": "Respond with the corresponding output fields, starting with the "
            "field `[[ ## a ## ]]`, and then ending with the marker for `[[ ## completed ## ]]`.",
        },
    ]
    assert grammar_for_messages(mismatch, 100) is None


# --------------------------------------------------------------------------- the embedded model


def _children(pids: list[int]) -> list[str]:
    """Command lines of the processes whose parent is one of ``pids``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) in pids:
                out.append(
                    (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.mark.slow
def test_dspy_in_a_worker_parses_on_the_embedded_model(
    pool: Pool, local_service: LocalModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dspex.local.service as service_module

    monkeypatch.setattr(service_module, "_default", None)
    monkeypatch.setattr(service_module, "_default_lm", None)
    url = local_service.ensure_running()
    server_pid = local_service.status()["pid"]
    lm = dspex.local.default_lm().copy(max_tokens=MAX_TOKENS, cache=False)
    assert lm.to_spec()["grammar"] is True and lm.api_base == url

    pred = dspex.predict(
        "question -> answer: int", {"question": "What is 2 + 3?"}, impl="dspy", lm=lm, pool=pool
    )
    assert isinstance(pred["answer"], int)
    pred = dspex.predict(
        "topic -> keywords: list[str]", {"topic": "the planet Mars"}, impl="dspy", lm=lm, pool=pool
    )
    assert isinstance(pred["keywords"], list) and all(isinstance(k, str) for k in pred["keywords"])

    cot = dspex.chain_of_thought("question -> answer: bool", impl="dspy", lm=lm, pool=pool)
    pred = cot(question="Is Jupiter larger than Mars?")
    assert isinstance(pred["answer"], bool) and isinstance(pred["reasoning"], str) and pred["reasoning"]
    out = pool.call(
        "dspy.run",
        module="ChainOfThought",
        signature="question, search_queries: list[str] -> refined_queries: list[str]",
        inputs={"question": "Which planet has the most moons?", "search_queries": ["moons"]},
        lm=lm.to_spec(),
        usage=False,
    )
    refined = out["outputs"]["refined_queries"]
    assert isinstance(refined, list) and all(isinstance(q, str) for q in refined)

    # The worker used the host's server: same server process, and no llama server below any worker.
    assert local_service.status()["pid"] == server_pid
    assert not [c for c in _children(pool.workers()) if "llama" in c or "dspex.local" in c]
