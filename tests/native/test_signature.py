"""Signatures: parsing, errors with positions, immutability, caching, DSPy agreement."""

from __future__ import annotations

import pickle
import typing
from typing import Any, Literal, Optional, Union

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dspex.errors import SignatureError
from dspex.native.signature import (
    Field,
    InputField,
    OutputField,
    Signature,
    cleandoc,
    infer_prefix,
    signature,
)

from . import oracle
from .strategies import signatures

FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def test_basic_fields() -> None:
    sig = signature("context: list[str], question -> answer: int")
    assert list(sig.input_fields) == ["context", "question"]
    assert list(sig.output_fields) == ["answer"]
    ctx = sig.input_fields["context"]
    assert (ctx.name, ctx.kind, ctx.annotation, ctx.type_name) == ("context", "input", list[str], "list[str]")
    assert ctx.prefix == "Context:" and ctx.desc == "${context}"
    assert sig.output_fields["answer"].annotation is int
    assert sig.instructions == "Given the fields `context`, `question`, produce the fields `answer`."
    assert sig.signature == "context, question -> answer"
    assert signature(sig.to_string(types=True)) == sig


@pytest.mark.parametrize(
    ("text", "annotation", "name"),
    [
        ("str", str, "str"),
        ("float", float, "float"),
        ("bool", bool, "bool"),
        ("Any", Any, "Any"),
        ("dict[str, Any]", dict[str, Any], "dict[str, Any]"),
        ("Optional[int]", Optional[int], "Union[int, NoneType]"),  # noqa: UP045
        ("int | None", Optional[int], "Union[int, NoneType]"),  # noqa: UP045
        ("None | int", Optional[int], "Union[int, NoneType]"),  # noqa: UP045
        ("int | str", Union[int, str], "Union[int, str]"),  # noqa: UP007
        ("Union[int, str, None]", Union[int, str, None], "Union[int, str, NoneType]"),  # noqa: UP007
        ("Literal['a', \"b\"]", Literal["a", "b"], "Literal['a', 'b']"),
        ("Literal[1, True, None]", Literal[1, True, None], "Literal[1, True, None]"),
        ("tuple[int, ...]", tuple[int, ...], "tuple[int, Ellipsis]"),
        ("tuple[int, str]", tuple[int, str], "tuple[int, str]"),
        ("List[int]", typing.List[int], "list[int]"),  # noqa: UP006
        ("typing.Dict[str, int]", typing.Dict[str, int], "dict[str, int]"),  # noqa: UP006
        ("list[dict[str, tuple[int, float]]]", list[dict[str, tuple[int, float]]], "list[dict[str, tuple[int, float]]]"),
        ("set[int]", set[int], "set[int]"),
        ("list", list, "list"),
    ],
)
def test_types(text: str, annotation: Any, name: str, dspy: Any) -> None:
    sig = signature(f"x -> y: {text}")
    f = sig.output_fields["y"]
    assert f.annotation == annotation
    assert f.type_name == name
    theirs = oracle.dspy_signature(f"x -> y: {text}", None)
    assert theirs.output_fields["y"].annotation == annotation


@pytest.mark.parametrize(
    ("spec", "position", "fragment"),
    [
        ("question answer", 15, "missing '->'"),
        ("a -> b -> c", 7, "more than one '->'"),
        ("a, , b -> c", 3, "empty field name"),
        (", a -> b", 0, "empty field name"),
        ("a -> b, ,", 8, "empty field name"),
        ("a, a -> b", 3, "duplicate field name 'a'"),
        ("a -> a", 5, "duplicate field name 'a'"),
        ("a b -> c", 0, "invalid field name 'a b'"),
        ("1a -> c", 0, "invalid field name '1a'"),
        ("class -> c", 0, "invalid field name 'class'"),
        ("a: -> b", 3, "missing type"),
        ("a: foo -> b", 3, "unknown type 'foo'"),
        ("a: list[str -> b", 7, "'[' is never closed"),
        ("a: list[str]] -> b", 12, "']' without '['"),
        ("a: list[] -> b", 7, "empty type arguments"),
        ("a: dict[str] -> b", 3, "two type arguments"),
        ("a: list[int, str] -> b", 3, "exactly one type argument"),
        ("a: Optional -> b", 3, "needs type arguments"),
        ("a: int[str] -> b", 6, "does not take type arguments"),
        ("a: Literal[foo] -> b", 11, "Literal values"),
        ("a: Literal['x] -> b", 11, "unterminated string"),
        ("a: None -> b", 3, "None is not a field type"),
        ("a: os.path -> b", 3, "unknown type 'os.path'"),  # dotted names resolve (issue 11); a module is no type
        ("a: tuple[..., int] -> b", 3, "'...' is only allowed"),
        ("a: int str -> b", 7, "unexpected 's'"),
    ],
)
def test_errors_name_problem_and_position(spec: str, position: int, fragment: str) -> None:
    with pytest.raises(SignatureError) as info:
        signature(spec)
    err = info.value
    assert fragment in str(err), str(err)
    assert err.position == position, (err.position, str(err))
    assert err.spec == spec


