"""The child side of a pool: entry point of the template and worker processes.

Standard library + msgpack only, so a pool can run under another interpreter or
virtualenv that has nothing else installed. Started by the host as

    python -c BOOTSTRAP <dspex package dir> --zygote '<json config>'

(``python -m dspex.pool.worker --zygote ...`` works too when dspex is importable).

The parts, one job each (imported only once a process is started, so importing
this module stays light):
  _zygote.py    the template (zygote): imports once, forks workers, reaps them and
                whatever they leave behind; fresh-interpreter workers (spawn mode)
  _runtime.py   the worker runtime: frames in, handlers run, answers out
  _procsafe.py  leave with the host, kill descendants, never run the host's script

Never a copy of the host program: the runtime's ``__main__`` is the bootstrap (no
``__file__``/``__spec__``, so multiprocessing children do not re-import the host's
script), importing the host's main script by module name is steered to the real
module of that name, and ``DSPEX_POOL_WORKER`` marks this process and its
descendants so that a Pool started there refuses (``Pool.start`` →
``PoolError``) unless ``DSPEX_ALLOW_NESTED_POOLS=1``.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from dspex.pool._procsafe import ALLOW_NESTED_ENV, WORKER_ENV, become_worker, set_pdeathsig

__all__ = ["ALLOW_NESTED_ENV", "BOOTSTRAP", "WORKER_ENV", "main"]

# Loads the dspex package from a directory (without needing it installed in the
# target interpreter) and runs main(). argv: [-c, <dspex dir>, <mode>, <json>].
BOOTSTRAP = (
    "import sys\n"
    "if 'dspex' not in sys.modules:\n"
    "    import importlib.util as u\n"
    "    p = sys.argv[1]\n"
    "    s = u.spec_from_file_location('dspex', p + '/__init__.py', submodule_search_locations=[p])\n"
    "    m = u.module_from_spec(s); sys.modules['dspex'] = m; s.loader.exec_module(m)\n"
    "from dspex.pool.worker import main\n"
    "main(sys.argv[2:])\n"
)

def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("--zygote", "--worker"):
        sys.stderr.write(
            "usage: python -m dspex.pool.worker --zygote|--worker '<json config>'\n"
            "(started by dspex.pool.Pool; not meant to be run by hand)\n"
        )
        raise SystemExit(2)
    cfg = json.loads(args[1])
    become_worker(cfg)
    for path in cfg.get("sys_path", []):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ.update({k: str(v) for k, v in cfg.get("env", {}).items()})
    from dspex.pool._zygote import Zygote, spawned_worker

    if args[0] == "--zygote":
        cfg["zygote_pid"] = os.getpid()
        # Our parent is the host's supervisor thread, which lives as long as the pool.
        # (A launcher in between, or a host already gone: the pidfd watch covers it.)
        # SIGTERM, not SIGKILL: the template kills its workers and their trees first.
        if os.getppid() == int(cfg["host_pid"]):
            set_pdeathsig(signal.SIGTERM)
        Zygote(cfg).run()
    else:
        spawned_worker(cfg)


if __name__ == "__main__":
    main()
