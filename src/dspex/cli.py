"""The ``dspex`` command.

    dspex predict "question -> answer" question="What is 2+2?"   one prediction
    dspex run pipeline.yaml --input question="..."               run a saved pipeline
    dspex optimize program.json --trainset data.jsonl ...         optimize a program
    dspex pools                                                   configured pools and metrics
    dspex lm serve|status|stop                                    the embedded local model
    dspex doctor                                                  what is installed, what runs, fixes
    dspex serve [serve.toml] --program qa=qa.json ...             programs and pipelines over HTTP
    dspex bench [--quick] [name...]                               the benchmarks in bench/

Output is for humans by default; ``--json`` prints exactly one JSON document on
stdout (progress and errors go to stderr). An error is one line on stderr,
``dspex: error: <what> — <fix>``; ``--debug`` (or ``DSPEX_DEBUG=1``) adds the traceback.

Exit codes:
    0    success
    1    runtime failure: the LM, a pool worker or a pipeline step failed
    2    usage error: bad arguments, malformed signature, missing input field,
         bad trainset line, invalid config or pipeline file
    3    environment problem: something is not installed or not running, an endpoint
         is unreachable, an API key is missing (``dspex doctor`` says how to fix it);
         also ``dspex lm status`` when the local model is not running
    130  interrupted (Ctrl-C)

This module imports only the standard library at start-up; each subcommand
imports what it needs (``dspex._cli.<command>``), so ``dspex --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["EXIT_ENV", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_ENV = 3
EXIT_INTERRUPTED = 130

_EPILOG = """\
exit codes:
  0    success
  1    runtime failure (LM, pool worker or pipeline step failed)
  2    usage error (bad arguments, malformed signature, missing input field,
       bad trainset line, invalid config or pipeline file)
  3    environment problem (not installed, not running, endpoint unreachable,
       missing API key) — `dspex doctor` shows the fix
  130  interrupted

The LM for predict/run/optimize: --lm/--api-base, else the config file's [lm]
section or DSPEX_LM / DSPEX_API_BASE, else the embedded local model.
--json prints one JSON document on stdout; errors are one line on stderr.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``dspex: error: ... — ...``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fix = f"run '{self.prog} --help' for usage"
        sys.stderr.write(f"dspex: error: {message} — {fix}\n")
        raise SystemExit(EXIT_USAGE)


