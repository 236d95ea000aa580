"""Cluster metrics and result files: per replica, cluster-wide, and how even the load is.

Cluster-wide numbers are `kvsched.metrics.summarize` over the merged run: latencies of every
request as its user saw it, throughput over the cluster's makespan. Step statistics add up
over replicas (`num_steps`, `busy_time_s` in replica-seconds); KV statistics stay per
replica (`peak_kv_tokens` is the largest any replica reached, `mean_kv_tokens` the busy-time
weighted mean of one replica, `capacity_tokens` one replica's capacity).

Load imbalance, per pool of replicas that share a router (all of them; or the prefill pool
and the decode pool when disaggregated), with a replica's work its busy time (the sum of its
step durations):
  - `load_imbalance`: max / mean work (1 = perfectly even, N = all work on one of N);
  - `jain_index`: (sum x)^2 / (n sum x^2) (Jain, Chiu and Hawe 1984; 1 = even, 1/n = one replica);
  - `request_imbalance`: max / mean requests routed.
Disaggregated runs report each pool (`prefill_*`, `decode_*`) and, unprefixed, the worse of
the two. Every request's routing decision is a column of the requests table: `replica`, and
when disaggregated `decode_replica` (-1: none, its output was one token) and
`kv_transfer_time` (seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kvsched.cluster.simulate import ClusterRun
from kvsched.metrics import _request_columns, steps_frame, summarize

if TYPE_CHECKING:
    import pandas as pd

REPLICA_KEYS = ("num_requests", "num_completed", "num_rejected", "ttft_mean", "e2e_mean", "e2e_p99",
                "num_preemptions", "num_prefill_tokens_computed", "num_completed_output_tokens", "peak_kv_tokens",
                "mean_kv_tokens", "num_steps", "busy_time_s")


def imbalance(values) -> tuple[float, float]:
    """(max / mean, Jain's index) of non-negative per-replica values; (1, 1) when all are 0."""
    x = np.asarray(values, dtype=np.float64)
    total = float(x.sum())
    if len(x) == 0 or total <= 0:
        return 1.0, 1.0
    return float(x.max() / x.mean()), float(total * total / (len(x) * float((x * x).sum())))


def replica_rows(crun: ClusterRun) -> list[dict]:
    """One dict per replica: its id, role, share of the makespan it was busy, and the
    headline numbers of its own run (for a prefill or decode replica, of its stage only)."""
    makespan = _makespan(crun)
    rows = []
    for i, (run, role) in enumerate(zip(crun.replica_runs, crun.roles)):
        s = summarize(run)
        row = {"replica": i, "role": role, **{k: s[k] for k in REPLICA_KEYS}}
        row["utilization"] = s["busy_time_s"] / makespan if makespan > 0 else 0.0
        rows.append(row)
    return rows


def _makespan(crun: ClusterRun) -> float:
    reqs = crun.run.requests
    if not reqs:
        return 0.0
    if hasattr(reqs, "column"):  # packed: no Request built
        return crun.run.end_time - float(reqs.column("arrival_time").min())
    return crun.run.end_time - min(r.arrival_time for r in reqs)


def _pool_stats(rows: list[dict], prefix: str = "") -> dict:
    load, jain = imbalance([r["busy_time_s"] for r in rows])
    req, _ = imbalance([r["num_requests"] for r in rows])
    return {f"{prefix}load_imbalance": load, f"{prefix}jain_index": jain, f"{prefix}request_imbalance": req}


def cluster_summary(crun: ClusterRun, requests: pd.DataFrame | None = None, *, per_replica: bool = True) -> dict:
    """summarize() of the merged run plus the cluster's own numbers; `replicas` holds the
    per-replica rows unless per_replica is False."""
    summary = summarize(crun.run, requests)
    rows = replica_rows(crun)
    dis = crun.disaggregation
    summary.update({"num_replicas": crun.num_replicas, "router": crun.router})
    if dis is None:
        summary.update(_pool_stats(rows))
    else:
        pre, dec = _pool_stats(rows[:dis.num_prefill], "prefill_"), _pool_stats(rows[dis.num_prefill:], "decode_")
        summary.update(pre)
        summary.update(dec)
        summary.update({
            "load_imbalance": max(pre["prefill_load_imbalance"], dec["decode_load_imbalance"]),
            "jain_index": min(pre["prefill_jain_index"], dec["decode_jain_index"]),
            "request_imbalance": max(pre["prefill_request_imbalance"], dec["decode_request_imbalance"]),
            "num_prefill_replicas": dis.num_prefill, "num_decode_replicas": dis.num_decode,
            "kv_link_gbps": dis.kv_link_gbps, "kv_bytes_per_token": dis.kv_bytes_per_token,
            "kv_transfer_time_mean_s": float(np.mean(list(crun.transfer_time.values())))
            if crun.transfer_time else 0.0,
            "num_kv_transfers": len(crun.transfer_time),
        })
    if per_replica:
        summary["replicas"] = rows
    return summary


def _cluster_request_columns(crun: ClusterRun) -> dict:
    cols = _request_columns(crun.run)
    ids = cols["request_id"]
    cols["replica"] = np.array([crun.replica_of.get(int(i), -1) for i in ids], dtype=np.int64)
    if crun.disaggregation is not None:
        cols["decode_replica"] = np.array([crun.decode_replica_of.get(int(i), -1) for i in ids], dtype=np.int64)
        cols["kv_transfer_time"] = np.array([crun.transfer_time.get(int(i), np.nan) for i in ids],
                                            dtype=np.float64)
    return cols


def cluster_requests_frame(crun: ClusterRun) -> pd.DataFrame:
    """`metrics.requests_frame` of the merged run plus the routing columns."""
    import pandas as pd

    return pd.DataFrame(_cluster_request_columns(crun))


def cluster_steps_frame(crun: ClusterRun) -> pd.DataFrame:
    """Every replica's steps (`loop.STEP_COLUMNS`) with a `replica` column, replica by replica."""
    return steps_frame(crun.run)


def save_cluster_run(crun: ClusterRun, out_dir: str | Path, config: dict, *, format: str = "parquet",
                     extra_summary: dict | None = None) -> dict:
    """A run directory (`kvsched.results`) plus replicas.parquet (one row per replica); the
    requests and steps tables carry the routing columns. Returns the summary."""
    from kvsched.results import check_format, write_run_dir

    check_format(format)
    import pandas as pd

    reqs = cluster_requests_frame(crun)
    summary = cluster_summary(crun, reqs)
    summary.update(extra_summary or {})
    tables = (("requests", reqs), ("steps", cluster_steps_frame(crun)),
              ("replicas", pd.DataFrame(summary["replicas"])))
    write_run_dir(out_dir, tables, summary, config, format=format)
    return summary
