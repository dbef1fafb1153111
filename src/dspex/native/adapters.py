"""Adapters: (signature, demos, inputs) -> chat messages, and LM text -> typed outputs.

``ChatAdapter`` and ``JSONAdapter`` produce the same messages as DSPy 3.4.1's,
byte for byte, and parse replies with the same semantics (tests/native/test_adapter_parity.py
compares them with DSPy in the same run). Everything that depends only
on the signature (system message, output requirements, field headers,
per-field parsers) is computed once and cached on the signature, so ``format``
is mostly string concatenation.

Known, deliberate difference from DSPy: a field header indented in the reply
(``"  [[ ## answer ## ]] 4"``) is parsed correctly; DSPy leaves ``]]`` in the
value there.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ParseError
from . import _parse
from ._format import format_value, jsonable
from ._types import json_schema_text
from .signature import Field, Signature, ensure_signature

__all__ = ["Adapter", "ChatAdapter", "JSONAdapter"]

_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_INCOMPLETE_PREFIX = "This is an example of the task, though some input or output fields are not supplied."
_MISSING_INCOMPLETE = "Not supplied for this particular example. "
_MISSING_COMPLETE = "Not supplied for this conversation history message. "


# --------------------------------------------------------------------------- signature pieces


def _field_note(f: Field) -> str:
    """DSPy's ``translate_field_type``: ``{name}`` plus the output-type note."""
    t = f.annotation
    if f.kind == "input" or t is str:
        desc = ""
    elif t is bool:
        desc = "must be True or False"
    elif t is int or t is float:
        desc = f"must be a single {t.__name__} value"
    elif isinstance(t, type) and _is_enum(t):
        desc = f"must be one of: {'; '.join(str(m.value) for m in t)}"  # type: ignore[attr-defined]
    elif getattr(t, "__origin__", None) is _literal():
        desc = f"must exactly match (no extra characters) one of: {'; '.join(str(x) for x in t.__args__)}"
    else:
        desc = f"must adhere to the JSON schema: {json_schema_text(t)}"
    note = f"        # note: the value you produce {desc}" if desc else ""
    return f"{{{f.name}}}{note}"


def _is_enum(t: type) -> bool:
    import enum

    return issubclass(t, enum.Enum)


def _literal() -> Any:
    import typing

    return typing.Literal


def _field_descriptions(fields: Mapping[str, Field]) -> str:
    lines = []
    for i, (name, f) in enumerate(fields.items(), 1):
        desc = "" if f.desc == f"${{{name}}}" else f.desc
        lines.append(f"{i}. `{name}` ({f.type_name}): {desc}")
        if f.constraints:  # DSPy shows pydantic constraints under the field line
            lines[-1] += f"\nConstraints: {f.constraints}"
    return "\n".join(lines).strip()


def _task_description(sig: Signature) -> str:
    instructions = textwrap.dedent(sig.instructions)
    objective = ("\n" + " " * 8).join(["", *instructions.splitlines()])
    return f"In adhering to this structure, your objective is: {objective}"


def _type_suffix(f: Field) -> str:
    if f.annotation is str:
        return ""
    return f" (must be formatted as a valid Python {f.type_name})"


def _chat_structure(sig: Signature) -> str:
    def block(fields: Mapping[str, Field]) -> str:
        return "\n\n".join(f"[[ ## {n} ## ]]\n{_field_note(f)}" for n, f in fields.items()).strip()

    parts = [
        "All interactions will be structured in the following way, with the appropriate values filled in.",
        block(sig.input_fields),
        block(sig.output_fields),
        "[[ ## completed ## ]]\n",
    ]
    return "\n\n".join(parts).strip()


def _json_structure(sig: Signature) -> str:
    inputs = "\n\n".join(f"[[ ## {n} ## ]]\n{_field_note(f)}" for n, f in sig.input_fields.items()).strip()
    outputs = json.dumps({n: _field_note(f) for n, f in sig.output_fields.items()}, indent=2, ensure_ascii=False)
    parts = [
        "All interactions will be structured in the following way, with the appropriate values filled in.",
        "Inputs will have the following structure:",
        inputs,
        "Outputs will be a JSON object with the following fields.",
        outputs,
    ]
    return "\n\n".join(parts).strip()


