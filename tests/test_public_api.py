"""The curated public surface: every exported name resolves, every error is exported."""

from __future__ import annotations

import inspect

import dspex
import dspex.errors as errors


def test_every_exported_name_resolves() -> None:
    for name in dspex.__all__:
        assert getattr(dspex, name) is not None, name


def test_every_error_class_is_exported_and_in_the_tree() -> None:
    classes = {n for n, v in vars(errors).items() if inspect.isclass(v) and issubclass(v, errors.DspexError)}
    assert classes == set(errors.__all__)
    assert classes <= set(dspex.__all__)
    drawing = errors.__doc__ or ""
    for name in classes:
        assert name in drawing, f"{name} is missing from the drawing in errors.py"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        dspex.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_native_package_is_callable_and_builds_a_step() -> None:
    step = dspex.native(lambda question: question.upper(), writes="shout", name="shout")
    out = dspex.pipeline([step]).run({"question": "hi"})
    assert out["shout"] == "HI"
