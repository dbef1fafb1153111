"""Shared by the examples: pick the LM, print results and traces.

Every example runs against the embedded local model by default, or against any
OpenAI-compatible server with ``--api-base URL`` (or the env ``DSPEX_API_BASE``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import dspex


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--api-base", default=os.environ.get("DSPEX_API_BASE"),
                   help="OpenAI-compatible server (default: the embedded local model)")
    p.add_argument("--model", default=os.environ.get("DSPEX_MODEL", "local"), help="model name on that server")
    p.add_argument("--api-key-env", default=None, help="env variable holding the API key, if one is needed")
    return p


def resolve_lm(args: argparse.Namespace, lm: Any = None) -> Any:
    """The LM given by the caller, else ``--api-base``, else the embedded model."""
    if lm is not None:
        return lm
    if args.api_base:
        return dspex.LM(f"openai/{args.model}", api_base=args.api_base, api_key_env=args.api_key_env)
    from dspex.local import default_lm

    return default_lm()


def setup(description: str, argv: Sequence[str] | None, lm: Any = None,
          extra: Any = None) -> tuple[argparse.Namespace, Any]:
    p = parser(description)
    if extra is not None:
        extra(p)
    args = p.parse_args(list(argv) if argv is not None else None)
    return args, resolve_lm(args, lm)


def show(title: str, value: Any) -> None:
    print(f"{title}: {value}")


def print_trace(trace: Any) -> None:
    """Which step ran where (native / pool + pid) and how long: a rich table if installed."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(trace.table())
        return
    table = Table(title=f"pipeline {trace.pipeline!r}: {trace.duration_s * 1000:.0f} ms, session {trace.session}")
    for col in ("step", "kind", "where", "pid", "ms", "retries", "status", "tokens"):
        table.add_column(col, justify="right" if col in ("pid", "ms", "retries", "tokens") else "left",
                         no_wrap=col == "step")
    for row in trace.rows():
        table.add_row(*("" if row[c] is None else str(row[c]) for c in
                        ("step", "kind", "where", "pid", "ms", "retries", "status", "tokens")))
    Console().print(table)