def test_trailing_comma_and_empty_sides_match_dspy(dspy: Any) -> None:
    for spec in ["a, b, -> c", "-> c"]:  # no outputs ("a ->") is a SignatureError (issue 11)
        ours = signature(spec)
        theirs = oracle.dspy_signature(spec, None)
        assert list(ours.input_fields) == list(theirs.input_fields)
        assert list(ours.output_fields) == list(theirs.output_fields)
        assert ours.instructions == theirs.instructions


@FAST
@given(s=signatures())
def test_generated_specs_match_dspy_fields(s: dict[str, Any]) -> None:
    try:
        theirs = oracle.dspy_signature(s["spec"], s["instructions"])
    except Exception:
        assume(False)
    ours = signature(s["spec"], s["instructions"])
    assert ours.instructions == theirs.instructions
    for kind in ("input_fields", "output_fields"):
        mine, their = getattr(ours, kind), getattr(theirs, kind)
        assert list(mine) == list(their)
        for name, f in mine.items():
            assert f.annotation == their[name].annotation
            assert f.prefix == their[name].json_schema_extra["prefix"]
            assert f.desc == their[name].json_schema_extra["desc"]


@FAST
@given(spec=st.one_of(st.text(max_size=40), st.text(alphabet="ab:,->[]|'\" ().LiteralOptnUio", max_size=40)))
def test_fuzz_only_signature_errors(spec: str) -> None:
    try:
        sig = signature(spec)
    except SignatureError as e:
        assert e.spec == spec
        assert e.position is None or 0 <= e.position <= len(spec)
        return
    assert isinstance(sig, Signature)


@pytest.mark.parametrize(
    "name", ["camelCaseText", "snake_case_text", "text2number", "HTMLParser", "a", "x_y_z", "ID", "abc9Def", "__x"]
)
def test_infer_prefix_matches_dspy(name: str, dspy: Any) -> None:
    from dspy.signatures.signature import infer_prefix as theirs

    assert infer_prefix(name) == theirs(name)


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_cleandoc_matches_inspect(text: str) -> None:
    import inspect

    assert cleandoc(text) == inspect.cleandoc(text)


def test_immutable_hashable_and_equal_by_content() -> None:
    a = signature("q -> a: int")
    b = signature("q  ->  a: int")  # different spelling, same content
    assert a == b and hash(a) == hash(b)
    assert a != signature("q -> a")
    assert a != a.with_instructions("other")
    with pytest.raises(AttributeError):
        a.instructions = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.input_fields["x"] = a.input_fields["q"]  # type: ignore[index]
    assert {a: 1}[b] == 1
    assert pickle.loads(pickle.dumps(a)) == a


def test_cache_identity() -> None:
    assert signature("question -> answer") is signature("question -> answer")
    assert signature("question -> answer", "x") is signature("question -> answer", "x")
    assert signature("question -> answer", "x") is not signature("question -> answer")
    sig = signature("question -> answer")
    assert signature(sig) is sig
    assert Signature("question -> answer") is sig


def test_helpers() -> None:
    sig = signature("question -> answer", "Answer it.")
    cot = sig.prepend("reasoning", OutputField(prefix="Reasoning: Let's think", desc="${reasoning}"), str)
    assert list(cot.output_fields) == ["reasoning", "answer"]
    assert cot.output_fields["reasoning"].prefix == "Reasoning: Let's think"
    assert cot.instructions == "Answer it."
    assert sig.with_reasoning() == signature("question -> reasoning, answer", "Answer it.")
    assert sig.with_reasoning() is sig.with_reasoning()
    app = sig.append("context", InputField(desc="facts"), list[str])
    assert list(app.input_fields) == ["question", "context"]
    assert app.input_fields["context"].annotation == list[str]
    assert app.delete("context") == sig
    assert sig.delete("nope") is sig
    assert sig.with_instructions("New").instructions == "New"
    upd = sig.with_updated_fields("answer", int, desc="a number")
    assert upd.output_fields["answer"].annotation is int and upd.output_fields["answer"].desc == "a number"
    with pytest.raises(SignatureError):
        sig.append("question", InputField())
    with pytest.raises(SignatureError):
        sig.append("bad name", InputField())


def test_class_based() -> None:
    class QA(Signature):
        """Answer."""

        question: str = InputField(desc="q")
        answer: list[int] = OutputField()  # a string annotation is parsed too

    assert isinstance(QA, Signature)
    assert QA.instructions == "Answer."
    assert QA.output_fields["answer"].annotation == list[int]
    assert QA.input_fields["question"].desc == "q"

    class QA2(QA):
        extra: int = InputField()

    assert list(QA2.input_fields) == ["question", "extra"]
    assert QA2.instructions == "Answer."

    with pytest.raises(SignatureError, match="InputField"):

        class Bad(Signature):
            question: str


def test_dict_form_and_field_tuple() -> None:
    sig = signature({"q": (str, InputField()), "a": (int, OutputField(desc="n"))}, "Do it.")
    assert sig.output_fields["a"].annotation is int and sig.output_fields["a"].desc == "n"
    f = sig.output_fields["a"]
    assert isinstance(f, Field) and f.kind == "output" and f.type_name == "int"
