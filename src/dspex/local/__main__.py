"""``python -m dspex.local serve [--detach] | status | stop`` (what `dspex lm ...` calls)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import LocalModelError
from .control import serve, server_status, stop_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dspex lm", description="the embedded local model server")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server (foreground, or --detach)")
    p_serve.add_argument("--detach", action="store_true", help="keep running after this command exits")
    p_serve.add_argument(
        "--model",
        default=None,
        help="a model name (qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m) or a .gguf path",
    )
    p_serve.add_argument("--host", default=None)
    p_serve.add_argument("--port", type=int, default=None)
    p_serve.add_argument("--n-ctx", type=int, default=None)
    p_serve.add_argument("--n-threads", type=int, default=None)
    for name in ("status", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            info = serve(
                detach=args.detach,
                model=args.model,
                host=args.host,
                port=args.port,
                n_ctx=args.n_ctx,
                n_threads=args.n_threads,
            )
            if args.detach:
                print(json.dumps(info, indent=1))
            return 0
        if args.command == "status":
            info = server_status(args.model)
            print(json.dumps(info, indent=1))
            return 0 if info.get("healthy") else 1
        stopped = stop_server(args.model)
        print("stopped" if stopped else "no local model server was running")
        return 0
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
