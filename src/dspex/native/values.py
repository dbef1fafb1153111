"""``Example`` and ``Prediction``: dict-like records with attribute access, as in DSPy.

Behaviour follows DSPy 3.4.1 (``dspy.Example`` / ``dspy.Prediction``): keys
starting with ``dspy_`` are internal and hidden from ``len``/``keys``/``repr``;
``with_inputs`` marks input keys; ``inputs()`` / ``labels()`` split a record;
equality compares the stored fields.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Completions", "Example", "Prediction"]


class Example:
    """One record (a row of a dataset): ``Example(question="...", answer="...")``."""

    __slots__ = ("_input_keys", "_store")

    _store: dict[str, Any]
    _input_keys: frozenset[str] | None

    def __init__(self, base: Mapping[str, Any] | Example | None = None, **kwargs: Any) -> None:
        object.__setattr__(self, "_input_keys", None)
        if isinstance(base, Example):
            store = dict(base._store)
            object.__setattr__(self, "_input_keys", base._input_keys)
        elif base:
            store = dict(base)
        else:
            store = {}
        store.update(kwargs)
        object.__setattr__(self, "_store", store)

    # -- attribute access
    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") and key.endswith("__"):
            raise AttributeError(key)
        try:
            return self._store[key]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_") or hasattr(type(self), key):
            object.__setattr__(self, key, value)
        else:
            self._store[key] = value

    def __delattr__(self, key: str) -> None:
        if key in self._store:
            del self._store[key]
        else:
            object.__delattr__(self, key)

    # -- mapping protocol
    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return sum(1 for k in self._store if not k.startswith("dspy_"))

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._store))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Example) and self._store == other._store

    def __hash__(self) -> int:
        return hash(frozenset(self._store.items()))

    def __repr__(self) -> str:
        d = {k: v for k, v in self._store.items() if not k.startswith("dspy_")}
        keys = None if self._input_keys is None else set(self._input_keys)
        return f"Example({d}) (input_keys={keys})"

    __str__ = __repr__

    def keys(self, include_dspy: bool = False) -> list[str]:
        return [k for k in self._store if include_dspy or not k.startswith("dspy_")]

    def values(self, include_dspy: bool = False) -> list[Any]:
        return [v for k, v in self._store.items() if include_dspy or not k.startswith("dspy_")]

    def items(self, include_dspy: bool = False) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in self._store.items() if include_dspy or not k.startswith("dspy_")]

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    # -- inputs / labels
    def with_inputs(self, *keys: str) -> Example:
        """A copy whose input keys are ``keys`` (the rest are labels)."""
        copied = self.copy()
        object.__setattr__(copied, "_input_keys", frozenset(keys))
        return copied

    @property
    def input_keys(self) -> frozenset[str] | None:
        return self._input_keys

    def inputs(self) -> Example:
        if self._input_keys is None:
            raise ValueError("Inputs have not been set for this example. Use `example.with_inputs()` to set them.")
        new = type(self)({k: v for k, v in self._store.items() if k in self._input_keys})
        object.__setattr__(new, "_input_keys", self._input_keys)
        return new

    def labels(self) -> Example:
        input_keys = self.inputs().keys()
        return type(self)({k: v for k, v in self._store.items() if k not in input_keys})

    def copy(self, **kwargs: Any) -> Example:
        return type(self)(base=self, **kwargs)

    def without(self, *keys: str) -> Example:
        copied = self.copy()
        for key in keys:
            del copied._store[key]
        return copied

    def toDict(self) -> dict[str, Any]:
        """A plain dict, nested Examples/lists/dicts converted recursively."""

        def convert(value: Any) -> Any:
            if hasattr(value, "toDict"):
                return value.toDict()
            if hasattr(value, "model_dump"):
                return value.model_dump()
            if isinstance(value, list):
                return [convert(v) for v in value]
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        return {k: convert(v) for k, v in self._store.items()}

    to_dict = toDict


class Prediction(Example):
    """What a predictor returns: the parsed output fields, dict-like with attribute access.

    ``completions`` holds every completion when several were requested
    (``Prediction.from_completions``). Predictions with a ``score`` field compare
    and add like numbers, as in DSPy.
    """

    __slots__ = ("_completions", "_lm_usage", "_trace")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_completions", None)
        object.__setattr__(self, "_lm_usage", None)
        object.__setattr__(self, "_trace", None)

    @classmethod
    def from_completions(cls, list_or_dict: list[dict[str, Any]] | dict[str, list[Any]], signature: Any = None) -> Prediction:
        obj = cls()
        completions = Completions(list_or_dict, signature=signature)
        object.__setattr__(obj, "_completions", completions)
        object.__setattr__(obj, "_store", {k: v[0] for k, v in completions.items()})
        return obj

    @property
    def completions(self) -> Completions | None:
        return self._completions

    def get_lm_usage(self) -> Any:
        return self._lm_usage

    def set_lm_usage(self, value: Any) -> None:
        object.__setattr__(self, "_lm_usage", value)

    def get_trace(self) -> list[tuple[Any, dict[str, Any], Prediction]] | None:
        """A ``dspex.Module`` call's trace: ``(predictor, inputs, prediction)`` per predictor call."""
        return self._trace

    def set_trace(self, value: list[tuple[Any, dict[str, Any], Prediction]] | None) -> None:
        object.__setattr__(self, "_trace", value)

    def __repr__(self) -> str:
        store_repr = ",\n    ".join(f"{k}={v!r}" for k, v in self._store.items())
        if self._completions is None or len(self._completions) == 1:
            return f"Prediction(\n    {store_repr}\n)"
        n = len(self._completions)
        return f"Prediction(\n    {store_repr},\n    completions=Completions(...)\n) ({n - 1} completions omitted)"

    __str__ = __repr__

    def __hash__(self) -> int:
        return hash(frozenset(self._store.items()))

    def __float__(self) -> float:
        if "score" not in self._store:
            raise ValueError("Prediction object does not have a 'score' field to convert to float.")
        return float(self._store["score"])

    @staticmethod
    def _num(other: Any, op: str) -> float:
        if isinstance(other, (int, float)):
            return float(other)
        if isinstance(other, Prediction):
            return float(other)
        raise TypeError(f"Unsupported type for {op}: {type(other)}")

    def __add__(self, other: Any) -> float:
        return float(self) + self._num(other, "addition")

    def __radd__(self, other: Any) -> float:
        return self._num(other, "addition") + float(self)

    def __truediv__(self, other: Any) -> float:
        return float(self) / self._num(other, "division")

    def __rtruediv__(self, other: Any) -> float:
        return self._num(other, "division") / float(self)

    def __lt__(self, other: Any) -> bool:
        return float(self) < self._num(other, "comparison")

    def __le__(self, other: Any) -> bool:
        return float(self) <= self._num(other, "comparison")

    def __gt__(self, other: Any) -> bool:
        return float(self) > self._num(other, "comparison")

    def __ge__(self, other: Any) -> bool:
        return float(self) >= self._num(other, "comparison")


