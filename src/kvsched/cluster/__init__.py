"""A cluster of replicas: N single-replica loops behind a global router (docs/cluster.md).

`simulate_cluster` runs any registered scheduler in every replica, routes each arrival with a
registered router (`kvsched.cluster.routers`, `ROUTERS`), and optionally splits the replicas
into a prefill pool and a decode pool with a KV transfer between them (`Disaggregation`).
`kvsched.cluster.metrics` turns a `ClusterRun` into per-replica and cluster-wide numbers.
"""

from kvsched.cluster import routers as _routers  # noqa: F401  (registration)
from kvsched.cluster.disagg import Disaggregation, kv_bytes_per_token
from kvsched.cluster.simulate import ClusterRun, simulate_cluster

__all__ = ["ClusterRun", "Disaggregation", "kv_bytes_per_token", "simulate_cluster"]
