"""Example / Prediction behave like DSPy's; templates compile, check and render."""

from __future__ import annotations

from typing import Any

import pytest

from dspex.errors import TemplateError
from dspex.native.signature import signature
from dspex.native.template import Template
from dspex.native.values import Example, Prediction


def test_example_like_dspy(dspy: Any) -> None:
    ours = Example(question="q", answer="a", dspy_uuid="u").with_inputs("question")
    theirs = dspy.Example(question="q", answer="a", dspy_uuid="u").with_inputs("question")
    assert len(ours) == len(theirs) == 2
    assert ours.keys() == theirs.keys() and ours.values() == theirs.values() and ours.items() == theirs.items()
    assert list(ours) == list(theirs)
    assert ours.inputs().toDict() == theirs.inputs().toDict()
    assert ours.labels().toDict() == theirs.labels().toDict()
    assert ours.question == "q" and ours["answer"] == "a" and "question" in ours and ours.get("x", 1) == 1
    assert ours.without("answer").toDict() == theirs.without("answer").toDict()
    assert ours.copy(answer="b").answer == "b" and ours.answer == "a"
    assert ours == Example(question="q", answer="a", dspy_uuid="u")
    assert hash(ours) == hash(Example(question="q", answer="a", dspy_uuid="u"))
    assert ours.to_dict() == theirs.toDict()
    ours.extra = 1
    assert ours["extra"] == 1
    with pytest.raises(ValueError):
        Example(a=1).inputs()
    with pytest.raises(AttributeError):
        _ = ours.missing
    assert repr(Example({"a": 1})) == repr(dspy.Example({"a": 1}))


def test_prediction_like_dspy(dspy: Any) -> None:
    p = Prediction(answer="4", score=0.5)
    assert p.answer == "4" and float(p) == 0.5 and p + 1 == 1.5 and p < 1 and p / 2 == 0.25
    assert repr(p) == repr(dspy.Prediction(answer="4", score=0.5))
    c = Prediction.from_completions([{"answer": "a"}, {"answer": "b"}])
    assert c.answer == "a" and c.completions.answer == ["a", "b"] and len(c.completions) == 2
    assert c.completions[1].answer == "b"
    assert repr(c) == repr(dspy.Prediction.from_completions([{"answer": "a"}, {"answer": "b"}]))


def test_demos_may_be_examples(dspy: Any) -> None:
    from dspex.native.adapters import ChatAdapter

    from . import oracle

    demo = {"question": "q0", "answer": "a0"}
    ours = ChatAdapter().format(signature("question -> answer"), [Example(**demo)], {"question": "q"})
    theirs = oracle.dspy_format("chat", oracle.dspy_signature("question -> answer", None), [dspy.Example(**demo)], {"question": "q"})
    assert ours == theirs


def test_template_render_and_fields() -> None:
    sig = signature("context: list[str], question -> answer")
    t = Template("Q: {question}\nC: {context} {{literal}} {question}", sig)
    assert t.fields == ("question", "context")
    out = t.render(question="why?", context=["a", "b"])
    assert out == 'Q: why?\nC: ["a", "b"] {literal} why?'
    assert t(question="x", context=[]) == "Q: x\nC: [] {literal} x"


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("Hello {name", 6, "unclosed"),
        ("a } b", 2, "single '}'"),
        ("x {} y", 2, "empty placeholder"),
        ("{a b}", 0, "invalid placeholder"),
        ("ok {question} {nope}", 14, "unknown placeholder {nope}"),
    ],
)
def test_template_errors(text: str, position: int, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(text, signature("question -> answer"))
    assert fragment in str(info.value) and info.value.position == position


def test_template_missing_value() -> None:
    t = Template("{a} and {b}")
    with pytest.raises(TemplateError, match=r"\{b\}") as info:
        t.render(a=1)
    assert info.value.placeholder == "b"
