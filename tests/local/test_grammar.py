"""GBNF grammars from signatures: they compile in llama.cpp, accept exactly what parses."""

from __future__ import annotations

import enum
import os
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from dspex.native.adapters import ChatAdapter, JSONAdapter
from dspex.native.grammar import gbnf_for, gbnf_literal
from dspex.native.signature import signature

from ._gbnf import GrammarChecker

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


# (signature, outputs): the outputs are a valid prediction for that signature
CASES: list[tuple[Any, dict[str, Any]]] = [
    ("question -> answer", {"answer": "Paris [the capital] of France.\nSecond line."}),
    ("question -> answer: int", {"answer": -42}),
    ("question -> answer: float", {"answer": 3.25}),
    ("question -> ok: bool", {"ok": False}),
    ("text -> label: Literal['positive', 'negative', 'neutral']", {"label": "neutral"}),
    ("question -> items: list[str]", {"items": ["a", "b c", 'd "quoted"']}),
    ("question -> counts: dict[str, int]", {"counts": {"x": 1, "y": 2}}),
    ("question -> maybe: Optional[int]", {"maybe": None}),
    ("question -> nums: list[int]", {"nums": [1, 2, 3]}),
    ("question -> reasoning, answer: int", {"reasoning": "2 and 2 make 4.", "answer": 4}),
    (
        "q -> title, tags: list[str], score: float, done: bool",
        {"title": "T", "tags": [], "score": 0.5, "done": True},
    ),
]


@pytest.fixture(params=range(len(CASES)), ids=[c[0] for c in CASES])
def case(request: pytest.FixtureRequest) -> tuple[Any, dict[str, Any]]:
    spec, outputs = CASES[request.param]
    return signature(spec), outputs


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_grammar_compiles_in_llama_cpp(
    checker: GrammarChecker, case: tuple[Any, dict[str, Any]], adapter: str
) -> None:
    sig, _ = case
    assert checker.compiles(gbnf_for(sig, adapter))


def test_chat_reply_formatted_by_the_adapter_is_accepted_and_parses(
    checker: GrammarChecker, case: tuple[Any, dict[str, Any]]
) -> None:
    sig, outputs = case
    adapter = ChatAdapter()
    demo = {**dict.fromkeys(sig.input_fields, "x"), **outputs}
    reply = adapter.format(sig, demos=[demo], inputs=dict.fromkeys(sig.input_fields, "y"))[2]["content"]
    assert reply.startswith("[[ ## ")
    grammar = gbnf_for(sig, adapter)
    assert checker.accepts(grammar, reply), reply
    assert checker.accepts(grammar, reply.rstrip("\n"))
    assert adapter.parse(sig, reply) == outputs


def test_json_reply_is_accepted_and_parses(checker: GrammarChecker, case: tuple[Any, dict[str, Any]]) -> None:
    import json

    sig, outputs = case
    parts = [f"  {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}" for k, v in outputs.items()]
    reply = "{\n" + ",\n".join(parts) + "\n}"
    grammar = gbnf_for(sig, JSONAdapter())
    assert checker.accepts(grammar, reply), reply
    assert JSONAdapter().parse(sig, reply) == outputs


@pytest.mark.parametrize(
    "reply",
    [
        "[[ ## answer ## ]]\nfour\n\n[[ ## completed ## ]]",  # not an int
        "[[ ## answer ## ]]\n4.5\n\n[[ ## completed ## ]]",  # not an int
        "[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]",  # unknown field
        "Sure! [[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]",  # text before the marker
        "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]] and more",  # text after completed
        "[[ ## answer ## ]]\n4\n\n[[ ## compl",  # a cut-off completed marker
        "[[ ## reasoning ## ]]\nr",  # a field missing
    ],
)
def test_int_grammar_rejects(checker: GrammarChecker, reply: str) -> None:
    assert not checker.accepts(gbnf_for("question -> answer: int", "chat"), reply)


@pytest.mark.parametrize("tail", ["", "\n", "\n\n[[ ## completed ## ]]", "\n\n[[ ## completed ## ]]\n"])
def test_reply_may_end_after_the_last_value(checker: GrammarChecker, tail: str) -> None:
    # The model may stop (EOS) after the last value, as it does unconstrained; the
    # adapter reads the reply the same with or without the completed marker.
    sig = signature("question -> reasoning, answer")
    reply = "[[ ## reasoning ## ]]\nIt is in the passage.\n\n[[ ## answer ## ]]\nNeptune" + tail
    assert checker.accepts(gbnf_for(sig, "chat"), reply), reply
    assert ChatAdapter().parse(sig, reply) == {"reasoning": "It is in the passage.", "answer": "Neptune"}


def test_text_cannot_open_another_field_or_be_empty(checker: GrammarChecker) -> None:
    g = gbnf_for("question -> reasoning, answer", "chat")
    ok = "[[ ## reasoning ## ]]\nbrackets [x] are fine\n\n[[ ## answer ## ]]\nyes\n\n[[ ## completed ## ]]"
    assert checker.accepts(g, ok)
    sneaky = (
        "[[ ## reasoning ## ]]\nr\n[[ ## answer ## ]]\nno\n\n[[ ## answer ## ]]\nyes\n\n[[ ## completed ## ]]"
    )
    assert not checker.accepts(g, sneaky)
    empty = "[[ ## reasoning ## ]]\n\n\n[[ ## answer ## ]]\nyes\n\n[[ ## completed ## ]]"
    assert not checker.accepts(g, empty)


def test_text_length_cap(checker: GrammarChecker) -> None:
    g = gbnf_for("question -> answer", "chat", max_chars=10)
    assert "{0,9}" in g
    assert checker.accepts(g, "[[ ## answer ## ]]\n0123456789\n\n[[ ## completed ## ]]")
    assert not checker.accepts(g, "[[ ## answer ## ]]\n0123456789A\n\n[[ ## completed ## ]]")