def _add_lm_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LM (default: config [lm] / DSPEX_LM, else the embedded model)")
    g.add_argument("--lm", metavar="MODEL", help='model, e.g. "openai/gpt-4o-mini" or "anthropic/claude-..."')
    g.add_argument(
        "--api-base", metavar="URL", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1"
    )
    g.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    g.add_argument("--temperature", type=float, metavar="T")
    g.add_argument("--max-tokens", type=int, metavar="N")
    g.add_argument("--timeout", type=float, metavar="S", help="per-request timeout in seconds")
    g.add_argument("--retries", type=int, metavar="N", help="retries of retryable LM errors (0 = fail fast)")


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Subcommands use SUPPRESS so `dspex --json predict ...` is not reset by the subparser's default.
    default = False if top else argparse.SUPPRESS
    p.add_argument("--json", action="store_true", default=default, help="print one JSON document on stdout")
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs and the tests)."""
    parser = _Parser(
        prog="dspex",
        description="dspex: run, optimize and inspect DSPy-style LM programs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the dspex version and exit")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=description or help,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_common(p)
        return p

    # predict
    p = add(
        "predict",
        "run one prediction",
        'Run one prediction: dspex predict "question -> answer" question="What is 2+2?". '
        "Values for non-str fields are parsed as JSON when they parse.",
    )
    p.add_argument("signature", help='signature, e.g. "context: list[str], question -> answer: int"')
    p.add_argument("inputs", nargs="*", metavar="field=value", help="input field values")
    p.add_argument("--cot", action="store_true", help="chain of thought (adds a reasoning output)")
    p.add_argument(
        "--impl", choices=["auto", "native", "dspy"], default=None, help="implementation (default: auto)"
    )
    p.add_argument("--instructions", metavar="TEXT", help="instructions for the signature")
    p.add_argument(
        "--input-json", metavar="JSON", help="inputs as one JSON object (merged under field=value)"
    )
    _add_lm_flags(p)

    # run
    p = add("run", "run a pipeline file (YAML or JSON)")
    p.add_argument("pipeline", help="pipeline file written by Pipeline.save (YAML or JSON)")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="K=V",
        help="an input (repeatable); V is parsed as JSON when it parses, else kept as a string",
    )
    p.add_argument("--input-json", metavar="JSON", help="all inputs as one JSON object")
    p.add_argument("--trace", action="store_true", help="print the step trace (human output)")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PATTERN",
        help='allow importing code the file references, e.g. "mypkg.steps:*" (repeatable)',
    )
    _add_lm_flags(p)

    # optimize
    p = add(
        "optimize",
        "optimize a program with a trainset",
        "Optimize a saved program (DSPy program-state JSON) on a JSONL trainset. "
        "The result is written atomically: --out appears only when the run succeeds.",
    )
    p.add_argument("program", help="program state JSON (as written by Predict.save / DSPy module.save)")
    p.add_argument(
        "--signature",
        "-s",
        required=True,
        metavar="SIG",
        help='the program\'s signature, e.g. "question -> answer" (DSPy state files do not record field names)',
    )
    p.add_argument(
        "--cot", action="store_true", help="the program is a ChainOfThought (auto-detected from the file)"
    )
    p.add_argument("--trainset", required=True, metavar="FILE", help="JSONL, one example object per line")
    p.add_argument("--valset", metavar="FILE", help="JSONL validation set (optional)")
    p.add_argument(
        "--optimizer", default="bootstrap", help="bootstrap | miprov2 | copro | gepa | simba | ..."
    )
    p.add_argument(
        "--metric", required=True, metavar="MODULE:FN", help="metric function, e.g. metrics:exact_match"
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the optimized program (default: <program>.optimized.json)",
    )
    p.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="K=V",
        help="optimizer option (repeatable), V parsed as JSON when it parses",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    _add_lm_flags(p)

    # pools
    p = add(
        "pools",
        "status and metrics of the configured pools",
        "Show the pools configured in dspex.toml / [tool.dspex] (and the defaults). Pools live "
        "inside the process that uses them, so this process sees them unstarted unless --start "
        "starts them here (workers are spawned, checked and closed again).",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these pools")
    p.add_argument("--start", action="store_true", help="start the pools and report live worker metrics")

    # lm
    p = add(
        "lm", "the embedded local model service", "Control the embedded local model (llama.cpp + Qwen2.5-Coder-0.5B by default)."
    )
    lm_sub = p.add_subparsers(dest="lm_command", metavar="ACTION", parser_class=_Parser)
    lp = lm_sub.add_parser("serve", help="start the local model server")
    _add_common(lp)
    lp.add_argument("--port", type=int, help="port (default: config [local].port, 0 = any free port)")
    lp.add_argument("--foreground", action="store_true", help="stay in the foreground until Ctrl-C")
    lp = lm_sub.add_parser("status", help="is the local model server running? (exit 3 if not)")
    _add_common(lp)
    lp = lm_sub.add_parser("stop", help="stop the local model server")
    _add_common(lp)

    # doctor
    p = add("doctor", "what is installed, what runs, what is missing and how to fix it")
    p.add_argument(
        "--no-network", action="store_true", help="skip the reachability check of the configured LM"
    )

    # serve
    p = add("serve", "serve programs and pipelines over HTTP (needs dspex[serve])")
    from ._cli.serve import add_arguments as _serve_arguments

    _serve_arguments(p)
    _add_lm_flags(p)

    # bench
    p = add(
        "bench",
        "run the benchmarks in bench/",
        "Run bench/run_all.py from the dspex source checkout (found from the working directory "
        "upwards, then next to the installed package, or DSPEX_BENCH_DIR).",
    )
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="benchmarks to run (core, lm, pool, bridge, pipeline, local)"
    )
    p.add_argument("--quick", action="store_true", help="reduced counts: finishes in seconds")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser


def _debug_wanted(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("DSPEX_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dspex`` script. Returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_wanted(args_list)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    args.debug = debug
    if args.version:
        from . import __version__

        print(f"dspex {__version__}")
        return EXIT_OK
    if not args.command:
        parser.print_help(sys.stderr)
        sys.stderr.write("dspex: error: no command given — pick one of the commands above\n")
        return EXIT_USAGE
    if args.command == "lm" and not getattr(args, "lm_command", None):
        sys.stderr.write(
            "dspex: error: no action given — use 'dspex lm serve', 'dspex lm status' or 'dspex lm stop'\n"
        )
        return EXIT_USAGE

    from ._cli.common import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
