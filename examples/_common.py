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
    p.add_argument("--debug", action="store_true", help="full tracebacks (and worker stderr) on errors")
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
    """Which step ran where (native / pool + worker pid) and how long: a rich table if installed."""
    rows = trace.rows()
    cols = ["step", "where", "pid", "ms", "status", "tokens"]
    if any(r["retries"] for r in rows):
        cols.insert(4, "retries")
    for r in rows:  # "native" ran in this process; else the pool's name (the pid is its worker)
        r["where"] = {"native": "native", "cache": "cache", "group": ""}.get(r["where"], f"pool {r['where']}")
        r["ms"] = f"{r['ms']:.0f}"
        r["tokens"] = r["tokens"] or ""
    title = f"pipeline {trace.pipeline!r}: {trace.duration_s:.1f} s, {trace.status}"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        cells = [cols] + [["" if r[c] is None else str(r[c]) for c in cols] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
        print(f"\n{title}")
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return
    table = Table(title=title)
    for col in cols:
        table.add_column(col, justify="right" if col in ("pid", "ms", "retries", "tokens") else "left",
                         no_wrap=True)
    for r in rows:
        table.add_row(*("" if r[c] is None else str(r[c]) for c in cols))
    Console().print(table)


def report_error(exc: BaseException, debug: bool, prog: str = "") -> int:
    """One stderr line (what went wrong — how to fix it) and the exit code; a traceback with ``--debug``."""
    import sys
    import traceback

    from dspex._cli.common import classify

    code, what, fix = classify(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
        remote = getattr(exc, "remote_traceback", "") or getattr(getattr(exc, "cause", None), "remote_traceback", "")
        if remote:
            sys.stderr.write(f"remote traceback:\n{remote}\n")
    prog = prog or os.path.basename(sys.argv[0] or "example")
    line = f"{prog}: error: {what}" + (f" — {fix}" if fix and " — " not in what else "")
    sys.stderr.write(line + "\n")
    return code or 1
