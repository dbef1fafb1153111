"""Reply parsing beyond the parity tests: errors carry the raw text; fuzz never crashes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspex.errors import ParseError
from dspex.native._parse import loads_lenient, parse_value
from dspex.native.adapters import ChatAdapter, JSONAdapter
from dspex.native.signature import signature

from .strategies import fragments

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
SIGS = [
    signature("q -> answer"),
    signature("q -> answer: int, why"),
    signature("q -> a: list[dict[str, int]], b: Optional[Literal['x', 'y']], c: tuple[int, str], d: bool"),
    signature("q -> a: float | None, b: Any, c: set[int]"),
]


@pytest.mark.parametrize("adapter", [ChatAdapter(), JSONAdapter()], ids=["chat", "json"])
@FUZZ
@given(text=st.one_of(st.text(max_size=80), fragments), data=st.data())
def test_fuzz_parsers_raise_only_parse_error(adapter: Any, text: str, data: st.DataObject) -> None:
    sig = data.draw(st.sampled_from(SIGS))
    header = data.draw(st.sampled_from(["", "[[ ## answer ## ]]\n", "[[ ## a ## ]] ", '{"a": ', "[[ ## d ## ]]\n"]))
    try:
        out = adapter.parse(sig, header + text)
    except ParseError as e:
        assert e.raw == header + text and e.adapter == adapter.name
        return
    assert list(out) == list(sig.output_fields)


@FUZZ
@given(text=st.one_of(st.text(max_size=60), fragments))
def test_fuzz_loads_lenient_never_raises(text: str) -> None:
    loads_lenient(text)


def test_parse_error_details() -> None:
    sig = signature("q -> answer: int, why")
    with pytest.raises(ParseError) as info:
        ChatAdapter().parse(sig, "[[ ## why ## ]]\nbecause")
    err = info.value
    assert err.missing == ["answer"] and err.found == {"why": "because"}
    assert err.raw == "[[ ## why ## ]]\nbecause" and err.adapter == "chat"
    with pytest.raises(ParseError) as info:
        ChatAdapter().parse(sig, "[[ ## answer ## ]]\nseven\n[[ ## why ## ]]\nx")
    assert info.value.missing == ["answer"] and "seven" in str(info.value)
    with pytest.raises(ParseError) as info:
        JSONAdapter().parse(sig, "no json here")
    assert info.value.adapter == "json"


def test_values() -> None:
    assert parse_value("7.0", int) == 7
    assert parse_value("yes", bool) is True
    with pytest.raises(ValueError):
        parse_value(" yes", bool)  # pydantic does not strip for bool
    assert parse_value("['a', 'b']", list[str]) == ["a", "b"]
    assert parse_value("None", Optional_int()) is None
    with pytest.raises(ValueError):
        parse_value("7.5", int)


def Optional_int() -> Any:
    from typing import Optional

    return Optional[int]  # noqa: UP045


def test_indented_header_and_same_line_value() -> None:
    out = ChatAdapter().parse(signature("q -> a, b: int"), "  [[ ## a ## ]]  x  \n\t[[ ## b ## ]] 3")
    assert out == {"a": "x", "b": 3}


_TYPES = [int, float, bool, str, list[int], list[str], dict[str, int], tuple[int, str], tuple[int, ...], set[int],
          "Optional[int]", "Union[int, str]", "Union[float, int]", "Union[bool, int]", "Literal[1, 2]",
          "Literal['a', 'b']", "Union[float, Any]", "Union[str, float]", "list[Optional[float]]", "dict[int, list[bool]]", "Any", "int | list[int]"]
_candidates = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-1000, 1000), st.floats(allow_nan=False),
        st.sampled_from(["7", " 7 ", "7.0", "7.5", "1e3", "+3", "07", "1_000", "yes", "no", "True", "off", "x",
                         "a", "b", "1", "2", "", "nan", "inf", "١"]),
        st.text(max_size=5),
    ),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.sampled_from(["1", "a", "2"]), c, max_size=2),
                        st.lists(c, max_size=3).map(tuple)),
    max_leaves=5,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(t=st.sampled_from(_TYPES), value=_candidates)
def test_validators_match_pydantic_lax(t: Any, value: Any, dspy: Any) -> None:
    """The coercion step equals pydantic's TypeAdapter(t).validate_python(value) (DSPy's)."""
    import math
    import typing

    import pydantic

    from dspex.native._parse import Invalid, validator

    from . import oracle

    ann = eval(t, vars(typing)) if isinstance(t, str) else t  # test-side only: our own literals
    try:
        expected: Any = ("ok", pydantic.TypeAdapter(ann).validate_python(value))
    except pydantic.ValidationError:
        expected = ("error", None)
    try:
        got: Any = ("ok", validator(ann)(value, False))
    except Invalid:
        got = ("error", None)
    assert got[0] == expected[0], (got, expected)
    if got[0] == "ok":
        a, b = got[1], expected[1]
        if isinstance(a, float) and math.isnan(a):
            assert math.isnan(b)
        else:
            assert oracle.same(a, b), (a, b)