class _Plan:
    """Per-(signature, adapter) precomputed pieces."""

    __slots__ = ("inputs", "optional", "output_names", "outputs", "requirements", "system")

    def __init__(self, sig: Signature, json_mode: bool) -> None:
        description = (
            f"Your input fields are:\n{_field_descriptions(sig.input_fields)}\n"
            f"Your output fields are:\n{_field_descriptions(sig.output_fields)}"
        )
        structure = _json_structure(sig) if json_mode else _chat_structure(sig)
        self.system = f"{description}\n{structure}\n{_task_description(sig)}"
        # (name, header, annotation) per input field
        self.inputs = [(n, f"[[ ## {n} ## ]]\n", f.annotation) for n, f in sig.input_fields.items()]
        self.outputs = [(n, f"[[ ## {n} ## ]]\n", f.annotation) for n, f in sig.output_fields.items()]
        self.output_names = frozenset(sig.output_fields)
        if json_mode:
            self.requirements = (
                "Respond with a JSON object in the following order of fields: "
                + ", then ".join(f"`{n}`{_type_suffix(f)}" for n, f in sig.output_fields.items())
                + "."
            )
        else:
            self.requirements = (
                "Respond with the corresponding output fields, starting with the field "
                + ", then ".join(f"`[[ ## {n} ## ]]`{_type_suffix(f)}" for n, f in sig.output_fields.items())
                + ", and then ending with the marker for `[[ ## completed ## ]]`."
            )
        # outputs that may be missing from a reply (their annotation admits None)
        self.optional = frozenset(n for n, f in sig.output_fields.items() if _allows_none(f.annotation))


def _allows_none(annotation: Any) -> bool:
    import types
    import typing

    if annotation is None or annotation is type(None):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_allows_none(a) for a in typing.get_args(annotation))
    return False


def _as_mapping(d: Any) -> Mapping[str, Any]:
    if isinstance(d, Mapping):
        return d
    store = getattr(d, "_store", None)  # dspex / dspy Example
    if isinstance(store, dict):
        return store
    if hasattr(d, "keys") and hasattr(d, "__getitem__"):
        return {k: d[k] for k in d.keys()}  # noqa: SIM118 - Example.keys() hides dspy_ keys
    raise TypeError(f"a demo must be a dict or an Example, not {type(d).__name__}")


# --------------------------------------------------------------------------- adapters


class Adapter:
    """Base: formats demos/inputs into messages and parses replies (see subclasses)."""

    name = "base"
    _json_mode = False

    def _plan(self, sig: Signature) -> _Plan:
        key = "json" if self._json_mode else "chat"
        plan = sig._cache.get(key)
        if plan is None:
            plan = _Plan(sig, self._json_mode)
            sig._cache[key] = plan
        return plan

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    # -- formatting
    def format(
        self,
        signature: Signature | str,
        demos: Iterable[Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, str]]:
        """Messages for one call: system, demo turns, then the user turn with ``inputs``."""
        sig = signature if type(signature) is Signature else ensure_signature(signature)
        plan = self._plan(sig)
        messages = [{"role": "system", "content": plan.system}]
        if demos:
            messages.extend(self.format_demos(sig, demos))
        messages.append({"role": "user", "content": self._user(plan, inputs or {}, "", True)})
        return messages

    def format_system_message(self, signature: Signature | str) -> str:
        return self._plan(ensure_signature(signature)).system

    def format_user_message_content(
        self, signature: Signature | str, inputs: Mapping[str, Any], prefix: str = "", main_request: bool = False
    ) -> str:
        return self._user(self._plan(ensure_signature(signature)), _as_mapping(inputs), prefix, main_request)

    def _user(self, plan: _Plan, inputs: Mapping[str, Any], prefix: str, main_request: bool) -> str:
        parts = [prefix]
        for name, header, annotation in plan.inputs:
            if name in inputs:
                value = inputs[name]
                parts.append(header + (value if type(value) is str else format_value(value, annotation)))
        if main_request:
            parts.append(plan.requirements)
        parts.append("")
        return "\n\n".join(parts).strip()

    def format_demos(self, signature: Signature | str, demos: Iterable[Any]) -> list[dict[str, str]]:
        """Demo turns: incomplete demos first (with a note), then complete ones."""
        sig = ensure_signature(signature)
        plan = self._plan(sig)
        names = list(sig.fields)
        complete: list[Mapping[str, Any]] = []
        incomplete: list[Mapping[str, Any]] = []
        for raw in demos:
            demo = _as_mapping(raw)
            if all(k in demo and demo[k] is not None for k in names):
                complete.append(demo)
            elif any(k in demo for k in sig.input_fields) and any(k in demo for k in sig.output_fields):
                incomplete.append(demo)
        messages = []
        for demo in incomplete:
            messages.append({"role": "user", "content": self._user(plan, demo, _INCOMPLETE_PREFIX, False)})
            messages.append({"role": "assistant", "content": self._assistant(plan, demo, _MISSING_INCOMPLETE)})
        for demo in complete:
            messages.append({"role": "user", "content": self._user(plan, demo, "", False)})
            messages.append({"role": "assistant", "content": self._assistant(plan, demo, _MISSING_COMPLETE)})
        return messages

    def format_assistant_message_content(
        self, signature: Signature | str, outputs: Mapping[str, Any], missing_field_message: str | None = None
    ) -> str:
        return self._assistant(self._plan(ensure_signature(signature)), _as_mapping(outputs), missing_field_message)

    def _assistant(self, plan: _Plan, outputs: Mapping[str, Any], missing: str | None) -> str:
        raise NotImplementedError

    # -- parsing
    def parse(self, signature: Signature | str, completion: str) -> dict[str, Any]:
        raise NotImplementedError

    def _not_text(self, sig: Signature, completion: Any) -> ParseError:
        return ParseError(
            f"expected the LM reply as text, got {type(completion).__name__}",
            raw=str(completion),
            missing=list(sig.output_fields),
            adapter=self.name,
        )

    def _finish(self, sig: Signature, plan: _Plan, fields: dict[str, Any], completion: str) -> dict[str, Any]:
        if len(fields) == len(plan.outputs):
            return {n: fields[n] for n, _, _ in plan.outputs} if len(fields) > 1 else fields
        out: dict[str, Any] = {}
        for n, _, _ in plan.outputs:
            if n in fields:
                out[n] = fields[n]
            elif n in plan.optional:
                out[n] = None
        if len(out) != len(plan.outputs):
            missing = [n for n, _, _ in plan.outputs if n not in out]
            raise ParseError(
                f"{type(self).__name__} could not find output field(s) {', '.join(missing)} in the LM reply "
                f"(expected {', '.join(n for n, _, _ in plan.outputs)}; found {', '.join(out) or 'none'})",
                raw=completion,
                found=out,
                missing=missing,
                adapter=self.name,
            )
        return out


