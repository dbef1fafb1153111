"""Losing a node: strict sessions on it fail with SessionLost, hint sessions move.

Its own cluster (module fixture): the test removes one of its nodes.
"""

from __future__ import annotations

import pytest
from ray_util import node_of, wait_until

from dspex.errors import SessionLost
from dspex.pool import RayPool

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]

HANDLERS = ["dspex.testing.handlers"]


def _bind(pool: RayPool, n: int) -> dict[str, str]:
    """n sessions with state; session -> node of the worker holding it."""
    nodes = node_of(pool)
    where = {}
    for i in range(n):
        key = f"{pool.name}-{i}"
        r = pool.call_detailed("state_set", "who", key, session=key)
        where[key] = nodes[r.pid]
    return where


def test_removing_a_node(ray_cluster) -> None:
    opts = {"size": 3, "handlers": HANDLERS, "num_cpus": 0.3, "placement": "spread", "start_timeout_s": 60}
    with RayPool("strict", affinity="strict", **opts) as strict, RayPool("hint", affinity="hint", **opts) as hint:
        s_where = _bind(strict, 6)
        h_where = _bind(hint, 6)
        head = ray_cluster.head_node.node_id
        # A worker node that holds sessions of both pools.
        victims = [n for n in ray_cluster.list_all_nodes() if n.node_id != head
                   and n.node_id in s_where.values() and n.node_id in h_where.values()]
        assert victims, f"no worker node holds sessions of both pools: {s_where} {h_where}"
        gone = victims[0].node_id
        ray_cluster.remove_node(victims[0], allow_graceful=False)
        wait_until(lambda: strict.stats()["restarts"] >= 1 and hint.stats()["restarts"] >= 1, 60,
                   "both pools to notice the lost node")

        for key, node in s_where.items():
            if node == gone:
                with pytest.raises(SessionLost, match=f"strict session '{key}'"):
                    strict.call("state_get", "who", session=key)
                with pytest.raises(SessionLost):  # and it stays lost until dropped
                    strict.call("state_get", "who", session=key)
                strict.drop_session(key)
                assert strict.call("state_get", "who", session=key) is None  # a fresh start
            else:  # untouched: same worker, state intact
                assert strict.call("state_get", "who", session=key) == key

        for key, node in h_where.items():
            r = hint.call_detailed("state_get", "who", session=key)
            if node == gone:  # moved to a live worker (its state did not survive the node)
                assert r.value is None and node_of(hint).get(r.pid) not in (None, gone)
            else:
                assert r.value == key

        # Ray restarts the lost actors on the remaining nodes; the pools are whole again.
        for p in (strict, hint):
            wait_until(lambda p=p: len(p.workers()) == 3, 90, f"{p.name} back at size")
            assert gone not in p.stats()["nodes"]
            assert p.call("echo", "ok") == "ok"
