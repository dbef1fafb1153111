"""The embedded model for real: a few short grammar-constrained calls, every reply parses.

Kept to a handful of calls with small ``max_tokens``: the model runs on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest

import dspex
import dspex.local.service as local_service_module
from dspex.errors import LMError
from dspex.local import LocalModelService, default_lm
from dspex.native.adapters import ChatAdapter
from dspex.native.grammar import gbnf_for
from dspex.native.signature import signature

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MAX_TOKENS = 80


@pytest.fixture
def lm(local_service: LocalModelService, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """default_lm() resolved against the package's server (adopted through the state file)."""
    from dspex.settings import reset_config

    for var in ("DSPEX_LM", "DSPEX_API_BASE", "DSPEX_CONFIG", "DSPEX_NO_LOCAL_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(local_service_module, "_default", None)
    monkeypatch.setattr(local_service_module, "_default_lm", None)
    local_service.ensure_running()
    reset_config()
    yield default_lm()
    reset_config()


def test_default_lm_points_at_the_service(lm: Any, local_service: LocalModelService) -> None:
    assert lm.model == f"openai/{local_service.alias}"  # the fast model (conftest), not LM_MODEL
    assert lm.api_base == local_service.ensure_running()
    assert lm.supports_grammar is True
    assert lm.temperature == 0.0
    assert default_lm() is lm  # reused while the server URL is unchanged


CASES: list[tuple[str, dict[str, str]]] = [
    ("question -> answer", {"question": "What is the capital of France?"}),
    ("question -> answer: int", {"question": "What is 2 + 3?"}),
    ("question -> is_true: bool", {"question": "Is the sky blue?"}),
    ("text -> sentiment: Literal['positive', 'negative']", {"text": "I love this movie!"}),
    ("topic -> keywords: list[str]", {"topic": "cooking pasta"}),
    ("question -> reasoning, answer: int", {"question": "Tom has 3 apples and eats one. How many are left?"}),
]


def test_grammar_constrained_replies_parse_in_dspex_and_dspy(lm: Any) -> None:
    """Raw completions under the grammar parse with dspex's ChatAdapter and DSPy's (the oracle)."""
    dspy = pytest.importorskip("dspy")
    adapter = ChatAdapter()
    for spec, inputs in CASES:
        sig = signature(spec)
        messages = adapter.format(sig, demos=[], inputs=inputs)
        grammar = gbnf_for(sig, adapter, max_tokens=MAX_TOKENS)
        completion = lm.complete(messages, grammar=grammar, max_tokens=MAX_TOKENS, cache=False)
        ours = adapter.parse(sig, completion.text)  # raises ParseError on failure
        theirs = dspy.ChatAdapter().parse(dspy.Signature(spec), completion.text)
        assert ours == theirs, (spec, completion.text)
        assert set(ours) == set(sig.output_fields)


def test_native_predict_uses_the_embedded_model_with_a_grammar(lm: Any, tmp_path: Any) -> None:
    """No LM configured anywhere: Predict falls back to the embedded model and its grammar."""
    cwd = os.getcwd()
    os.chdir(tmp_path)  # no dspex.toml / [tool.dspex] above: nothing configured
    try:
        from dspex.settings import reset_config

        reset_config()
        pred = dspex.Predict("question -> answer: int", max_tokens=MAX_TOKENS, cache=False)(
            question="What is 7 + 1?"
        )
        assert isinstance(pred.answer, int)
        weird = Literal['say "hi" \\ [[x]]', "plain"]
        sig = signature("question -> choice").with_updated_fields("choice", type_=weird)
        pred = dspex.Predict(sig, max_tokens=MAX_TOKENS, cache=False)(question="Pick one.")
        assert pred.choice in ('say "hi" \\ [[x]]', "plain")
        cot = dspex.ChainOfThought("question -> answer: bool", max_tokens=MAX_TOKENS, cache=False)
        pred = cot(question="Is 10 greater than 3?")
        assert isinstance(pred.answer, bool) and isinstance(pred.reasoning, str) and pred.reasoning
    finally:
        os.chdir(cwd)


def test_an_invalid_grammar_is_an_error_not_a_dead_server(lm: Any, local_service: LocalModelService) -> None:
    url = local_service.ensure_running()
    pid = local_service.status()["pid"]
    reply = httpx.post(
        f"{url}/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
            "grammar": 'root ::= "unclosed',
        },
        timeout=60,
    )
    assert reply.status_code >= 400 and "invalid GBNF grammar" in reply.text
    with pytest.raises(LMError):
        lm.complete(
            [{"role": "user", "content": "Hi"}],
            grammar="root ::= (",
            max_tokens=2,
            cache=False,
            num_retries=0,
        )
    status = local_service.status()
    assert status["healthy"] is True and status["pid"] == pid
