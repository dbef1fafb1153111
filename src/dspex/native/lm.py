"""LM clients: OpenAI-compatible chat completions and Anthropic Messages.

    lm = dspex.LM("openai/gpt-4o-mini")                        # OPENAI_API_KEY
    lm = dspex.LM("openai/local", api_base="http://127.0.0.1:8080/v1")   # llama.cpp, vLLM, Ollama
    lm = dspex.LM("anthropic/claude-sonnet-4-5")                 # ANTHROPIC_API_KEY
    completion = lm.complete([{"role": "user", "content": "hi"}], temperature=0)
    completion = await lm.acomplete(messages)

What a call does: merge the LM's defaults with per-call overrides; look the
request up in the cache (unless off or a rollout id asks otherwise); wait for
the rate limiter; POST it over a pooled keep-alive connection; retry only
retryable failures (429, 5xx, timeouts, connection errors) with exponential
backoff plus jitter, honouring ``Retry-After``; turn the reply into a
:class:`Completion`; add its token usage to every enclosing ``dspex.context()``.

Secrets: the API key is read from the environment (``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY`` or the variable named by ``api_key_env``) at call time.
It never appears in ``repr``, ``to_spec()``, cache keys, history, pickles or
error messages (provider error text is scrubbed of it). ``api_key=`` is
accepted for DSPy-style scripts but is kept in this process only.

``rollout_id`` (a call override or ``dspex.context(rollout_id=...)``) follows
DSPy 3.4.1: it is part of the cache key and never sent to the provider, so a
new rollout id misses the cache, and repeating one hits its own entry.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    ConfigError,
    ContextWindowExceeded,
    LMAuthError,
    LMBadResponse,
    LMError,
    LMRateLimited,
    LMTimeout,
    LMTransportError,
)
from ..settings import current
from . import _http
from . import transport as _transport
from ._decode import decode_reply
from ._ratelimit import TokenBucket, estimate_tokens, parse_retry_after

__all__ = ["LM", "BaseLM", "Completion", "TokenBucket"]

_PROVIDERS = ("openai", "anthropic")
_DEFAULT_BASE = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com/v1"}
_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_ANTHROPIC_VERSION = "2023-06-01"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
# Names of request fields that hold secrets: left out of cache keys and specs. An explicit
# list: a substring test ("token") used to drop max_tokens & co. and serve wrong cached replies.
_SECRET_WORDS = (
    "api_key", "apikey", "api_secret", "api_token", "access_token", "auth_token", "bearer_token", "token",
    "authorization", "x-api-key", "headers", "extra_headers", "default_headers", "password", "secret",
    "client_secret", "credentials",
)  # fmt: skip


def _is_secret(name: str) -> bool:
    return name.lower() in _SECRET_WORDS


# Call options that change the request and so belong in the cache key.
_CALL_PARAMS = ("temperature", "max_tokens", "n", "grammar", "top_p", "stop", "seed", "response_format")
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "exceeds the available context size",
    "exceed_context_size_error",
    "prompt is too long",
    "maximum context length",
    "context window",
    "too many tokens",
)
_MAX_RETRY_AFTER = 120.0  # a server asking for a longer wait gets an immediate LMRateLimited


@dataclass(slots=True)
class Completion:
    """One LM reply. ``texts`` has one entry per choice (``n``); ``text`` is the first."""

    text: str
    usage: dict[str, int]
    model: str
    raw: Any = None
    cached: bool = False
    texts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "usage": self.usage, "model": self.model, "raw": self.raw, "texts": self.texts}


class _Call:
    """One prepared request: what to send and how to recognise it in the cache."""

    __slots__ = ("body", "cache_key", "n", "path", "payload", "use_cache")

    def __init__(self, path: str, body: dict[str, Any], n: int, use_cache: bool, cache_key: str | None):
        self.path = path
        self.body = body
        self.payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.n = n
        self.use_cache = use_cache
        self.cache_key = cache_key


class BaseLM:
    """Base of custom LMs, in DSPy's ``BaseLM`` style: subclass it (or :class:`LM`) and override
    ``forward(prompt=None, messages=None, **kwargs)`` returning an OpenAI-style response (a dict
    or object with ``choices[i].message.content`` and ``usage``), or ``__call__`` returning the
    reply texts. Predict calls the override (``dspex.native.predict`` dispatches)."""

    def __init__(self, model: str = "custom", model_type: str = "chat", cache: bool = False,
                 num_retries: int = 0, **kwargs: Any):
        self.model = model
        self.model_type = model_type
        self.cache = cache
        self.num_retries = num_retries
        self.kwargs: dict[str, Any] = dict(kwargs)

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must override forward() or __call__()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """DSPy-style ``lm(prompt=None, messages=None, **kwargs) -> list[str]``."""
        prompt = kwargs.pop("prompt", args[0] if args and isinstance(args[0], str) else None)
        messages = kwargs.pop("messages", args[0] if args and isinstance(args[0], list) else None)
        return BaseLM.complete(self, messages or [{"role": "user", "content": prompt or ""}], **kwargs).texts

    def complete(self, messages: list[dict[str, Any]], **overrides: Any) -> Completion:
        """The override's reply as a :class:`Completion` (``__call__`` first, else ``forward``)."""
        from ._custom_lm import call_override

        return call_override(self, messages, overrides)

    async def acomplete(self, messages: list[dict[str, Any]], **overrides: Any) -> Completion:
        """The override's ``aforward`` if it has one, else the sync override on a thread."""
        from ._custom_lm import acall_override

        return await acall_override(self, messages, overrides)

    def dump_state(self) -> dict[str, Any]:
        """DSPy's LM state shape (``model``, ``model_type``, ``cache``, ``num_retries``, kwargs); no keys."""
        from .state import lm_state

        return lm_state(self) or {}


