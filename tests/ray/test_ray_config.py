"""The backend interface and the Ray pool's configuration (no cluster needed)."""

from __future__ import annotations

import pytest

from dspex.errors import ConfigError
from dspex.pool import Pool, PoolBackend, PoolManager
from dspex.pool.backend import create_pool

pytest.importorskip("ray")

from dspex.pool import RayPool
from dspex.pool._ray.config import RayPoolConfig


def test_both_backends_satisfy_the_interface() -> None:
    local = Pool("a", size=1, handlers=["dspex.testing.handlers"])
    remote = RayPool("b", size=1, handlers=["dspex.testing.handlers"])
    try:
        assert isinstance(local, PoolBackend) and isinstance(remote, PoolBackend)
    finally:
        local.close()
        remote.close()


def test_config_backend_picks_the_implementation() -> None:
    assert type(create_pool("x", {"size": 1, "backend": "local"})) is Pool
    pool = create_pool("y", {"size": 3, "backend": "ray", "num_cpus": 0.5, "placement": "strict_spread"})
    assert isinstance(pool, RayPool) and pool.size == 3
    mgr = PoolManager({"pools": {"r": {"backend": "ray", "size": 2, "handlers": ["dspex.testing.handlers"],
                                       "address": "auto", "resources": {"accel": 1}}}})
    assert mgr.config("r")["backend"] == "ray"
    mgr.close_all()


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"backend": "spark"}, "backend must be one of"),
        ({"backend": "ray", "size": 0}, "size must be >= 1"),
        ({"backend": "ray", "affinity": "sticky"}, "affinity must be"),
        ({"backend": "ray", "placement": "everywhere"}, "placement must be one of"),
        ({"backend": "ray", "num_gpus": -1}, "num_gpus must be a number >= 0"),
        ({"backend": "ray", "resources": {"accel": "one"}}, "resources must be a table"),
        ({"backend": "ray", "max_requests": 100}, "not available with backend='ray': recycling"),
        ({"backend": "ray", "python": "/opt/venv"}, "not available with backend='ray'"),
        ({"backend": "ray", "num_cpu": 1}, "unknown option"),
    ],
)
def test_bad_tables_are_config_errors(table: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PoolManager({"pools": {"p": table}})
        create_pool("p", table)


def test_local_tables_refuse_ray_options() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['num_cpus'\]"):
        PoolManager({"pools": {"p": {"size": 1, "num_cpus": 1}}})


def test_resources_and_placement_map_to_actor_options() -> None:
    cfg = RayPoolConfig.build("g", {"size": 2, "num_cpus": 2, "num_gpus": 1, "memory_mb": 512,
                                    "resources": {"accel": 1}, "env": {"A": "1"},
                                    "runtime_env": {"env_vars": {"B": "2"}, "pip": ["x==1"]}, "max_restarts": 3})
    opts = cfg.actor_options("SPREAD")
    assert opts["num_cpus"] == 2.0 and opts["num_gpus"] == 1.0 and opts["memory"] == 512 * 1024 * 1024
    assert opts["resources"] == {"accel": 1.0} and opts["scheduling_strategy"] == "SPREAD"
    assert opts["max_restarts"] == 3 and opts["max_task_retries"] == 0
    assert opts["runtime_env"]["pip"] == ["x==1"]
    assert opts["runtime_env"]["env_vars"] == {"B": "2", "A": "1", "DSPEX_POOL_WORKER": "g:ray"}
    assert cfg.bundle() == {"CPU": 2.0, "GPU": 1.0, "memory": 512 * 1024 * 1024, "accel": 1.0}
    # Nothing set: Ray's defaults (no resource keys at all).
    bare = RayPoolConfig.build("h", {}).actor_options()
    assert not {"num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy"} & set(bare)
