"""Hypothesis strategies: signature specs (with type trees), fitting values, replies."""

from __future__ import annotations

import json
import keyword
from typing import Any

from hypothesis import strategies as st

# A type tree: ("str",) ("int",) ("float",) ("bool",) ("Any",) ("list", T) ("List", T)
# ("set", T) ("dict", K, V) ("Dict", K, V) ("tuple", [T...]) ("tuple_var", T)
# ("optional", T) ("union", [T...]) ("pipe", [T...]) ("literal", [values])
Tree = tuple[Any, ...]

ATOMS: list[Tree] = [("str",), ("int",), ("float",), ("bool",), ("Any",)]

literal_values = st.one_of(
    st.lists(st.text(alphabet="abcxyz _-'\"é", min_size=1, max_size=6), min_size=1, max_size=3, unique=True),
    st.lists(st.integers(-5, 100), min_size=1, max_size=3, unique=True),
)


def _trees(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
    return st.one_of(
        st.tuples(st.just("list"), children),
        st.tuples(st.just("List"), children),
        st.tuples(st.just("dict"), st.sampled_from([("str",), ("int",)]), children),
        st.tuples(st.just("Dict"), st.just(("str",)), children),
        st.tuples(st.just("tuple"), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("tuple_var"), children),
        st.tuples(st.just("optional"), children),
        st.tuples(st.just("union"), st.lists(children, min_size=2, max_size=3)),
        st.tuples(st.just("pipe"), st.lists(children, min_size=2, max_size=2)),
        st.tuples(st.just("set"), st.sampled_from([("int",), ("str",)])),
    )


types_ = st.one_of(
    st.sampled_from(ATOMS),
    st.tuples(st.just("literal"), literal_values),
    st.recursive(st.sampled_from(ATOMS), _trees, max_leaves=4),
)


def _lit(v: Any) -> str:
    return repr(v)


def render(t: Tree) -> str:
    k = t[0]
    if len(t) == 1:
        return k
    if k in ("list", "List", "set"):
        return f"{k}[{render(t[1])}]"
    if k in ("dict", "Dict"):
        return f"{k}[{render(t[1])}, {render(t[2])}]"
    if k == "tuple":
        return f"tuple[{', '.join(render(x) for x in t[1])}]"
    if k == "tuple_var":
        return f"tuple[{render(t[1])}, ...]"
    if k == "optional":
        return f"Optional[{render(t[1])}]"
    if k == "union":
        return f"Union[{', '.join(render(x) for x in t[1])}]"
    if k == "pipe":
        return " | ".join(render(x) for x in t[1])
    if k == "literal":
        return f"Literal[{', '.join(_lit(v) for v in t[1])}]"
    raise AssertionError(t)


texts = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="ab \n\t«»#[]{}:,'\"-", max_size=20),
    st.sampled_from(["", " ", "\n", "hello world", "line1\nline2", "  indented\n    more  ", "[[ ## x ## ]]"]),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False), texts
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
    max_leaves=6,
)


def values_for(t: Tree) -> st.SearchStrategy[Any]:
    """Values that fit the type (what an LM would be asked to produce)."""
    k = t[0]
    if k == "str":
        return texts
    if k == "int":
        return st.integers(-(10**12), 10**12)
    if k == "float":
        return st.floats(allow_nan=False, allow_infinity=False, width=64)
    if k == "bool":
        return st.booleans()
    if k == "Any":
        return json_values
    if k in ("list", "List"):
        return st.lists(values_for(t[1]), max_size=3)
    if k == "set":
        return st.sets(values_for(t[1]), max_size=3)
    if k in ("dict", "Dict"):
        return st.dictionaries(values_for(t[1]), values_for(t[2]), max_size=3)
    if k == "tuple":
        return st.tuples(*[values_for(x) for x in t[1]])
    if k == "tuple_var":
        return st.lists(values_for(t[1]), max_size=3).map(tuple)
    if k == "optional":
        return st.one_of(st.none(), values_for(t[1]))
    if k in ("union", "pipe"):
        return st.one_of(*[values_for(x) for x in t[1]])
    if k == "literal":
        return st.sampled_from(t[1])
    raise AssertionError(t)


def _ok_name(n: str) -> bool:
    # DSPy signatures are pydantic models: names that shadow BaseModel attributes or
    # start with "model_"/"_" behave differently there (pydantic drops/rejects them).
    return not keyword.iskeyword(n) and not n.startswith(("model_", "_")) and n not in _PYDANTIC_NAMES


_PYDANTIC_NAMES = {
    "copy", "dict", "json", "schema", "schema_json", "construct", "validate", "fields", "parse_obj",
    "parse_raw", "parse_file", "from_orm", "update_forward_refs", "signature", "instructions",
    "input_fields", "output_fields", "completed", "equals", "insert", "prepend", "append", "delete",
    "dump_state", "load_state", "with_instructions", "with_updated_fields", "append_instructions",
}

