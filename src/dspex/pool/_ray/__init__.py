"""The Ray backend of dspex pools (``backend = "ray"``): workers are Ray actors.

``RayPool`` (``pool.py``) imports Ray; it loads on first use, so that checking a
config table (``config.py``, stdlib only) does not. See ``pool.py`` for the parts
and docs/ray.md for running on a cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["RayPool"]


def __getattr__(name: str) -> Any:
    if name != "RayPool":
        raise AttributeError(f"module 'dspex.pool._ray' has no attribute {name!r}")
    from dspex.pool._ray.pool import RayPool

    return RayPool


if TYPE_CHECKING:  # pragma: no cover
    from dspex.pool._ray.pool import RayPool
