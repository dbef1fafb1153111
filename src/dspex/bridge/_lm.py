"""Build a ``dspy.LM`` from an LM spec (``dspex.LM.to_spec()``), inside a worker.

Specs carry settings by name only. Secrets never travel: ``api_key_env`` names
the variable the *worker* reads its key from. Built LMs are cached per spec (a
small LRU), so a session or a stream of calls reuses one client.

Wire detail that matters for local servers: DSPy 3.4.1 sends
``max_completion_tokens`` for ``openai/`` models, which llama.cpp-style servers
ignore, and ``extra_body`` silently switches DSPy to LiteLLM. DSPy's
``hosted_vllm/`` provider speaks the same OpenAI chat wire through DSPy's own
HTTP client but spells the limit ``max_tokens``. So an ``openai/<name>`` spec
with a non-OpenAI ``api_base`` is built as ``hosted_vllm/<name>`` (same URL,
same body otherwise; checked by the differential tests). Set
``"max_tokens_field": "max_completion_tokens"`` in the spec to keep ``openai/``.

Grammar (``"grammar": True`` in the spec, i.e. a llama.cpp server such as the
embedded model): a tiny model only writes replies DSPy can parse under
grammar-constrained decoding. DSPy 3.4.1 sends an unknown call keyword such as
``grammar=`` through LiteLLM, so instead the LM gets a custom engine
(``dspy.LM(model, engine=...)``, DSPy's public engine interface) wrapping DSPy's own
native engine: per request it reads the output fields the adapter asked for from
the messages (``dspex._prompt_fields``), builds the GBNF with
``dspex.native.grammar.gbnf_for`` and puts it in ``Request.config.extensions``,
which the native client copies into the body verbatim. Same HTTP client, retries
and cache as before; when the fields cannot be read no grammar is sent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from .._prompt_fields import message_text, output_field_types, requested_fields
from ..native._memo import Memo

__all__ = ["LMSpecError", "build_lm", "grammar_for_messages", "spec_key"]

_CACHE_SIZE = 32
_cache: Memo[Any] = Memo(_CACHE_SIZE)

# Spec keys that are dspex-side concerns (or secrets that must not travel) and are
# not passed to dspy.LM.
_IGNORED = {"rpm", "tpm", "grammar", "kind", "api_key_env", "max_tokens_field", "provider"}
_PASSED = {"temperature", "max_tokens", "timeout", "num_retries", "cache", "top_p", "stop", "seed", "n",
           "rollout_id", "model_type"}


class LMSpecError(ValueError):
    """An LM spec cannot be turned into a dspy.LM."""


def spec_key(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _dummy(spec: dict[str, Any]) -> Any:
    from dspy.utils.dummies import DummyLM

    answers = spec.get("answers")
    if answers is None:
        return DummyLM([], follow_examples=bool(spec.get("follow_examples", True)))
    if isinstance(answers, dict) and spec.get("always"):
        # {"": {...}}: the empty key matches every prompt, so the answer never runs out.
        return DummyLM({"": answers})
    return DummyLM(answers)


def _build(spec: dict[str, Any]) -> Any:
    import dspy

    if "api_key" in spec:
        raise LMSpecError(
            "LM specs must not carry api_key (secrets never travel to workers); "
            "name the environment variable with api_key_env instead"
        )
    if spec.get("kind") == "dummy":
        return _dummy(spec)
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise LMSpecError(f"LM spec needs a 'model' string, got {spec!r:.200}")
    api_base = spec.get("api_base")
    kwargs: dict[str, Any] = {k: v for k, v in spec.items() if k in _PASSED and v is not None}
    # dspex LMs default to cache=True in process; a worker LM caches in the worker's
    # memory only (the bridge turns DSPy's disk cache off at import).
    kwargs.setdefault("cache", True)
    extra = spec.get("extra") or {}
    if not isinstance(extra, dict):
        raise LMSpecError("LM spec 'extra' must be a dict")
    kwargs.update({k: v for k, v in extra.items() if k not in ("api_key", "extra_body")})
    key_env = spec.get("api_key_env")
    api_key = os.environ.get(key_env) if key_env else None
    if api_base:
        kwargs["api_base"] = api_base
        # Local OpenAI-compatible servers accept any key; DSPy's client wants one.
        kwargs["api_key"] = api_key or "dspex-local"
    elif api_key:
        kwargs["api_key"] = api_key
    provider, _, name = model.partition("/")
    local_server = provider == "openai" and bool(api_base) and "api.openai.com" not in str(api_base)
    if local_server and spec.get("max_tokens_field", "max_tokens") == "max_tokens":
        model = f"hosted_vllm/{name}"
    if spec.get("grammar") and local_server:
        return _grammar_lm(dspy, model, kwargs, spec)
    return dspy.LM(model, **kwargs)


# --------------------------------------------------------------------------- grammar

# DSPy type names gbnf_for has no spelling for, but whose values are plain text.
_TYPE_ALIASES = {"Reasoning": "str"}


def grammar_for_messages(messages: Sequence[dict[str, Any]], max_tokens: int | None = None) -> str | None:
    """The GBNF grammar for the reply a DSPy-formatted prompt asks for, or None.

    None (send no grammar) whenever the prompt is not one of DSPy's ChatAdapter /
    JSONAdapter prompts, a field's type has no grammar, or the system message's
    output fields disagree with the reminder (e.g. a field the reminder words
    differently): a wrong grammar would make every reply unparseable.
    """
    found = requested_fields(messages)
    if not found or not found[1]:
        return None
    kind, fields = found
    system = next((message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "system"), "")
    declared = output_field_types(system)
    if declared and list(declared) != [name for name, _ in fields]:
        return None
    resolved = tuple((name, t or declared.get(name) or "str") for name, t in fields)
    return _grammar(kind, resolved, int(max_tokens) if max_tokens else None)


@lru_cache(maxsize=256)
def _grammar(kind: str, fields: tuple[tuple[str, str], ...], max_tokens: int | None) -> str | None:
    from ..native.grammar import gbnf_for
    from ..native.signature import signature

    spec = "dspex_prompt -> " + ", ".join(f"{name}: {_TYPE_ALIASES.get(t, t)}" for name, t in fields)
    try:
        return gbnf_for(signature(spec), kind, max_tokens=max_tokens)
    except Exception:  # an unknown type name, a reserved field name: no grammar, never a failed call
        return None


def _request_messages(request: Any) -> list[dict[str, Any]]:
    """An lm15 Request's system text and messages as OpenAI-style dicts (text parts only)."""
    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        return "".join(str(getattr(p, "text", "") or "") for p in value)

    out = [{"role": "system", "content": text(request.system)}] if request.system else []
    out += [{"role": str(m.role), "content": text(m.parts)} for m in request.messages]
    return out


