"""A cluster of replicas: N single-replica loops behind a global router (docs/cluster.md).

`simulate_cluster` runs any registered scheduler in every replica, routes each arrival with a
registered router (`kvsched.cluster.routers`, `ROUTERS`), and optionally splits the replicas
into a prefill pool and a decode pool with a KV transfer between them (`Disaggregation`).
`kvsched.cluster.metrics` turns a `ClusterRun` into per-replica and cluster-wide numbers.

The names below are imported on first use (PEP 562), so that `kvsched simulate` without
cluster flags, which reads only `kvsched.cluster.cli`, does not load the cluster simulator
(tests/test_startup.py). `kvsched.cluster.simulate` imports the routers, which registers them.
"""

from __future__ import annotations

import importlib

_WHERE = {"ClusterRun": "simulate", "simulate_cluster": "simulate", "Disaggregation": "disagg",
          "kv_bytes_per_token": "disagg"}

__all__ = ["ClusterRun", "Disaggregation", "kv_bytes_per_token", "simulate_cluster"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
