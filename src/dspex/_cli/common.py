"""Shared machinery of the ``dspex`` subcommands.

* ``run_command(args)``: imports the subcommand module, runs it, and turns every
  failure into one stderr line ``dspex: error: <what> — <fix>`` plus an exit code.
* ``UsageError`` / ``EnvironmentProblem``: what subcommands raise for exit codes 2 / 3.
* Input parsing (``k=v`` pairs, JSON objects), LM selection from flags / config,
  and output helpers (one JSON document on stdout, human text otherwise).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from .. import errors
from ..cli import EXIT_ENV, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE

__all__ = [
    "CLIError",
    "EnvironmentProblem",
    "UsageError",
    "classify",
    "emit_json",
    "lm_from_args",
    "parse_json_object",
    "parse_kv",
    "parse_value",
    "run_command",
]


class CLIError(Exception):
    """A failure the CLI reports as ``<message> — <fix>`` with ``code``."""

    code = EXIT_RUNTIME

    def __init__(self, message: str, fix: str = "", code: int | None = None):
        self.message = message
        self.fix = fix
        if code is not None:
            self.code = code
        super().__init__(message)


class UsageError(CLIError):
    """Bad arguments or input files: exit code 2."""

    code = EXIT_USAGE


class EnvironmentProblem(CLIError):
    """Something not installed / not running / unreachable: exit code 3."""

    code = EXIT_ENV


# ---------------------------------------------------------------- errors -> exit codes


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# (dspex error classes, exit code, what precedes the message, fix) for the errors whose
# report is just that; the first match wins, so subclasses come before their bases.
_REPORTS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str, str], ...] = (
    (errors.SignatureError, EXIT_USAGE, "malformed signature: ", 'write it as "in1, in2: type -> out1: type"'),
    (errors.TemplateError, EXIT_USAGE, "bad template: ", "fix the placeholder"),
    (
        errors.ConfigError,
        EXIT_USAGE,
        "bad configuration: ",
        "fix dspex.toml / [tool.dspex] (`dspex doctor` shows which file)",
    ),
    (errors.LMAuthError, EXIT_ENV, "LM refused the credentials: ", "export the API key variable (--api-key-env NAME)"),
    (errors.LMTimeout, EXIT_RUNTIME, "LM timed out: ", "raise --timeout or check the server's load"),
    (errors.LMRateLimited, EXIT_RUNTIME, "LM rate limit: ", "retry later or raise --retries"),
    (errors.ContextWindowExceeded, EXIT_RUNTIME, "prompt too long: ", "shorten the inputs or lower --max-tokens"),
    (errors.LMError, EXIT_RUNTIME, "LM call failed: ", "check the model name and the server's log; --debug shows details"),
    (
        errors.ParseError,
        EXIT_RUNTIME,
        "could not parse the LM reply: ",
        "try --cot, a stronger --lm, or rerun with --debug to see the raw reply",
    ),
    (errors.CheckFailed, EXIT_RUNTIME, "output check failed: ", "relax the check or use a stronger model"),
    (
        (errors.ImplementationUnavailable, errors.LocalModelError),
        EXIT_ENV,
        "",
        "run `dspex doctor` for the install commands",
    ),
    (errors.PoolError, EXIT_RUNTIME, "pool call failed: ", "`dspex pools` shows the pools; --debug for details"),
    (errors.RemoteError, EXIT_RUNTIME, "worker raised ", "rerun with --debug for the remote traceback"),
    (errors.DspexError, EXIT_RUNTIME, "", "rerun with --debug for details"),
)


def classify(exc: BaseException, args: argparse.Namespace | None = None) -> tuple[int, str, str]:
    """Map an exception to (exit code, what went wrong, how to fix it)."""
    if isinstance(exc, CLIError):
        return exc.code, _one_line(exc.message), exc.fix
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted", "nothing was written"
    msg = _one_line(str(exc))
    # The errors whose report needs more than their message; none is a base of another.
    if isinstance(exc, errors.StepFailed) and isinstance(exc.cause, BaseException):
        code, what, fix = classify(exc.cause, args)
        return (code if code != EXIT_USAGE else EXIT_RUNTIME), f"step {exc.step!r}: {what}", fix
    if isinstance(exc, errors.PipelineError):
        problems = "; ".join(" ".join(p.split()) for p in exc.problems)
        fix = "fix the pipeline file or the inputs"
        if "input" in problems and "missing" in problems:
            fix = "pass it with --input NAME=VALUE (or --input-json '{...}')"
        elif "not allowed" in problems:
            fix = "let `dspex run` import that code with --allow 'module:*' (or --allow module:function)"
        return EXIT_USAGE, f"pipeline problem: {problems}", fix
    if isinstance(exc, errors.LMTransportError):
        api_base = getattr(args, "api_base", None) if args is not None else None
        where = f" at {api_base}" if api_base else ""
        return (
            EXIT_ENV,
            f"LM endpoint unreachable{where}: {msg}",
            "start the server or pass the right --api-base / DSPEX_API_BASE (`dspex doctor` checks it)",
        )
    if isinstance(exc, errors.WorkerStartError):
        # The message embeds the worker's whole stderr tail; its last line is the cause.
        head = str(exc).split("Its stderr ends with:")[0]
        tail = [ln for ln in str(getattr(exc, "stderr_tail", "") or "").splitlines() if ln.strip()]
        msg = _one_line(head + (f" Last stderr line: {tail[-1].strip()}" if tail else ""))
        return (
            EXIT_ENV,
            f"pool workers did not start: {msg}",
            "check the pool's handlers/python in the config; `dspex pools --start NAME`",
        )
    for classes, code, prefix, fix in _REPORTS:
        if isinstance(exc, classes):
            return code, prefix + msg, fix
    if isinstance(exc, ModuleNotFoundError):
        name = exc.name or msg
        if name.startswith("dspex"):
            return (
                EXIT_ENV,
                f"this dspex install lacks {name}",
                "reinstall: pip install -e . (or pip install -U dspex)",
            )
        return EXIT_ENV, f"module {name!r} is not installed", f"pip install {name.split('.')[0]}"
    if isinstance(exc, FileNotFoundError):
        return EXIT_USAGE, f"file not found: {exc.filename or msg}", "check the path"
    if isinstance(exc, PermissionError):
        return EXIT_ENV, f"permission denied: {exc.filename or msg}", "check the file's permissions"
    return (
        EXIT_RUNTIME,
        f"unexpected {type(exc).__name__}: {msg}",
        "rerun with --debug and report the traceback",
    )


def report_error(exc: BaseException, args: argparse.Namespace | None, debug: bool) -> int:
    from ..wire import scrub  # stdlib only; secrets of this environment never reach the terminal

    code, what, fix = classify(exc, args)
    if debug and not isinstance(exc, (KeyboardInterrupt, UsageError)):
        sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
        remote_tb = getattr(exc, "remote_traceback", "") or getattr(
            getattr(exc, "cause", None), "remote_traceback", ""
        )
        if remote_tb:
            sys.stderr.write("remote traceback:\n" + scrub(str(remote_tb)) + "\n")
    line = f"dspex: error: {what}"
    if fix and " — " not in what:
        line += f" — {fix}"
    sys.stderr.write(scrub(line) + "\n")
    sys.stderr.flush()
    return code


# Commands that may start worker pools in this process.
_POOL_COMMANDS = {"optimize", "run", "pools"}


def quiet_worker_stderr() -> None:
    """Make the default PoolManager start pools with ``forward_stderr=False`` unless their
    config chooses: a worker's tracebacks and library chatter would break the one-line
    error rule (start failures and remote errors carry their stderr/traceback anyway,
    and ``--debug`` keeps forwarding on). Keeps a default manager that already exists."""
    from ..pool import PoolManager, set_default_manager

    set_default_manager(PoolManager(forward_stderr=False), replace=False)


def run_command(args: argparse.Namespace) -> int:
    """Run ``dspex._cli.<command>.run(args)`` and map failures to exit codes."""
    debug = bool(getattr(args, "debug", False))
    if not hasattr(args, "json"):
        args.json = False
    try:
        uses_pools = (
            args.command in _POOL_COMMANDS and (args.command != "pools" or bool(getattr(args, "start", False)))
        ) or getattr(args, "impl", None) == "dspy"
        if uses_pools and not debug:
            quiet_worker_stderr()
        module = importlib.import_module(f".{args.command}", __package__)
        code = module.run(args)
        sys.stdout.flush()
        return EXIT_OK if code is None else int(code)
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`): not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return EXIT_OK
    except (Exception, KeyboardInterrupt) as exc:
        return report_error(exc, args, debug)


# ---------------------------------------------------------------- inputs


def parse_value(text: str) -> Any:
    """JSON when it parses (``3`` -> 3, ``[1,2]`` -> list, ``"x"`` -> 'x'), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_kv(pairs: Iterable[str], *, what: str = "input", raw_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Parse ``k=v`` items. Values of keys in ``raw_keys`` stay strings; others go through ``parse_value``."""
    raw = set(raw_keys)
    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(
                f"{what} {item!r} is not key=value", 'write it as name=value, e.g. question="What is 2+2?"'
            )
        if not key.isidentifier():
            raise UsageError(f"{what} name {key!r} is not a valid field name", "use letters, digits and _")
        out[key] = value if key in raw else parse_value(value)
    return out


def parse_json_object(text: str, *, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(
            f"{what} is not valid JSON ({exc})", 'pass one JSON object, e.g. \'{"question": "..."}\''
        ) from None
    if not isinstance(data, dict):
        raise UsageError(
            f"{what} must be a JSON object, not {type(data).__name__}", "wrap the values in {...}"
        )
    return data


# ---------------------------------------------------------------- the LM


def lm_from_args(args: argparse.Namespace) -> Any:
    """The LM chosen by flags or config, or None to let the layers fall back to the local model.

    Flags override the config's ``[lm]`` (which already carries DSPEX_LM / DSPEX_API_BASE).
    """
    from ..settings import load_config

    cfg = dict(load_config().get("lm") or {})
    flags = {
        "model": getattr(args, "lm", None),
        "api_base": getattr(args, "api_base", None),
        "api_key_env": getattr(args, "api_key_env", None),
        "temperature": getattr(args, "temperature", None),
        "max_tokens": getattr(args, "max_tokens", None),
        "timeout": getattr(args, "timeout", None),
        "num_retries": getattr(args, "retries", None),
    }
    if (
        flags["model"] is None
        and flags["api_base"] is None
        and not cfg.get("model")
        and not cfg.get("api_base")
    ):
        if any(v is not None for v in flags.values()):
            raise UsageError(
                "LM options given but no LM chosen",
                "add --lm openai/<model> --api-base URL (or set [lm] in dspex.toml)",
            )
        return None  # the layers use the embedded local model
    spec = {k: v for k, v in cfg.items() if v is not None}
    spec.update({k: v for k, v in flags.items() if v is not None})
    if not spec.get("model"):
        # An OpenAI-compatible server without a model name (llama.cpp, vLLM with one model).
        spec["model"] = "openai/default"
    model = str(spec["model"])
    if "/" not in model:
        raise UsageError(
            f"LM model {model!r} has no provider prefix",
            f"use openai/{model} (any OpenAI-compatible server) or anthropic/{model}",
        )
    from .. import LM

    return LM.from_spec(spec)


def lm_label(lm: Any) -> str:
    if lm is None:
        return "local (embedded model)"
    model = getattr(lm, "model", None) or "?"
    base = getattr(lm, "api_base", None)
    return f"{model} @ {base}" if base else str(model)


# ---------------------------------------------------------------- output


def to_jsonable(value: Any) -> Any:
    """Best-effort conversion of outputs (Predictions, pydantic models, sets) to JSON types."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    for attr in ("model_dump", "as_dict", "to_dict", "toDict"):
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                return to_jsonable(fn())
            except Exception:
                pass
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(doc), ensure_ascii=False, indent=2) + "\n")


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(to_jsonable(value), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def print_fields(fields: Mapping[str, Any], out: Any = None) -> None:
    """``name: value`` lines; multi-line values go indented under their name."""
    out = out or sys.stdout
    for name, value in fields.items():
        text = format_value(value)
        if "\n" in text:
            out.write(f"{name}:\n")
            for line in text.splitlines():
                out.write(f"  {line}\n")
        else:
            out.write(f"{name}: {text}\n")


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
