"""``dspex lm serve|status|stop``: the embedded local model service (``dspex.local``).

``serve`` starts a detached server that every dspex process on this machine finds
(through the state file) until ``dspex lm stop``; ``--foreground`` keeps it
attached to the terminal until Ctrl-C. ``status`` exits 0 when a healthy server
runs and 3 (environment problem) when none does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..cli import EXIT_ENV, EXIT_OK
from .common import emit_json


def run(args: argparse.Namespace) -> int:
    from .. import local

    action = args.lm_command
    if action == "serve":
        return _serve(args, local)
    if action == "status":
        return _status(args, local)
    return _stop(args, local)


def _serve(args: argparse.Namespace, local: Any) -> int:
    if args.foreground:
        if args.json:
            sys.stderr.write("dspex: note: --json is ignored with --foreground\n")
        local.serve(detach=False, port=args.port)
        return EXIT_OK
    info = local.serve(detach=True, port=args.port)
    if args.json:
        emit_json(info)
    else:
        url = info.get("base_url", "?")
        print(f"local model server running at {url} (pid {info.get('pid')}, model {info.get('model', '?')})")
        print(f"use it with: --lm {local.LM_MODEL} --api-base {url}   (stop it with: dspex lm stop)")
    return EXIT_OK


def _status(args: argparse.Namespace, local: Any) -> int:
    info = dict(local.server_status())
    running = bool(info.get("running"))
    healthy = bool(info.get("healthy"))
    code = EXIT_OK if running and healthy else EXIT_ENV
    if args.json:
        info["ok"] = code == EXIT_OK
        emit_json(info)
        return code
    if not running:
        print("local model server: not running — start it with `dspex lm serve`")
    elif not healthy:
        print(
            f"local model server: running (pid {info.get('pid')}, {info.get('base_url')}) but not healthy"
            f" — see its log {info.get('log', '')} or restart: dspex lm stop && dspex lm serve"
        )
    else:
        busy = " (busy)" if info.get("busy") else ""
        print(f"local model server: running{busy} at {info.get('base_url')}")
        for key in ("pid", "model", "model_path", "n_threads", "n_ctx", "detached", "log"):
            if info.get(key) is not None:
                print(f"  {key}: {info[key]}")
    return code


def _stop(args: argparse.Namespace, local: Any) -> int:
    stopped = bool(local.stop_server())
    if args.json:
        emit_json({"stopped": stopped})
    else:
        print("local model server stopped" if stopped else "no local model server was running")
    return EXIT_OK
