"""Issue 13, findings 2, 7 (head, usage) and 8: the LM client against a hostile loopback server.

Every test here failed (or hung until its timeout) before the fix. The deadline tests
assert the typed error, not a duration: the old client finished a trickled reply only
after ~30 s, far beyond the per-test timeout, so a slow deadline fails them too.
"""

from __future__ import annotations

import asyncio

import pytest

import dspex
from dspex.native._h1 import MAX_HEAD
from dspex.testing.hostile_server import (
    Exchange,
    HostileServer,
    bad_usage,
    big_body,
    chat_reply,
    continue_100,
    endless_headers,
    huge_head,
    trickle,
)

pytestmark = pytest.mark.timeout(20)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def lm_for(server: HostileServer, **kw: object) -> dspex.LM:
    kw.setdefault("cache", False)
    kw.setdefault("num_retries", 0)
    return dspex.LM("openai/hostile", api_base=server.base_url, **kw)  # type: ignore[arg-type]


def run_both(lm: dspex.LM, messages: list[dict[str, str]], mode: str) -> dspex.Completion:
    if mode == "sync":
        return lm.complete(messages)
    return asyncio.run(lm.acomplete(messages))


MODES = ["sync", "async"]


# --- finding 2: one deadline per call ------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_trickled_reply_hits_the_total_deadline(mode: str) -> None:
    # ~250 bytes at one per 0.1 s: 25 s of trickle; each read returns in 0.1 s, so only a
    # deadline over the whole call stops it
    with HostileServer(trickle(every=0.1)) as server, pytest.raises(dspex.LMTimeout):
        run_both(lm_for(server, timeout=1.0), ask("hi"), mode)


@pytest.mark.parametrize("mode", MODES)
def test_trickle_retries_each_get_one_deadline(mode: str) -> None:
    with HostileServer(trickle(every=0.1)) as server:
        lm = lm_for(server, timeout=0.5, num_retries=2)
        lm._backoff_base = 0.01
        with pytest.raises(dspex.LMTimeout):
            run_both(lm, ask("hi"), mode)
        assert len(server.requests) == 3  # timeouts are retryable: each attempt had its own deadline


@pytest.mark.parametrize("mode", MODES)
def test_endless_headers_are_cut_off_typed(mode: str) -> None:
    with HostileServer(endless_headers()) as server, pytest.raises(dspex.LMBadResponse, match="head over"):
        run_both(lm_for(server, timeout=10.0), ask("hi"), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunked", [False, True])
def test_large_body_is_read_whole(mode: str, chunked: bool) -> None:
    size = 8 << 20
    with HostileServer(big_body(size, chunked=chunked)) as server:
        out = run_both(lm_for(server, timeout=15.0), ask("big"), mode)
    assert len(out.text) == size and out.text.count("x") == size


def test_very_large_body_is_read_in_linear_time() -> None:
    # 96 MiB in 64 KiB reads: the old sync client re-copied its whole buffer on every read
    # (~30 s here, the issue measured 59 s for 128 MiB); linear reading takes a second or two,
    # so this test's timeout, not a wall-clock assertion, separates the two
    size = 96 << 20
    with HostileServer(big_body(size)) as server:
        out = lm_for(server, timeout=60.0).complete(ask("huge"))
    assert len(out.text) == size


# --- finding 7: typed errors, same head limit sync and async -----------------------------
@pytest.mark.parametrize("mode", MODES)
def test_head_over_64k_but_under_the_limit_is_fine(mode: str) -> None:
    with HostileServer(huge_head(100_000)) as server:
        assert run_both(lm_for(server), ask("hello"), mode).text == "hello"


@pytest.mark.parametrize("mode", MODES)
def test_head_over_the_limit_is_lm_bad_response(mode: str) -> None:
    with HostileServer(huge_head(MAX_HEAD + 10_000)) as server, pytest.raises(dspex.LMBadResponse, match="head over"):
        run_both(lm_for(server), ask("hello"), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "usage",
    [
        '{"prompt_tokens": "abc", "completion_tokens": 1}',
        '{"prompt_tokens": 1e400, "completion_tokens": 1}',
        '{"prompt_tokens": 1000000000000000000000000000000, "completion_tokens": 1}',
        '{"prompt_tokens": -4, "completion_tokens": 1}',
        '{"prompt_tokens": 2.5, "completion_tokens": 1}',
        '{"prompt_tokens": true, "completion_tokens": 1}',
        '{"prompt_tokens": 1, "completion_tokens": [1]}',
        '"lots"',
        '{"prompt_tokens": ' + "9" * 5000 + "}",
    ],
    ids=["str", "inf", "huge", "negative", "fraction", "bool", "list", "not-object", "5000-digits"],
)
def test_bad_usage_numbers_are_lm_bad_response(mode: str, usage: str) -> None:
    with HostileServer(bad_usage(usage)) as server, pytest.raises(dspex.LMBadResponse) as info:
        run_both(lm_for(server), ask("hi"), mode)
    assert not info.value.retryable


@pytest.mark.parametrize("mode", MODES)
def test_good_usage_forms_are_accepted(mode: str) -> None:
    with HostileServer(bad_usage('{"prompt_tokens": 7.0, "completion_tokens": "5"}')) as server:
        out = run_both(lm_for(server), ask("hi"), mode)
    assert out.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


# --- finding 8: interim responses and connections in doubt --------------------------------
@pytest.mark.parametrize("early_hints", [False, True])
def test_100_continue_never_desyncs_the_connection_sync(early_hints: bool) -> None:
    with HostileServer(continue_100(early_hints=early_hints)) as server:
        lm = lm_for(server, cache=True)
        texts = [lm.complete(ask(f"prompt-{i}-{early_hints}")).text for i in range(4)]
        assert texts == [f"prompt-{i}-{early_hints}" for i in range(4)]
        # what was cached under each prompt is that prompt's reply
        assert [lm.complete(ask(f"prompt-{i}-{early_hints}")).text for i in range(4)] == texts
        assert server.connections == 1  # the connection stayed usable and in sync


async def test_100_continue_never_desyncs_the_connection_async() -> None:
    with HostileServer(continue_100()) as server:
        lm = lm_for(server)
        texts = [(await lm.acomplete(ask(f"a-{i}"))).text for i in range(4)]
        assert texts == [f"a-{i}" for i in range(4)]
        assert server.connections == 1


def _reply_plus_stray_bytes(ex: Exchange, req: dict) -> None:
    text = req["messages"][-1]["content"]
    ex.send(chat_reply(text) + chat_reply("stray: " + text))  # one reply too many


@pytest.mark.parametrize("mode", MODES)
def test_connection_with_stray_bytes_is_closed_not_reused(mode: str) -> None:
    with HostileServer(_reply_plus_stray_bytes) as server:
        lm = lm_for(server)

        async def both() -> list[str]:
            return [(await lm.acomplete(ask(f"p{i}"))).text for i in range(3)]

        texts = [lm.complete(ask(f"p{i}")).text for i in range(3)] if mode == "sync" else asyncio.run(both())
        assert texts == ["p0", "p1", "p2"]
        assert server.connections == 3  # each connection was in doubt after its reply


def _switching_protocols(ex: Exchange, req: dict) -> None:
    ex.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")


@pytest.mark.parametrize("mode", MODES)
def test_101_is_a_typed_error(mode: str) -> None:
    with HostileServer(_switching_protocols) as server, pytest.raises(dspex.LMBadResponse, match="101"):
        run_both(lm_for(server), ask("hi"), mode)
