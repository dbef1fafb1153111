"""The API side of composite programs (``dspex.Module``).

* :func:`run_program` / :func:`arun_program`: run a program where the router says: natively
  when every predictor in it is native-capable (``native_reason`` is None), else the whole
  program in a DSPy worker (``dspy.program``: the user's ``forward()`` with DSPy predictors).
  :func:`explain_program` says which and why, without running anything.
* :func:`program_payload`: the program shipped by value to a worker (cloudpickle). The user's
  class may live in ``__main__``, a test module or any module the worker cannot import:
  the class's own module is pickled by value, dspex/DSPy by reference. LMs travel without
  their keys (``LM.__getstate__``); workers read keys from their environment.
* :func:`load_optimized`: an optimizer's state loaded natively into a copy of the program
  that was optimized (same class, no workers needed to serve it).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from .. import router
from ..errors import ImplementationUnavailable
from ..native.module import Module
from ..router.dispatch import acall_worker, call_worker
from ..router.payload import adapter_wire, lm_spec
from ..router.results import prediction

__all__ = ["arun_program", "explain_program", "forward_inputs", "load_optimized", "program_payload", "run_program"]

_BY_REFERENCE = ("dspex", "dspy", "builtins")


def forward_inputs(program: Module) -> list[str]:
    """The names ``forward()`` takes: the input keys of a composite program's examples."""
    try:
        params = inspect.signature(type(program).forward).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def pickle_program(program: Module) -> bytes:
    """cloudpickle bytes of ``program``, its class's module by value."""
    try:
        import cloudpickle
    except ImportError as exc:
        raise ImplementationUnavailable(
            "shipping a dspex.Module to a DSPy worker needs cloudpickle (pip install 'dspex[dspy]')"
        ) from exc
    name = type(program).__module__
    module = sys.modules.get(name)
    by_value = module is not None and name != "__main__" and name.split(".")[0] not in _BY_REFERENCE
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return bytes(cloudpickle.dumps(program))
    except Exception as exc:
        raise ImplementationUnavailable(
            f"{type(program).__name__} cannot be shipped to a DSPy worker: pickling it failed "
            f"({type(exc).__name__}: {exc}); keep unpicklable objects (open files, sockets, locks, "
            "clients) out of the program's attributes, or run it natively"
        ) from exc
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def program_payload(program: Module) -> dict[str, Any]:
    """What ``dspy.program`` / ``dspy.optimize`` receive for a composite program."""
    return {
        "module": "Program",
        "class": f"{type(program).__module__}.{type(program).__qualname__}",
        "pickle": pickle_program(program),
        "input_keys": forward_inputs(program),
    }


def load_optimized(program: Module, state: dict[str, Any]) -> Module:
    """A copy of ``program`` with the optimized ``state`` loaded (native, no workers)."""
    out = program.deepcopy()
    out.load_state(state)
    return out


def explain_program(program: Module, *, impl: str | None = None) -> router.Decision:
    """Where :func:`run_program` runs ``program`` and why (never raises for routing)."""
    return router.explain("module", None, impl=impl, program=program)


def _request(program: Module, inputs: dict[str, Any], lm: Any, adapter: Any) -> dict[str, Any]:
    return {"program": program_payload(program), "inputs": inputs, "lm": lm_spec(lm),
            "adapter": adapter_wire(adapter)}


def run_program(program: Module, *, impl: str | None = None, pool: Any = None, lm: Any = None,
                adapter: Any = None, timeout: float | None = None, **inputs: Any) -> Any:
    """``program(**inputs)`` where the router says (see the module docstring); a Prediction."""
    d = router.decide("module", None, impl=impl, program=program)
    with router.track("module", d.impl):
        if d.impl == "native":
            import dspex

            with dspex.context(**{k: v for k, v in (("lm", lm), ("adapter", adapter)) if v is not None}):
                return program(**inputs)
        result = call_worker(d, _request(program, inputs, lm, adapter), pool=pool, timeout=timeout)
        return prediction(result, None)


async def arun_program(program: Module, *, impl: str | None = None, pool: Any = None, lm: Any = None,
                       adapter: Any = None, timeout: float | None = None, **inputs: Any) -> Any:
    """The async form of :func:`run_program`."""
    d = router.decide("module", None, impl=impl, program=program)
    with router.track("module", d.impl):
        if d.impl == "native":
            import dspex

            with dspex.context(**{k: v for k, v in (("lm", lm), ("adapter", adapter)) if v is not None}):
                return await program.acall(**inputs)
        result = await acall_worker(d, _request(program, inputs, lm, adapter), pool=pool, timeout=timeout)
        return prediction(result, None)