def test_max_tokens_shrinks_the_cap_to_fit_every_field() -> None:
    g = gbnf_for("question -> reasoning, answer", "chat", max_tokens=64)
    assert "{0,599}" not in g
    assert "plain-" in g


def test_plain_text_cannot_echo_placeholders_or_open_code_fences(checker: GrammarChecker) -> None:
    sig = signature("question -> answer")
    g = gbnf_for(sig, "chat")
    ok = "[[ ## answer ## ]]\nParis (the {1} capital, `x` = {  }), see [1].\n\n[[ ## completed ## ]]"
    assert checker.accepts(g, ok)
    assert ChatAdapter().parse(sig, ok)["answer"].startswith("Paris")
    for echo in ("{answer}", "The answer is {answer}.", "```python\nprint(1)\n```", "{question} {context}"):
        assert not checker.accepts(g, f"[[ ## answer ## ]]\n{echo}\n\n[[ ## completed ## ]]"), echo
    # a field named for code keeps braces and fences
    code = gbnf_for(signature("task -> code"), "chat")
    assert checker.accepts(code, "[[ ## code ## ]]\n```python\nd = {x: 1}\n```\n\n[[ ## completed ## ]]")


def test_bool_literal_enum_values(checker: GrammarChecker) -> None:
    sig = signature("q -> ok: bool")
    g = gbnf_for(sig, "chat")
    for text, value in (("True", True), ("False", False)):
        reply = f"[[ ## ok ## ]]\n{text}\n\n[[ ## completed ## ]]"
        assert checker.accepts(g, reply)
        assert ChatAdapter().parse(sig, reply) == {"ok": value}
    assert not checker.accepts(g, "[[ ## ok ## ]]\nyes\n\n[[ ## completed ## ]]")


LITERAL_VALUES = ['say "hi"', "back\\slash", "two\nlines", " padded ", "[[x]]", "'quoted'", "ünïcödé ✓", ""]


def test_literal_values_are_escaped(checker: GrammarChecker) -> None:
    lit = Literal[tuple(LITERAL_VALUES)]  # type: ignore[valid-type]
    sig = signature("q -> choice").with_updated_fields("choice", type_=lit)
    for kind in ("chat", "json"):
        g = gbnf_for(sig, kind)
        assert checker.compiles(g), g
    g = gbnf_for(sig, "chat")
    adapter = ChatAdapter()
    for value in LITERAL_VALUES:
        # the grammar's own spelling of each value must parse back to exactly that value
        spelled = _chat_spelling(value)
        reply = f"[[ ## choice ## ]]\n{spelled}\n\n[[ ## completed ## ]]"
        assert checker.accepts(g, reply), (value, reply)
        assert adapter.parse(sig, reply) == {"choice": value}
    assert not checker.accepts(g, '[[ ## choice ## ]]\nsay "ho"\n\n[[ ## completed ## ]]')


def _chat_spelling(value: str) -> str:
    import json

    from dspex.native.grammar import _chat_literal

    lit = _chat_literal(value)  # the GBNF literal; undo its escapes (a subset of JSON's)
    return str(json.loads(lit.replace("\\x", "\\u00")))


def test_gbnf_literal_escapes() -> None:
    assert gbnf_literal('a"b\\c\nd\te\x01') == '"a\\"b\\\\c\\nd\\te\\x01"'


def test_enum_and_model_types_compile(checker: GrammarChecker) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Person(pydantic.BaseModel):
        name: str
        age: int
        tags: list[str]

    base = signature("q -> a")
    for ann in (
        Color,
        Level,
        Person,
        list[Person],
        dict[str, list[int]],
        tuple[int, str],
        Any,
        list[str] | None,
    ):
        # gbnf_for needs only .output_fields[*].annotation (a DSPy signature works too)
        duck = SimpleNamespace(output_fields={"a": SimpleNamespace(annotation=ann)})
        for kind in ("chat", "json"):
            assert checker.compiles(gbnf_for(duck, kind)), (ann, kind)
    for member in Color:
        reply = f"[[ ## a ## ]]\n{member.value}\n\n[[ ## completed ## ]]"
        sig = base.with_updated_fields("a", type_=Color)
        assert checker.accepts(gbnf_for(sig, "chat"), reply)
        assert ChatAdapter().parse(sig, reply) == {"a": member}
    for member in Level:
        reply = f"[[ ## a ## ]]\n{member.name}\n\n[[ ## completed ## ]]"
        sig = base.with_updated_fields("a", type_=Level)
        assert checker.accepts(gbnf_for(sig, "chat"), reply)
        assert ChatAdapter().parse(sig, reply) == {"a": member}
    sig = base.with_updated_fields("a", type_=Person)
    reply = '[[ ## a ## ]]\n{"name": "Ann", "age": 3, "tags": ["x"]}\n\n[[ ## completed ## ]]'
    assert checker.accepts(gbnf_for(sig, "chat"), reply)
    assert ChatAdapter().parse(sig, reply)["a"] == Person(name="Ann", age=3, tags=["x"])


def test_cached_per_signature_and_adapter() -> None:
    sig = signature("question -> answer: int")
    assert gbnf_for(sig, "chat") is gbnf_for(sig, ChatAdapter())
    assert gbnf_for(sig, "json") is gbnf_for(sig, JSONAdapter())
    assert gbnf_for(sig, "chat") != gbnf_for(sig, "json")


def test_bad_adapter() -> None:
    with pytest.raises(ValueError):
        gbnf_for("q -> a", "xml")
