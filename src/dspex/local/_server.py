"""Entry point of the embedded model server process (``python -m dspex.local._server``).

It arms the parent-death signal, then runs ``llama_cpp.server`` in this same
interpreter. Arming it here (not in a ``preexec_fn``) avoids forking with a
callback in a threaded host; the signal survives the ``runpy`` hand-over because
there is no exec. ``--dspex-parent-pid`` names the process whose death must kill
this server; it is absent for a detached server (``dspex lm serve --detach``).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def arm_parent_death_signal(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when our parent dies (Linux); exit if it already has."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    # The parent may have died between fork and prctl: then nobody would signal us.
    if os.getppid() != parent_pid:
        os._exit(0)


def disable_extra_buffer_types() -> None:
    """Load weights into plain CPU buffers, not the AMX/repack "extra" buffer types.

    With llama-cpp-python 0.3.36 on AMX-capable Xeons, the AMX matmul segfaults on
    the first decode of SmolLM2's Q4_1 weights. ``llama_cpp.server`` has no switch
    for ``use_extra_bufts``, so wrap the default-params factory the server's ``Llama``
    reads. ``DSPEX_LOCAL_EXTRA_BUFTS=1`` turns them back on.
    """
    if os.environ.get("DSPEX_LOCAL_EXTRA_BUFTS", "").strip() in ("1", "true", "yes"):
        return
    import llama_cpp.llama_cpp as capi

    original = capi.llama_model_default_params

    def params() -> Any:
        p = original()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    capi.llama_model_default_params = params


def guard_grammar() -> None:
    """Answer an unparsable GBNF grammar with an error instead of a segfault.

    llama-cpp-python adds the grammar sampler without checking for NULL (what
    llama.cpp returns for a grammar it cannot parse), so one bad ``grammar`` field
    would kill the server every process shares. Check it, and raise: the server
    turns the exception into an error response and keeps running.
    """
    from llama_cpp import _internals

    capi = _internals.llama_cpp

    def add_grammar(self: Any, model: Any, grammar: Any) -> None:
        sampler = capi.llama_sampler_init_grammar(
            model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not sampler:
            raise ValueError(
                "invalid GBNF grammar: llama.cpp could not parse it (its parse error is in the server log)"
            )
        capi.llama_sampler_chain_add(self.sampler, sampler)

    _internals.LlamaSampler.add_grammar = add_grammar  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    args = list(argv)
    if "--dspex-parent-pid" in args:
        i = args.index("--dspex-parent-pid")
        parent = int(args[i + 1])
        del args[i : i + 2]
        arm_parent_death_signal(parent)
    disable_extra_buffer_types()
    guard_grammar()
    sys.argv = ["llama_cpp.server", *args]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
