"""``dspex serve [CONFIG] [--program NAME=REF ...] [--pipeline NAME=FILE ...]``: the HTTP service.

``REF`` is ``pkg.mod:attr`` (any callable, predictor or Module), a program state JSON
file (give ``--signature NAME=SIG``), or a signature string (``"question -> answer"``, a
fresh Predict). Flags add to and override the config file (``[serve]`` in TOML, YAML or
JSON; see ``dspex.serve.config``). Binding anything but loopback needs ``--key-env VAR`` (the API key is read from VAR).
Prints ``dspex serve: listening on http://HOST:PORT`` on stderr once the socket is bound.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from .common import UsageError, lm_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="serve config file (TOML [serve], YAML or JSON)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; others need --key-env)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 = any free port)")
    p.add_argument("--key-env", dest="serve_api_key_env", metavar="VAR",
                   help="environment variable holding the API key clients must send")
    p.add_argument("--max-in-flight", type=int, metavar="N", help="calls at once; more get 429 (default 256)")
    p.add_argument("--max-body-bytes", type=int, metavar="N", help="larger bodies get 413 (default 1 MiB)")
    p.add_argument("--program", action="append", default=[], metavar="NAME=REF",
                   help="serve a program: pkg.mod:attr, state.json (with --signature) or a signature")
    p.add_argument("--signature", action="append", default=[], metavar="NAME=SIG",
                   help="the signature of program NAME (state files do not record field names)")
    p.add_argument("--cot", action="append", default=[], metavar="NAME", help="program NAME is a ChainOfThought")
    p.add_argument("--pipeline", action="append", default=[], metavar="NAME=FILE",
                   help="serve a pipeline file written by Pipeline.save")
    p.add_argument("--allow", action="append", default=[], metavar="PATTERN",
                   help='let pipelines import code, e.g. "mypkg.steps:*" (repeatable)')
    p.add_argument("--log-level", default=None, choices=["critical", "error", "warning", "info", "debug"])


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UsageError(f"{flag} {item!r} is not NAME=VALUE", f"write it as {flag} name=value")
        out[name.strip()] = value.strip()
    return out


def _programs(args: argparse.Namespace) -> list[dict[str, Any]]:
    sigs = _pairs(args.signature, "--signature")
    out: list[dict[str, Any]] = []
    for name, ref in _pairs(args.program, "--program").items():
        table: dict[str, Any] = {"name": name}
        if "->" in ref:
            table["signature"] = ref
        elif ref.endswith(".json"):
            if name not in sigs:
                raise UsageError(f"--program {name}={ref}: a state file needs the program's signature",
                                 f'add --signature {name}="question -> answer"')
            table.update(state=ref, signature=sigs[name])
        elif ":" in ref:
            table["object"] = ref
            if name in sigs:
                table["signature"] = sigs[name]
        else:
            raise UsageError(f"--program {name}={ref}: not a module:attr, a .json state file or a signature",
                             'use e.g. mypkg.programs:qa, qa.json or "question -> answer"')
        if name in args.cot:
            table["module"] = "ChainOfThought"
        out.append(table)
    return out


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..serve import load_serve_config
    from ..serve.server import run as serve

    pipelines = [{"name": n, "path": p} for n, p in _pairs(args.pipeline, "--pipeline").items()]
    try:
        cfg = load_serve_config(
            args.config, host=args.host, port=args.port, api_key_env=args.serve_api_key_env,
            max_in_flight=args.max_in_flight, max_body_bytes=args.max_body_bytes, log_level=args.log_level,
            programs=_programs(args), pipelines=pipelines)
    except ConfigError as exc:
        raise UsageError(str(exc), "fix the serve config file or the flags (dspex serve --help)") from None
    if args.allow:
        cfg.pipelines = [replace(ep, allow=(*ep.allow, *args.allow)) for ep in cfg.pipelines]
    lm = lm_from_args(args)

    def listening(url: str) -> None:
        names = ", ".join(ep.name for ep in cfg.endpoints)
        sys.stderr.write(f"dspex serve: listening on {url} (endpoints: {names}; try {url}/ , schema "
                         f"{url}/openapi.json)\n")
        sys.stderr.flush()

    try:
        return serve(cfg, on_listen=listening, lm=lm)
    except ConfigError as exc:
        raise UsageError(f"cannot serve: {exc}", "fix the serve config file or the flags (dspex serve --help)") from None