class LM(BaseLM):
    """A client for one model on one endpoint. Thread-safe and usable from any event loop."""

    _backoff_base = 0.5  # seconds before the first retry (doubles per attempt, with jitter)

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 60.0,
        num_retries: int = 3,
        total_timeout: float | None = None,
        cache: bool = True,
        rpm: float | None = None,
        tpm: float | None = None,
        rps: float | None = None,
        grammar: bool | str | None = None,
        history_size: int = 100,
        api_key: str | None = None,
        ssl_ca_file: str | None = None,
        verify: bool | str = True,
        transport: _transport.Transport | None = None,
        **extra: Any,
    ):
        provider, sep, name = model.partition("/")
        if not sep or provider not in _PROVIDERS or not name:
            raise ConfigError(
                f"LM model must be 'openai/<name>' (any OpenAI-compatible server: OpenAI, vLLM, llama.cpp, "
                f"Ollama; set api_base=) or 'anthropic/<name>', not {model!r}"
            )
        if num_retries < 0:
            raise ConfigError(f"num_retries must be >= 0, got {num_retries}")
        if total_timeout is not None and not total_timeout > 0:
            raise ConfigError(f"total_timeout must be > 0 seconds (or None for no overall limit), got {total_timeout}")
        self.model = model
        self.provider = provider
        self.model_name = name
        self.api_base = (api_base or os.environ.get(f"DSPEX_{provider.upper()}_API_BASE") or _DEFAULT_BASE[provider]).rstrip("/")
        try:
            self._endpoint = _http.Endpoint.parse(self.api_base)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = float(timeout)
        self.num_retries = int(num_retries)
        # One call's budget over all attempts and backoff waits (``timeout`` bounds each attempt).
        self.total_timeout = None if total_timeout is None else float(total_timeout)
        self.cache = cache
        self.rpm, self.tpm, self.rps = rpm, tpm, rps
        self.grammar = grammar
        self.extra = dict(extra)
        self.history_size = history_size
        self.history: deque[dict[str, Any]] = deque(maxlen=history_size)
        self._api_key = api_key
        self.ssl_ca_file = ssl_ca_file  # a CA bundle for a private CA (self-signed servers)
        self.verify = verify  # False: no certificate check; a path: that CA bundle
        self._custom_transport = transport  # not pickled: a receiving process picks its own
        self._setup()

    def _setup(self) -> None:
        """Build the per-process parts: pools, rate limiters (also after unpickling)."""
        self._url_path = f"{self._endpoint.base_path}/{'messages' if self.provider == 'anthropic' else 'chat/completions'}"
        self.url = f"{self._endpoint.origin}{self._url_path}"
        self._transport: _transport.Transport = getattr(self, "_custom_transport", None) or _transport.choose(
            self._endpoint, ssl_ca_file=self.ssl_ca_file, verify=self.verify
        )
        rate = self.rps if self.rps else (self.rpm / 60.0 if self.rpm else None)
        self._req_bucket = TokenBucket(rate) if rate else None
        self._tok_bucket = TokenBucket(self.tpm / 60.0, capacity=self.tpm) if self.tpm else None
        self._headers_for: tuple[str | None, dict[str, str]] | None = None
        self._is_local = self._endpoint.host in _LOCAL_HOSTS

    # ----------------------------------------------------------------- info
    @property
    def supports_grammar(self) -> bool:
        """True when the endpoint takes a GBNF ``grammar`` body field (llama.cpp's server)."""
        return self.provider == "openai" and bool(self.grammar)

    @property
    def kwargs(self) -> dict[str, Any]:  # type: ignore[override]
        """DSPy's ``lm.kwargs``: the request defaults (temperature, max_tokens, a custom api_base, extras)."""
        kw: dict[str, Any] = {
            k: v for k, v in (("temperature", self.temperature), ("max_tokens", self.max_tokens)) if v is not None
        }
        if self.api_base != _DEFAULT_BASE[self.provider]:
            kw["api_base"] = self.api_base
        kw.update((k, v) for k, v in self.extra.items() if not _is_secret(k))
        return kw

    @property
    def key_env(self) -> str:
        return self.api_key_env or _DEFAULT_KEY_ENV[self.provider]

    def to_spec(self) -> dict[str, Any]:
        """JSON-safe constructor arguments, without secrets (``LM.from_spec`` rebuilds the LM)."""
        spec: dict[str, Any] = {
            "model": self.model,
            "api_base": self.api_base,
            "api_key_env": self.api_key_env,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "num_retries": self.num_retries,
            "total_timeout": self.total_timeout,
            "cache": self.cache,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "rps": self.rps,
            "grammar": self.grammar,
        }
        if self.ssl_ca_file is not None:
            spec["ssl_ca_file"] = self.ssl_ca_file
        if self.verify is not True:
            spec["verify"] = self.verify
        for k, v in self.extra.items():
            if not _is_secret(k):
                spec[k] = v
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LM:
        spec = dict(spec)
        spec.pop("api_key", None)  # keys come from the environment, never from a spec
        return cls(**spec)

    def copy(self, **overrides: Any) -> LM:
        """A new LM with some constructor arguments changed (keeps an explicit api_key)."""
        spec = {**self.to_spec(), **{k: v for k, v in self.extra.items()}, **overrides}
        new = type(self)(**spec)
        new._api_key = self._api_key
        return new

    def __repr__(self) -> str:
        return f"LM({self.model!r}, api_base={self.api_base!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_") or k in ("_endpoint",)}
        state["history"] = deque(maxlen=self.history_size)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._api_key = None  # secrets do not travel: the receiving process reads its own env
        self._setup()

    def close(self) -> None:
        """Close idle pooled connections (they also close when the LM is collected)."""
        self._transport.close()

    # ------------------------------------------------------------- requests
    def _key(self) -> str | None:
        return self._api_key or os.environ.get(self.key_env) or None

    def _headers(self) -> dict[str, str]:
        key = self._key()
        cached = self._headers_for
        if cached is not None and cached[0] == key:
            return cached[1]
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "dspex/0.1"}
        if self.provider == "anthropic":
            headers["anthropic-version"] = _ANTHROPIC_VERSION
            if key:
                headers["x-api-key"] = key
        elif key:
            headers["Authorization"] = f"Bearer {key}"
        self._headers_for = (key, headers)
        return headers

    def _prepare(self, messages: list[dict[str, Any]], overrides: dict[str, Any]) -> _Call:
        st = current()
        cache_override = overrides.pop("cache", None)
        rollout_id = overrides.pop("rollout_id", None)
        if rollout_id is None:
            rollout_id = st.rollout_id
        params: dict[str, Any] = {}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if isinstance(self.grammar, str):
            params["grammar"] = self.grammar
        params.update(self.extra)
        for k, v in overrides.items():
            if v is None:
                params.pop(k, None)
            else:
                params[k] = v
        if "max_completion_tokens" in params and "max_tokens" not in params:
            # llama.cpp's server ignores max_completion_tokens; send the one every server reads
            params["max_tokens"] = params.pop("max_completion_tokens")
        if params.get("grammar") is True:
            params.pop("grammar")
        n = int(params.get("n") or 1)
        if n == 1:
            params.pop("n", None)
        if self.provider == "anthropic":
            path, body = self._url_path, self._anthropic_body(messages, params)
        else:
            path, body = self._url_path, {"model": self.model_name, "messages": messages, **params}
        # cache switch: config/env kill switch, then call, context, LM
        use_cache = False
        key: str | None = None
        wanted = cache_override if cache_override is not None else (st.cache if st.cache is not None else self.cache)
        if wanted:
            from .cache import default_cache, request_key

            store = default_cache()
            if store is not None:
                use_cache = True
                safe = {k: v for k, v in body.items() if not _is_secret(k)}  # every field that shapes the reply
                key = request_key({"provider": self.provider, "api_base": self.api_base, "body": safe, "rollout_id": rollout_id})
        return _Call(path, body, n, use_cache, key)

    def _anthropic_body(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        system = [str(m.get("content") or "") for m in messages if m.get("role") == "system"]
        rest = [{"role": m["role"], "content": m.get("content") or ""} for m in messages if m.get("role") != "system"]
        body: dict[str, Any] = {"model": self.model_name}
        if system:
            body["system"] = "\n\n".join(system)
        body["messages"] = rest
        body["max_tokens"] = params.pop("max_tokens", None) or 1024  # required by the Messages API
        params.pop("n", None)
        params.pop("grammar", None)
        body.update(params)
        return body

    def _from_cache(self, call: _Call) -> Completion | None:
        if not call.use_cache or call.cache_key is None:
            return None
        from .cache import default_cache

        store = default_cache()
        value = store.get(call.cache_key) if store is not None else None
        if value is None:
            return None
        return Completion(value["text"], value["usage"], value["model"], value.get("raw"), True, value.get("texts") or [value["text"]])

    def _finish(self, call: _Call, resp: _http.Response, messages: list[dict[str, Any]]) -> Completion:
        if resp.status >= 400:
            raise self._error(resp)
        if resp.status >= 300:  # a 3xx the transport could not follow (no Location, too many hops)
            raise LMBadResponse(
                f"{self.model}: {self.url} answered HTTP {resp.status} (a redirect to "
                f"{resp.headers.get('location', 'nowhere')!r}); set api_base to the final URL",
                status=resp.status,
                model=self.model,
            )
        d = decode_reply(resp.body, self.provider, where=self.url, model=self.model, status=resp.status, scrub=self._scrub)
        prompt, completion, texts = d.prompt_tokens, d.completion_tokens, d.texts
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        out = Completion(texts[0], usage, d.model or self.model_name, d.data, False, texts)
        current().record_usage(self.model, prompt, completion)
        if self._tok_bucket is not None:  # settle the estimate taken before the call
            self._tok_bucket.reserve(prompt + completion - estimate_tokens(messages))
        if call.use_cache and call.cache_key is not None:
            from .cache import default_cache

            store = default_cache()
            if store is not None:
                store.put(call.cache_key, out.to_dict())
        self.history.append({"messages": messages, "text": out.text, "usage": usage, "time": time.time()})
        return out

    def _scrub(self, text: str) -> str:
        key = self._key()
        if key and len(key) >= 4:
            text = text.replace(key, "***")
        return text

    def _error(self, resp: _http.Response) -> LMError:
        status = resp.status
        text = self._scrub(resp.body[:2000].decode("utf-8", "replace"))
        detail = text
        try:
            err = json.loads(text).get("error")
            if isinstance(err, dict):
                detail = str(err.get("message") or err)
            elif err:
                detail = str(err)
        except (ValueError, AttributeError, RecursionError):  # not JSON, or absurdly nested
            pass
        detail = detail[:300]
        lowered = text.lower()
        kw: dict[str, Any] = {"status": status, "model": self.model, "body": text}
        if status == 429:
            retry_after = parse_retry_after(resp.headers)
            exc: LMError = LMRateLimited(
                f"{self.model}: rate limited by {self.url} (HTTP 429"
                f"{f', retry after {retry_after:.3g}s' if retry_after is not None else ''}): {detail}. "
                "Lower the call rate (LM(rpm=..., tpm=...)) or raise num_retries.",
                retry_after=retry_after,
                **kw,
            )
            return exc
        if status in (401, 403):
            return LMAuthError(
                f"{self.model}: {self.url} refused the credentials (HTTP {status}): {detail}. "
                f"Set {self.key_env} in this process's environment (or pass api_key_env= naming the variable).",
                **kw,
            )
        if status in (400, 413, 422) and any(m in lowered for m in _CONTEXT_MARKERS):
            return ContextWindowExceeded(
                f"{self.model}: the prompt is too long for the model's context window (HTTP {status}): {detail}. "
                "Shorten the inputs or demos, or lower max_tokens.",
                **kw,
            )
        exc = LMBadResponse(f"{self.model}: {self.url} answered HTTP {status}: {detail}", **kw)
        if status >= 500 or status == 408:
            exc.retryable = True  # server-side trouble: trying again can succeed
            exc.retry_after = parse_retry_after(resp.headers)
        return exc

    def _transport_error(self, exc: Exception, attempts: int) -> LMError:
        if isinstance(exc, _transport.BadResponse):
            return LMBadResponse(
                f"{self.model}: {self.url} sent a malformed HTTP response ({self._scrub(str(exc))}). "
                "Is api_base an HTTP/1.1 LM server?",
                model=self.model,
            )
        if isinstance(exc, _transport.TLSError):
            err = LMTransportError(f"{self.model}: {self._scrub(str(exc))}", model=self.model)
            err.retryable = False  # the same certificate fails the same way
            return err
        if isinstance(exc, _http.Timeout):
            return LMTimeout(
                f"{self.model}: no reply from {self.url} within {self.timeout:g}s ({attempts} attempt(s)). "
                "Raise timeout= or check that the server is not overloaded.",
                model=self.model,
            )
        return LMTransportError(
            f"{self.model}: cannot reach {self.url} ({self._scrub(str(exc))}) after {attempts} attempt(s). "
            "Check that the LM server is running and that api_base is right.",
            model=self.model,
        )

    def _backoff(self, attempt: int, exc: LMError) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if attempt >= self.num_retries or not exc.retryable:
            return None
        if exc.retry_after is not None:
            if exc.retry_after > _MAX_RETRY_AFTER:
                return None
            return exc.retry_after + random.uniform(0, 0.05)  # at least what the server asked for
        return min(30.0, self._backoff_base * 2**attempt) * random.uniform(0.5, 1.0)

    def _deadline(self) -> float | None:
        return None if self.total_timeout is None else time.monotonic() + self.total_timeout

    def _attempt_timeout(self, deadline: float | None, attempts: int, last: LMError | None) -> float:
        """This attempt's timeout: ``timeout``, cut to what is left of ``total_timeout``."""
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._out_of_time(attempts, last)
        return min(self.timeout, left)

    def _next_wait(self, attempt: int, err: LMError, deadline: float | None) -> float:
        """The wait before retrying after ``err``, or raise: no retry left, or no time for one."""
        delay = self._backoff(attempt, err)
        if delay is None:
            raise err
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise self._out_of_time(attempt + 1, err)
        return delay

    def _out_of_time(self, attempts: int, last: LMError | None) -> LMTimeout:
        cause = f"; last error: {last}" if last is not None else ""
        exc = LMTimeout(
            f"{self.model}: no reply within total_timeout={self.total_timeout:g} s ({attempts} attempt(s) made){cause}. "
            "Raise total_timeout, or lower timeout/num_retries so the attempts fit in it.",
            model=self.model,
        )
        exc.__cause__ = last
        return exc

    # ----------------------------------------------------------------- sync
    def complete(self, messages: list[dict[str, Any]], **overrides: Any) -> Completion:
        """Send ``messages`` and return the reply. Overrides: temperature, max_tokens, n, grammar, cache, rollout_id, ..."""
        call = self._prepare(messages, overrides)
        hit = self._from_cache(call)
        if hit is not None:
            return hit
        if self._req_bucket is not None:
            self._req_bucket.acquire()
        if self._tok_bucket is not None:
            self._tok_bucket.acquire(estimate_tokens(messages))
        attempt, deadline = 0, self._deadline()
        err: LMError | None = None
        while True:
            timeout = self._attempt_timeout(deadline, attempt, err)
            try:
                resp = self._transport.request("POST", call.path, self._headers(), call.payload, timeout)
                return self._finish(call, resp, messages)
            except (_http.Timeout, _http.ConnectError, _transport.BadResponse) as exc:
                err = self._transport_error(exc, attempt + 1)
            except LMError as exc:
                err = exc
            delay = self._next_wait(attempt, err, deadline)
            time.sleep(delay)
            attempt += 1

    # ---------------------------------------------------------------- async
    async def acomplete(self, messages: list[dict[str, Any]], **overrides: Any) -> Completion:
        """Async ``complete``: connections are pooled per event loop."""
        call = self._prepare(messages, overrides)
        hit = self._from_cache(call)
        if hit is not None:
            return hit
        if self._req_bucket is not None:
            await self._req_bucket.aacquire()
        if self._tok_bucket is not None:
            await self._tok_bucket.aacquire(estimate_tokens(messages))
        attempt, deadline = 0, self._deadline()
        err: LMError | None = None
        while True:
            timeout = self._attempt_timeout(deadline, attempt, err)
            try:
                resp = await self._transport.arequest("POST", call.path, self._headers(), call.payload, timeout)
                return self._finish(call, resp, messages)
            except (_http.Timeout, _http.ConnectError, _transport.BadResponse) as exc:
                err = self._transport_error(exc, attempt + 1)
            except LMError as exc:
                err = exc
            delay = self._next_wait(attempt, err, deadline)
            await asyncio.sleep(delay)
            attempt += 1

    def __call__(self, messages: list[dict[str, Any]], **overrides: Any) -> list[str]:
        """DSPy-style call: the reply texts."""
        return self.complete(messages, **overrides).texts