class Completions:
    """All completions of one call, by field: ``c.answer -> [a1, a2]``; ``c[i]`` is a Prediction."""

    def __init__(self, list_or_dict: list[dict[str, Any]] | dict[str, list[Any]], signature: Any = None) -> None:
        self.signature = signature
        if isinstance(list_or_dict, list):
            kwargs: dict[str, list[Any]] = {}
            for arg in list_or_dict:
                for k, v in arg.items():
                    kwargs.setdefault(k, []).append(v)
        else:
            kwargs = dict(list_or_dict)
        if not all(isinstance(v, list) for v in kwargs.values()):
            raise ValueError("All values must be lists")
        if kwargs:
            length = len(next(iter(kwargs.values())))
            if not all(len(v) == length for v in kwargs.values()):
                raise ValueError("All lists must have the same length")
        self._completions = kwargs

    def items(self) -> Any:
        return self._completions.items()

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            if key < 0 or key >= len(self):
                raise IndexError("Index out of range")
            return Prediction(**{k: v[key] for k, v in self._completions.items()})
        return self._completions[key]

    def __getattr__(self, name: str) -> Any:
        if name == "_completions":
            raise AttributeError(name)
        if name in self._completions:
            return self._completions[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __len__(self) -> int:
        if not self._completions:
            return 0
        return len(next(iter(self._completions.values())))

    def __contains__(self, key: object) -> bool:
        return key in self._completions

    def __repr__(self) -> str:
        items_repr = ",\n    ".join(f"{k}={v!r}" for k, v in self._completions.items())
        return f"Completions(\n    {items_repr}\n)"
