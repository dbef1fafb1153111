"""One prediction per call: ``predict`` / ``apredict``, routed and dispatched by the router."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..router import decide
from ..router.dispatch import arun_module, run_module
from ..router.payload import as_signature


def predict(sig: Any, inputs: Mapping[str, Any] | None = None, /, *, impl: str | None = None, lm: Any = None,
            adapter: Any = None, pool: Any = None, **opts: Any) -> Any:
    """One prediction for ``inputs`` with ``sig``, native or in a DSPy worker (``dspy.run``)."""
    s = as_signature(sig)
    d = decide("predict", s, impl=impl, adapter=adapter, **opts)
    return run_module(d, s, inputs or {}, lm=lm, adapter=adapter, options=opts, pool=pool)


async def apredict(sig: Any, inputs: Mapping[str, Any] | None = None, /, *, impl: str | None = None,
                   lm: Any = None, adapter: Any = None, pool: Any = None, **opts: Any) -> Any:
    """The async form of :func:`predict`."""
    s = as_signature(sig)
    d = decide("predict", s, impl=impl, adapter=adapter, **opts)
    return await arun_module(d, s, inputs or {}, lm=lm, adapter=adapter, options=opts, pool=pool)
