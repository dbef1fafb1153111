"""Issue 13, finding 1: every request field that shapes the reply is in the cache key.

The old key dropped every field whose name contained "token" (meant for secrets), so a
reply truncated at max_tokens=5 was served to max_tokens=500.
"""

from __future__ import annotations

import uuid

import pytest

import dspex
from dspex.native import cache as cache_mod
from dspex.testing import FakeLMServer, Reply

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def memory_cache(monkeypatch: pytest.MonkeyPatch):
    for var in ("DSPEX_CACHE", "DSPEX_CACHE_DIR", "DSPEX_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    cache_mod.reset_default_cache()
    yield
    cache_mod.reset_default_cache()


def prompt() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"tell me a story {uuid.uuid4()}"}]


def test_reply_truncated_at_max_tokens_5_is_not_served_to_500(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Reply("Once"), Reply("Once upon a time, the end.")])
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url)
    msgs = prompt()
    assert lm.complete(msgs, max_tokens=5).text == "Once"
    long = lm.complete(msgs, max_tokens=500)
    assert long.text == "Once upon a time, the end." and not long.cached
    assert [r["json"]["max_tokens"] for r in fake_lm.requests] == [5, 500]
    assert lm.complete(msgs, max_tokens=5).cached  # and each is still its own hit


@pytest.mark.parametrize(
    "field,a,b",
    [
        ("max_completion_tokens", 5, 500),
        ("stop_token_ids", [1], [2]),
        ("logit_bias_tokens", {"1": 1}, {"1": -1}),
        ("min_tokens", 1, 50),
    ],
)
def test_token_named_fields_are_in_the_key(fake_lm: FakeLMServer, field: str, a: object, b: object) -> None:
    fake_lm.script([Reply("first"), Reply("second")])
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url)
    msgs = prompt()
    assert lm.complete(msgs, **{field: a}).text == "first"
    assert lm.complete(msgs, **{field: b}).text == "second"
    assert len(fake_lm.requests) == 2


def test_lm_level_max_tokens_is_in_the_key(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Reply("short"), Reply("long")])
    msgs = prompt()
    assert dspex.LM("openai/fake", api_base=fake_lm.base_url, max_tokens=5).complete(msgs).text == "short"
    assert dspex.LM("openai/fake", api_base=fake_lm.base_url, max_tokens=500).complete(msgs).text == "long"


def test_secrets_stay_out_of_the_key(fake_lm: FakeLMServer) -> None:
    fake_lm.script([Reply("only")])
    msgs = prompt()
    a = dspex.LM("openai/fake", api_base=fake_lm.base_url, api_key="sk-one-1234")
    b = dspex.LM("openai/fake", api_base=fake_lm.base_url, api_key="sk-two-5678")
    assert a.complete(msgs).text == "only"
    assert b.complete(msgs).cached  # a different key is the same request


def test_to_spec_keeps_token_named_options_and_drops_secrets() -> None:
    lm = dspex.LM("openai/x", api_base="http://127.0.0.1:9/v1", max_completion_tokens=7, stop_token_ids=[3], api_secret="s")
    spec = lm.to_spec()
    assert spec["max_completion_tokens"] == 7 and spec["stop_token_ids"] == [3]
    assert "api_secret" not in spec and "s" not in spec.values()


def test_lm_kwargs_keep_token_named_options() -> None:
    lm = dspex.LM("openai/x", api_base="http://127.0.0.1:9/v1", max_completion_tokens=7, stop_token_ids=[3], api_key="k")
    assert lm.kwargs["max_completion_tokens"] == 7 and lm.kwargs["stop_token_ids"] == [3]
    assert "api_key" not in lm.kwargs