class ChatAdapter(Adapter):
    """DSPy's default format: ``[[ ## field ## ]]`` sections."""

    name = "chat"

    def _assistant(self, plan: _Plan, outputs: Mapping[str, Any], missing: str | None) -> str:
        parts = []
        for name, header, annotation in plan.outputs:
            value = outputs.get(name, missing)
            parts.append(header + (value if type(value) is str else format_value(value, annotation)))
        return "\n\n".join(parts).strip() + "\n\n[[ ## completed ## ]]\n"

    def parse(self, signature: Signature | str, completion: str) -> dict[str, Any]:
        """Typed output fields from a ``[[ ## field ## ]]`` reply; ParseError if any is missing/invalid."""
        sig = signature if type(signature) is Signature else ensure_signature(signature)
        plan = self._plan(sig)
        if not isinstance(completion, str):
            raise self._not_text(sig, completion)
        wanted = plan.output_names
        raw_sections: dict[str, list[str]] = {}
        current: list[str] | None = None  # lines of the section being read, None = ignored
        match = _HEADER.match
        for line in completion.splitlines():
            if "[[ ## " in line:
                stripped = line.strip()
                m = match(stripped)
                if m is not None:
                    header = m.group(1)
                    rest = stripped[m.end() :].strip()
                    if header in wanted and header not in raw_sections:
                        current = raw_sections[header] = [rest] if rest else []
                    else:
                        current = None  # unknown header or a repeat: first occurrence wins
                    continue
            if current is not None:
                current.append(line)
        fields: dict[str, Any] = {}
        outputs = sig.output_fields
        for name, lines in raw_sections.items():
            text = "\n".join(lines).strip()
            annotation = outputs[name].annotation
            if annotation is str:
                fields[name] = text
                continue
            try:
                fields[name] = _parse.parse_value(text, annotation)
            except (ValueError, TypeError, RecursionError) as e:
                raise ParseError(
                    f"Failed to parse field {name} with value {text!r} from the LM response as "
                    f"{outputs[name].type_name}: {e}",
                    raw=completion,
                    found=fields,
                    missing=[name],
                    adapter=self.name,
                ) from None
        return self._finish(sig, plan, fields, completion)


class JSONAdapter(Adapter):
    """DSPy's JSON format: outputs as one JSON object (also ChatAdapter's fallback)."""

    name = "json"
    _json_mode = True

    def _assistant(self, plan: _Plan, outputs: Mapping[str, Any], missing: str | None) -> str:
        d = {name: outputs.get(name, missing) for name, _, _ in plan.outputs}
        return json.dumps(jsonable(d), indent=2, ensure_ascii=False)

    def parse(self, signature: Signature | str, completion: str) -> dict[str, Any]:
        """Typed output fields from a JSON object in the reply (lenient like DSPy's json_repair)."""
        sig = signature if type(signature) is Signature else ensure_signature(signature)
        plan = self._plan(sig)
        if not isinstance(completion, str):
            raise self._not_text(sig, completion)
        obj = _parse.loads_lenient(completion)
        if not isinstance(obj, dict):
            inner = _parse.balanced_object(completion)
            if inner is not None:
                obj = _parse.loads_lenient(inner)
        if not isinstance(obj, dict):
            raise ParseError(
                "LM response cannot be serialized to a JSON object.",
                raw=completion,
                missing=list(sig.output_fields),
                adapter=self.name,
            )
        outputs = sig.output_fields
        fields: dict[str, Any] = {}
        for key, value in obj.items():
            f = outputs.get(key)
            if f is None:
                continue
            try:
                fields[key] = _parse.parse_value(value, f.annotation)
            except (ValueError, TypeError, RecursionError) as e:
                raise ParseError(
                    f"Failed to parse field {key}: {e}",
                    raw=completion,
                    found={k: v for k, v in fields.items()},
                    missing=[key],
                    adapter=self.name,
                ) from None
        return self._finish(sig, plan, fields, completion)