_LOWER = "abcdefghijklmnopqrstuvwxyz"
names = st.one_of(
    st.builds(lambda a, b: a + b, st.sampled_from(_LOWER), st.text(alphabet=_LOWER + "0123456789_", max_size=7)),
    st.builds(
        lambda a, b, c: a + b.capitalize() + c,
        st.text(alphabet=_LOWER, min_size=1, max_size=4),
        st.text(alphabet=_LOWER, min_size=2, max_size=4),
        st.sampled_from(["", "2", "ID"]),
    ),
    st.sampled_from(["question", "context", "answer", "HTMLParser", "text2number", "a", "B", "x_y_z"]),
).filter(_ok_name)

instructions_ = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=40),
    st.lists(st.text(alphabet="ab `.\t", max_size=10), min_size=1, max_size=4).map("\n".join),
    st.sampled_from(["Answer the question.", "  Line one.\n    Line two.\n\n  Line three.  ", "\n\nx\n"]),
)


@st.composite
def signatures(draw: st.DrawFn, max_inputs: int = 3, max_outputs: int = 3) -> dict[str, Any]:
    """{"spec", "instructions", "inputs": {name: tree|None}, "outputs": {...}, "descs"}."""
    all_names = draw(st.lists(names, min_size=1, max_size=max_inputs + max_outputs, unique=True))
    n_out = draw(st.integers(1, min(max_outputs, len(all_names))))
    n_in = min(len(all_names) - n_out, max_inputs)
    ins = all_names[:n_in]
    outs = all_names[n_in : n_in + n_out]
    trees = {n: draw(st.one_of(st.none(), types_)) for n in ins + outs}

    def side(ns: list[str]) -> str:
        return ", ".join(n if trees[n] is None else f"{n}: {render(trees[n])}" for n in ns)

    spec = f"{side(ins)} -> {side(outs)}"
    descs = draw(st.dictionaries(st.sampled_from(ins + outs), st.text(max_size=15), max_size=2))
    return {
        "spec": spec,
        "instructions": draw(instructions_),
        "inputs": {n: trees[n] or ("str",) for n in ins},
        "outputs": {n: trees[n] or ("str",) for n in outs},
        "descs": descs,
    }


def input_value(t: Tree) -> st.SearchStrategy[Any]:
    if t == ("str",):
        return st.one_of(texts, st.lists(texts, max_size=4), st.integers(), st.none(), json_values)
    return st.one_of(values_for(t), json_values)


@st.composite
def records(draw: st.DrawFn, sig: dict[str, Any], outputs: bool = True, allow_missing: bool = True) -> dict[str, Any]:
    fields = dict(sig["inputs"])
    if outputs:
        fields.update(sig["outputs"])
    rec: dict[str, Any] = {}
    for n, t in fields.items():
        if allow_missing and draw(st.integers(0, 9)) == 0:
            continue
        rec[n] = draw(st.one_of(input_value(t), st.none()) if draw(st.integers(0, 9)) == 0 else input_value(t))
    return rec


# ---- replies

def render_value(draw: st.DrawFn, t: Tree, value: Any) -> str:
    """Text an LM might write for ``value`` of type ``t``."""
    if t == ("str",):
        return str(value)
    style = draw(st.integers(0, 5))
    if style <= 1 and not _has_dict(value):
        # Python literal (only without dicts: LMs write JSON-style string keys)
        return repr(value) if style == 0 else str(value)
    if style == 2 and isinstance(value, (list, dict, tuple)):
        return "```json\n" + json.dumps(_jsonish(value)) + "\n```"
    return json.dumps(_jsonish(value))


def _has_dict(v: Any) -> bool:
    # dicts and sets print with braces; json_repair's guesses on Python-literal braces
    # (e.g. "[{0}]", "{-1: 0}") are not copied, so those values are written as JSON.
    if isinstance(v, (dict, set, frozenset)):
        return True
    if isinstance(v, (list, tuple)):
        return any(_has_dict(x) for x in v)
    return False


def _jsonish(v: Any) -> Any:
    if isinstance(v, (set, frozenset)):
        return sorted(v, key=repr)
    if isinstance(v, (list, tuple)):
        return [_jsonish(x) for x in v]
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonish(x) for k, x in v.items()}
    return v


# Near-misses an LM produces. (Arbitrary fragments like "[{" or "{0" go to the fuzz
# tests, which only require ParseError; json_repair's guesses on those are not matched.)
junk = st.one_of(
    st.sampled_from(
        ["", "seven", "7 apples", "True", "yes", "None", "null", "[1, 2", "{'a': 1}", "1,2", "7.5", "7.0", " 12 ",
         "Literal['a']", "'a'", '"x"', "[a, b]", "(1, 2)", "-3", "1e3", "+5", "no", "[]", "{}", "NaN", "'yes'",
         "[\"1\", 2]", "[1, 2,]", '{"k": [1, 2]}']
    ),
    st.sampled_from(["{0}", "{1, 2}", "[00", "[01, 2]", "[.5]", "[+1]", "[1 2]", "[tRue]", "[none]", "(1, 2)"]),
)
fragments = st.text(alphabet="0123456789.-+eE []{}()'\",:abTrueFalsNn\n#", max_size=12)
