"""A real multi-node Ray cluster on this machine, for the cluster tests and bench/bench_cluster.py.

``local_cluster(base)`` starts a head (no CPU: it only runs Ray's control plane, like a gateway machine) and
``nodes`` worker nodes of 1 CPU each with ``ray.cluster_utils.Cluster``: every process binds 127.0.0.1, every port
is fixed in ``base .. base+399`` (the project keeps Ray in 25000-25999, never its defaults 6379/8265), there is no
dashboard, and node failure is detected within ~2 s (health checks every 500 ms, 3 misses) instead of Ray's 15 s.
"""
from __future__ import annotations

import os
from typing import Any

# Ray swaps a 127.0.0.1 address for the machine's routable one unless told the cluster is this machine only; it
# reads this when imported, so it is set before the test module imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PORTS_PER_NODE = 40
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
                 "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}


def node_ports(base: int, index: int) -> dict[str, Any]:
    """Node ``index``'s ports (its slice of ``base + 40 * index``) and loopback settings."""
    b = base + PORTS_PER_NODE * index
    return {"node_ip_address": "127.0.0.1", "node_manager_port": b + 1, "object_manager_port": b + 2,
            "metrics_agent_port": b + 3, "dashboard_agent_listen_port": b + 4, "runtime_env_agent_port": b + 5,
            "metrics_export_port": b + 6, "min_worker_port": b + 10, "max_worker_port": b + PORTS_PER_NODE - 1,
            "include_dashboard": False, "object_store_memory": 80 * 1024 * 1024}


class LocalCluster:
    """A head and worker nodes; ``add_node()`` / ``remove_node(node)``; ``shutdown()`` stops every process."""

    def __init__(self, base: int, nodes: int = 2, *, gcs_port: int | None = None) -> None:
        from ray.cluster_utils import Cluster

        self.base = base
        self._next = 1
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "gcs_server_port": gcs_port or base + 399, "_system_config": SYSTEM_CONFIG, **node_ports(base, 0)})
        self.nodes: list[Any] = []
        for _ in range(nodes):
            self.add_node()

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_node(self) -> Any:
        index = self._next
        self._next += 1
        if index >= 9:
            raise RuntimeError("out of ports for another node")
        node = self.cluster.add_node(num_cpus=1, **node_ports(self.base, index))
        self.nodes.append(node)
        return node

    def remove_node(self, node: Any) -> None:
        self.cluster.remove_node(node, allow_graceful=False)  # a crash: the node's processes are killed
        if node in self.nodes:
            self.nodes.remove(node)

    def node_of(self, node_id: str) -> Any:
        return next(n for n in self.nodes if n.node_id == node_id)

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()
