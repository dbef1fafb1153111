"""Fixtures for the Ray backend tests: a multi-node cluster simulated on this machine.

``ray.cluster_utils.Cluster`` starts a head and extra nodes (separate raylets, one CPU
each: the machine is small and shared); this process joins it as the driver. One
cluster per test module (``ray_cluster``), shut down at the module's end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest.importorskip("ray")

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray
from ray.cluster_utils import Cluster

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    """Head + 2 worker nodes, 1 CPU each; the test process is the driver."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
