"""Fixtures for the Ray backend tests: a multi-node cluster simulated on this machine.

``ray.cluster_utils.Cluster`` starts a head and extra nodes (separate raylets, one CPU
each: the machine is small and shared); this process joins it as the driver. One
cluster per test module (``ray_cluster``), shut down at the module's end.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

if importlib.util.find_spec("ray") is None:  # the ray extra is not installed: nothing here can run
    collect_ignore_glob = ["test_*.py"]
    Cluster: Any = None
else:
    import ray
    from ray.cluster_utils import Cluster


def _start_cluster(attempts: int = 2) -> Cluster:
    """Ray gives a raylet 30 s to register (hard-coded); a heavily loaded machine can
    miss that once, so a failed start is cleaned up and tried again."""
    for attempt in range(attempts):
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=1, include_dashboard=False)  # the head
            cluster.add_node(num_cpus=1)
            cluster.add_node(num_cpus=1, resources={"accel": 1})  # a custom resource to place by
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            cluster.shutdown()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    """Head + 2 worker nodes, 1 CPU each (the last also has 1 "accel"); the test process
    is the driver."""
    cluster = _start_cluster()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
