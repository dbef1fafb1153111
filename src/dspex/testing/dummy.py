"""DummyLM: an in-process, deterministic LM with the interface of ``dspex.LM``.

    lm = DummyLM()                                  # autofill every requested output field
    lm = DummyLM(["[[ ## answer ## ]]\\n4", {"answer": "5"}])   # scripted, then autofill
    lm = DummyLM(responder=lambda messages: "...")
    pred = dspex.Predict("question -> answer")(question="hi", lm=lm)
    lm.requests   # the message lists it received (bounded)

A dict reply is rendered as a ChatAdapter reply of those fields. When the
script runs out it autofills (or raises ``IndexError`` with ``autofill=False``).
Token usage is estimated from text length and recorded in ``dspex.context()``
like a real LM's.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..native.lm import Completion
from ..settings import current
from ._autofill import autofill as _autofill

__all__ = ["DummyLM"]

Messages = list[dict[str, Any]]


def _render(reply: str | dict[str, Any]) -> str:
    if isinstance(reply, str):
        return reply
    import json

    parts = [f"[[ ## {k} ## ]]\n{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}" for k, v in reply.items()]
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


class DummyLM:
    """Deterministic in-process LM: ``complete``/``acomplete`` return a :class:`Completion`."""

    supports_grammar = False
    provider = "dummy"

    def __init__(
        self,
        replies: Iterable[str | dict[str, Any]] | None = None,
        *,
        model: str = "dummy/dummy",
        responder: Callable[[Messages], str] | None = None,
        autofill: bool = True,
        history_size: int = 1000,
    ):
        self.model = model
        self._script: deque[str | dict[str, Any]] = deque(replies or ())
        self.responder = responder
        self.autofill = autofill
        self.requests: deque[Messages] = deque(maxlen=history_size)
        self.calls: deque[dict[str, Any]] = deque(maxlen=history_size)  # messages + overrides
        self._lock = threading.Lock()

    def script(self, replies: Iterable[str | dict[str, Any]], *, append: bool = False) -> None:
        with self._lock:
            if not append:
                self._script.clear()
            self._script.extend(replies)

    def _text(self, messages: Messages) -> str:
        with self._lock:
            item = self._script.popleft() if self._script else None
        if item is not None:
            return _render(item)
        if self.responder is not None:
            return str(self.responder(messages))
        if not self.autofill:
            raise IndexError("DummyLM script is empty and autofill=False")
        return _autofill(messages)

    def complete(self, messages: Messages, **overrides: Any) -> Completion:
        self.requests.append(messages)
        if overrides:
            self.calls.append({"messages": messages, **overrides})
        text = self._text(messages)
        prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1
        completion = len(text) // 4 + 1
        current().record_usage(self.model, prompt, completion)
        return Completion(
            text,
            {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            self.model,
            None,
            False,
            [text],
        )

    async def acomplete(self, messages: Messages, **overrides: Any) -> Completion:
        return self.complete(messages, **overrides)

    def __repr__(self) -> str:
        return f"DummyLM({self.model!r})"
