"""Bounded fuzzing (hypothesis): whatever the input, only dspex error types come out.

Covers ``signature()``, both adapters' ``parse``, the LM reply decoder (through a real
``LM`` over a :class:`MockTransport`, so status, error-body and usage handling are in
the path) and the HTTP/1.1 response reader under it.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dspex
from dspex.errors import DspexError, LMError
from dspex.native._h1 import BadResponse, Response, ResponseReader
from dspex.native.adapters import ChatAdapter, JSONAdapter
from dspex.native.transport import MockTransport, Request

pytestmark = pytest.mark.timeout(240)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

# --- signature() ---------------------------------------------------------------------------
SIG_TOKENS = [
    "a", "b", "question", "answer", "x_1", "->", "->", ",", ":", " ", "[", "]", "|", "(", ")", "str", "int",
    "float", "bool", "list", "dict", "tuple", "set", "Optional", "Union", "Literal", "Any", "None", "'q'", '"q"',
    "1", "-2", "3.5", "...", "=", "\\", "\n", "typing.", "dspy.", "Image", "é", "\x00", "#",
]  # fmt: skip
sig_text = st.one_of(
    st.lists(st.sampled_from(SIG_TOKENS), max_size=40).map("".join),
    st.text(max_size=60),
    st.integers(1, 3000).map(lambda n: "a -> b: " + "list[" * n + "int" + "]" * n),
    st.integers(1, 3000).map(lambda n: "a -> b: " + "Optional[" * n + "int" + "]" * n),
    st.integers(1, 3000).map(lambda n: "a -> b: " + "(" * n + "int" + ")" * n),
)


@FUZZ
@given(sig_text)
def test_signature_raises_only_dspex_errors(spec: str) -> None:
    try:
        sig = dspex.signature(spec)
    except DspexError:
        return
    assert sig.output_fields


# --- adapters' parse ----------------------------------------------------------------------
SIGS = [
    dspex.signature(s)
    for s in (
        "q -> answer",
        "q -> n: int",
        "q -> x: float, ok: bool",
        "q -> items: list[int]",
        "q -> d: dict[str, int]",
        "q -> choice: Literal['yes', 'no']",
        "q -> maybe: Optional[int], pair: tuple[int, str]",
        "q -> nested: list[dict[str, list[float]]]",
    )
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
REPLY_TOKENS = [
    "{", "}", "[", "]", '"', "'", ":", ",", "\n", " ", "[[ ## ", " ## ]]", "answer", "n", "x", "ok", "items",
    "d", "choice", "maybe", "pair", "nested", "completed", "true", "null", "None", "1", "-0", "1e999", "NaN",
    "9" * 5000, "(", ")", "\\u12", "\\", "```json", "```", "yes", "#", "//",
]  # fmt: skip
reply_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(REPLY_TOKENS), max_size=60).map("".join),
    st.dictionaries(st.sampled_from(["answer", "n", "x", "ok", "items", "d", "choice", "maybe", "pair", "nested"]),
                    json_values, max_size=5).map(lambda d: json.dumps(d)),
    st.integers(1, 5000).map(lambda n: '{"n": ' + "[" * n + "1" + "]" * n + "}"),
    st.integers(1, 3000).map(lambda n: "[[ ## n ## ]]\n" + "[" * n),
)  # fmt: skip


@FUZZ
@given(st.sampled_from(SIGS), st.sampled_from([ChatAdapter(), JSONAdapter()]), reply_text)
def test_adapter_parse_raises_only_parse_errors(sig, adapter, text: str) -> None:
    try:
        out = adapter.parse(sig, text)
    except dspex.ParseError:
        return
    assert set(out) == set(sig.output_fields)


# --- the LM reply decoder (through LM + MockTransport) ---------------------------------------
def _valid_reply(content: object, usage: object) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}], "usage": usage, "model": "m"}


body_bytes = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(json_values, json_values).map(lambda cu: json.dumps(_valid_reply(*cu)).encode()),
    st.tuples(json_values, st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens"]), json_values))
    .map(lambda cu: json.dumps(_valid_reply(*cu)).encode()),
    st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 100_000).map(lambda n: b'{"error": ' + b"[" * n + b"]" * n + b"}"),
    st.just(b'{"usage": {"prompt_tokens": ' + b"9" * 5000 + b'}, "choices": []}'),
)
statuses = st.sampled_from([200, 200, 200, 201, 204, 301, 400, 401, 404, 408, 413, 422, 429, 500, 503, 599])
header_maps = st.dictionaries(
    st.sampled_from(["retry-after", "retry-after-ms", "content-type", "location"]),
    st.text(max_size=30) | st.sampled_from(["1", "-5", "1e999", "nan", "Wed, 21 Oct 2015 07:28:00 GMT", "9" * 400]),
    max_size=3,
)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_lm_reply_decoder_raises_only_lm_errors(provider: str) -> None:
    @FUZZ
    @given(statuses, header_maps, body_bytes)
    def check(status: int, headers: dict[str, str], body: bytes) -> None:
        def answer(req: Request) -> Response:
            return Response(status, headers, body)

        lm = dspex.LM(f"{provider}/m", api_base="http://127.0.0.1:9/v1", cache=False, num_retries=0,
                      transport=MockTransport(answer))  # fmt: skip
        try:
            out = lm.complete([{"role": "user", "content": "hi"}])
        except LMError:
            return
        assert isinstance(out.text, str) and all(v >= 0 for v in out.usage.values())

    check()


# --- the HTTP/1.1 response reader ------------------------------------------------------------
HEAD_TOKENS = [
    "HTTP/1.1 ", "HTTP/1.0 ", "200 OK", "100 Continue", "101 X", "204", "\r\n", "\r\n\r\n", "Content-Length: ",
    "Transfer-Encoding: chunked", "Content-Encoding: gzip", "Connection: close", "0", "5", "-1", "ff", "zz", ";x",
    "abcde", ": ", "X", "99999999999999999999",
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(HEAD_TOKENS), max_size=40).map("".join), st.integers(1, 64), st.booleans())
def test_response_reader_raises_only_its_own_errors(stream: str, piece: int, close: bool) -> None:
    data = stream.encode("latin-1")
    reader = ResponseReader()
    try:
        for i in range(0, len(data), piece):
            if reader.feed(data[i : i + piece]) is not None:
                return
        if close:
            reader.eof()
    except (BadResponse, ConnectionError):
        return