def _with_grammar(request: Any, default_max_tokens: int | None) -> Any:
    config = request.config
    # llama.cpp refuses grammar together with response_format / tools; leave those alone.
    if config.response_format is not None or request.tools or "grammar" in (config.extensions or {}):
        return request
    grammar = grammar_for_messages(_request_messages(request), config.max_tokens or default_max_tokens)
    if grammar is None:
        return request
    extensions = {**(config.extensions or {}), "grammar": grammar}
    return dataclasses.replace(request, config=dataclasses.replace(config, extensions=extensions))


class GrammarEngine:
    """DSPy's native engine plus a per-request ``grammar`` (see the module docstring)."""

    def __init__(self, router_config: Any, model_type: str = "chat", max_tokens: int | None = None) -> None:
        from dspy.clients.engines.lm15_engine import LM15Engine

        self._inner = LM15Engine(router_config, model_type=model_type)
        self.max_tokens = max_tokens

    def complete(self, request: Any) -> Any:
        return self._inner.complete(_with_grammar(request, self.max_tokens))

    def stream(self, request: Any) -> Any:
        return self._inner.stream(_with_grammar(request, self.max_tokens))

    def close(self) -> None:
        self._inner.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> GrammarEngine:
        return self  # a connection pool: shared by copies of the LM, like DSPy's own engines


class AsyncGrammarEngine:
    """The async twin; one inner engine per event loop (DSPy's async pools are loop-bound)."""

    def __init__(self, router_config: Any, model_type: str = "chat", max_tokens: int | None = None) -> None:
        self._config = router_config
        self._model_type = model_type
        self.max_tokens = max_tokens
        self._engines: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def _engine(self) -> Any:
        import asyncio

        from dspy.clients.engines.lm15_engine import AsyncLM15Engine

        loop = asyncio.get_running_loop()
        with self._lock:
            for dead in [lp for lp in self._engines if lp.is_closed()]:
                del self._engines[dead]
            engine = self._engines.get(loop)
            if engine is None:
                engine = self._engines[loop] = AsyncLM15Engine(self._config, model_type=self._model_type)
        return engine

    async def complete(self, request: Any) -> Any:
        return await self._engine().complete(_with_grammar(request, self.max_tokens))

    def stream(self, request: Any) -> Any:
        return self._engine().stream(_with_grammar(request, self.max_tokens))

    async def aclose(self) -> None:
        import asyncio

        engine = self._engines.pop(asyncio.get_running_loop(), None)
        if engine is not None:
            await engine.aclose()

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncGrammarEngine:
        return self


def _grammar_lm(dspy: Any, model: str, kwargs: dict[str, Any], spec: dict[str, Any]) -> Any:
    """``dspy.LM(model, engine=GrammarEngine(...))``: the connection settings move to the engine."""
    from dspy.clients.engines.lm15_engine import LM15Engine, timeouts_for
    from dspy.lm15 import RouterConfig

    kwargs = dict(kwargs)
    api_base = kwargs.pop("api_base")
    api_key = kwargs.pop("api_key")
    timeout = kwargs.pop("timeout", None)
    model_type = kwargs.get("model_type", "chat")
    provider = LM15Engine(RouterConfig(env={}), model_type=model_type).resolve(model).provider
    config = RouterConfig(api_keys={provider: api_key}, base_urls={provider: api_base},
                          timeouts=timeouts_for(timeout))
    max_tokens = spec.get("max_tokens")
    return dspy.LM(model, engine=GrammarEngine(config, model_type, max_tokens),
                   async_engine=AsyncGrammarEngine(config, model_type, max_tokens), **kwargs)


def build_lm(spec: dict[str, Any] | str | None) -> Any:
    """A ``dspy.LM`` for ``spec`` (a dict from ``LM.to_spec()`` or a model string); None stays None."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict):
        raise LMSpecError(f"an LM spec is a dict or a model string, not {type(spec).__name__}")
    # DummyLMs with scripted answers are stateful (an iterator): never share them.
    if spec.get("kind") == "dummy" and not spec.get("always"):
        return _build(spec)
    return _cache.get(spec_key(spec), lambda: _build(spec))
