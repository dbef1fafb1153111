"""The wire contract between the host (router, api, pipelines) and the DSPy bridge in workers.

Standard library only: the worker runtime and the bridge import it, so it must load
under any interpreter a pool runs (see docs/internals.md, "the worker runtime").

What it fixes, in one place:

* handler names (:class:`H`): the bridge registers exactly these, the host sends exactly
  these;
* the op -> DSPy module table and :func:`op_of` (``"dspy.ChainOfThought"``, ``"cot"``,
  ``"chain_of_thought"`` all name one op);
* :func:`adapter_name`, the one adapter-name normaliser (``"ChatAdapter"``, ``"chat"``,
  a ``JSONAdapter()`` object ...);
* the signature wire form's keys and the LM-spec rule (no secrets travel);
* structured error codes (:class:`E`) a bridge exception carries as ``wire_code`` /
  ``wire_detail`` (see ``dspex.pool.protocol``), mapped back to dspex error types by one
  host function (``dspex.router.results.from_remote``);
* :func:`scrub`, which removes secret values from text that crosses the boundary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ADAPTERS",
    "BRIDGE_ADAPTERS",
    "MODULE_OP",
    "NATIVE_ADAPTERS",
    "OP_MODULE",
    "SIGNATURE_KEYS",
    "E",
    "H",
    "WireError",
    "adapter_name",
    "check_lm_spec",
    "env_secrets",
    "op_of",
    "scrub",
]


class H:
    """Bridge handler names (``dspex.bridge.dspy_handlers`` registers these)."""

    PING = "dspy.ping"
    RUN = "dspy.run"  # build (or reuse) a module, call it once; threaded in the worker
    RUN_INLINE = "dspy.run_inline"  # the same on the worker's main thread (fast, CPU-bound calls)
    CREATE = "dspy.create"  # a module kept in the session: CREATE once, CALL many times
    CALL = "dspy.call"
    GET_STATE = "dspy.get_state"
    SET_STATE = "dspy.set_state"
    DELETE = "dspy.delete"
    MODULES = "dspy.modules"
    OPTIMIZE = "dspy.optimize"
    PROGRAM = "dspy.program"  # a composite program (dspex.Module) run in a worker (bridge/_program.py)
    EMBED_SEARCH = "dspy.embed_search"
    COLBERT_SEARCH = "dspy.colbert_search"


# Predictor ops and the DSPy module each builds in a worker.
OP_MODULE: dict[str, str] = {
    "predict": "Predict",
    "chain_of_thought": "ChainOfThought",
    "react": "ReAct",
    "program_of_thought": "ProgramOfThought",
    "multi_chain_comparison": "MultiChainComparison",
    "best_of_n": "BestOfN",
    "refine": "Refine",
    "code_act": "CodeAct",
}
MODULE_OP: dict[str, str] = {v: k for k, v in OP_MODULE.items()}
_OP_ALIASES = {"cot": "chain_of_thought", "chainofthought": "chain_of_thought", "pot": "program_of_thought"}


def op_of(kind: str) -> str:
    """The op a module or op name means: ``"dspy.ReAct"`` / ``"ReAct"`` / ``"react"`` -> ``"react"``."""
    key = kind.removeprefix("dspy.")
    if key in MODULE_OP:
        return MODULE_OP[key]
    key = _OP_ALIASES.get(key.lower(), key.lower())
    if key not in OP_MODULE:
        raise ValueError(f"unknown predictor type {kind!r}; one of {', '.join(OP_MODULE)}")
    return key


# Adapters: the names a request may use, and which side implements which.
ADAPTERS = ("chat", "json", "xml", "two_step")
NATIVE_ADAPTERS = frozenset({"chat", "json"})
BRIDGE_ADAPTERS = frozenset({"chat", "json", "xml"})


def adapter_name(adapter: Any) -> str | None:
    """The one spelling of an adapter: ``"ChatAdapter"``, ``"chat"``, ``ChatAdapter()`` -> ``"chat"``.

    None stays None (the default adapter); unknown names come back normalised too, so the
    caller can say which side lacks it.
    """
    if adapter is None:
        return None
    raw = adapter if isinstance(adapter, str) else type(adapter).__name__
    key = raw.strip().lower().replace("-", "_")
    key = key.removesuffix("adapter").rstrip("_")
    return "two_step" if key == "twostep" else key


# The signature wire form: a DSPy signature string, or a dict with these keys
# (``spec`` required; ``fields`` is {name: {"desc", "prefix"}}; ``custom_types`` is
# {"Name": "package.module:Qualname"}). Built by dspex.router.payload.signature_wire,
# read by dspex.bridge._convert.build_signature.
SIGNATURE_KEYS = ("spec", "instructions", "fields", "custom_types")

# LM specs (dspex.LM.to_spec()) name the environment variable with the key, never the key.
_SECRET_SPEC_KEYS = frozenset({"api_key", "extra_body"})


def check_lm_spec(spec: Any) -> None:
    """Raise ValueError if an LM spec carries a secret (it must never travel)."""
    if isinstance(spec, Mapping):
        if "api_key" in spec:
            raise ValueError(
                "LM specs must not carry api_key (secrets never travel to workers); "
                "name the environment variable with api_key_env instead"
            )
        extra = spec.get("extra")
        if isinstance(extra, Mapping) and _SECRET_SPEC_KEYS & set(extra):
            raise ValueError("LM spec 'extra' must not carry api_key or extra_body")


class E:
    """Error codes in error frames (``RemoteError.code``) and the dspex type each maps to."""

    PARSE = "parse"  # ParseError; detail: raw, adapter
    LM_RATE_LIMITED = "lm.rate_limited"  # LMRateLimited; detail: status, retry_after, model
    LM_TIMEOUT = "lm.timeout"  # LMTimeout
    LM_AUTH = "lm.auth"  # LMAuthError
    LM_CONTEXT_WINDOW = "lm.context_window"  # ContextWindowExceeded
    LM_BAD_RESPONSE = "lm.bad_response"  # LMBadResponse
    LM_TRANSPORT = "lm.transport"  # LMTransportError
    LM = "lm.error"  # LMError (any other provider failure)
    LOCAL_UNAVAILABLE = "local.unavailable"  # ImplementationUnavailable (no LM, local model off)
    UNSUPPORTED = "unsupported"  # ImplementationUnavailable (adapter, module not allowlisted)
    MODULE_LOST = "module.lost"  # a dspy.create module is gone from this worker: re-create it
    BAD_OPTION = "option"  # ConfigError: an option the DSPy module / optimizer does not take


class WireError(Exception):
    """An exception a handler raises with a code: the worker sends ``wire_code`` / ``wire_detail``."""

    def __init__(self, code: str, message: str, **detail: Any):
        super().__init__(message)
        self.wire_code = code
        self.wire_detail = detail


# Environment variables whose values are secrets wherever they appear.
_SECRET_NAME = re.compile(r"(API_?KEY|_TOKEN|_SECRET|PASSWORD)$|^(API_?KEY|TOKEN)$", re.IGNORECASE)
_MIN_SECRET = 6  # shorter values would scrub ordinary words


def env_secrets(environ: Mapping[str, str] | None = None, names: Iterable[str] = ()) -> list[str]:
    """Secret values in ``environ``: variables named like keys/tokens, plus ``names``."""
    env = os.environ if environ is None else environ
    wanted = set(names)
    found = {v for k, v in env.items() if (k in wanted or _SECRET_NAME.search(k)) and len(v) >= _MIN_SECRET}
    return sorted(found, key=len, reverse=True)  # longest first: a key containing another


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret value replaced by ``***`` (default: :func:`env_secrets`)."""
    for s in env_secrets() if secrets is None else secrets:
        if s and len(s) >= _MIN_SECRET and s in text:
            text = text.replace(s, "***")
    return text
