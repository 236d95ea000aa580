"""Capacity search: the largest arrival rate a scheduler sustains, by bisection.

The WAIT paper's lambda* read off a grid of rates is a bisection here, per scheduler and
workload: a rate is *sustained* when every seed's run meets the criterion,

- `slo`: a latency metric (`e2e_p99` by default; any column of metrics.summarize) is at
  most `slo_s` seconds, or
- `stable`: the queue does not grow (stability ratio, the last quarter of arrivals' mean
  latency over the second quarter's, below 1.5) and completions keep up (completion rate
  at least 95 % of the offered rate): the rule the WAIT experiments use for lambda*;
  an optional `slo_s` on the metric is then checked too.

The search doubles `hi` until a rate fails (or `max_rate` is reached), then halves the
bracket [sustained, failed] until it is narrower than `rel_tol` times its lower end. It
assumes a sustained rate stays sustained below: true of the metric's trend, not of every
seed's noise, which is why all seeds must pass and every probe is kept for inspection.
Each (scheduler, workload, capacity) search is one runner task, so searches run in
parallel, on Ray, and resume like any sweep. A grid with cluster axes (`replicas`,
`routers`) searches the largest rate of each (replicas, router) too.

`run_fewest` asks the planning question the other way round (docs/cluster.md): at each of the
grid's rates, the fewest replicas (behind each router) whose run meets the criterion. It
doubles the replica count from 1 until a count passes (or `max_replicas` fails), then
bisects between the last failing and the first passing count; it assumes that a count that
passes keeps passing with more replicas, and keeps every probe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from kvsched.experiments.runner import LocalExecutor, ProgressFn, RayExecutor, run_tasks
from kvsched.experiments.sweep import Grid, label, run_cell
from kvsched.metrics import COMPLETION_TOLERANCE, STABLE_RATIO
from kvsched.results import write_json


@dataclass(frozen=True)
class Criterion:
    kind: str = "slo"  # "slo" | "stable"
    metric: str = "e2e_p99"
    slo_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("slo", "stable"):
            raise ValueError(f"criterion must be 'slo' or 'stable', got {self.kind!r}")
        if self.kind == "slo" and self.slo_s is None:
            raise ValueError("criterion 'slo' needs slo_s (seconds)")
        if self.slo_s is not None and not self.slo_s > 0:
            raise ValueError(f"slo_s must be > 0, got {self.slo_s}")

    def passes(self, summary: dict) -> bool:
        """Whether one run meets the criterion (a metric that is missing or NaN fails)."""
        def num(key: str) -> float:
            v = summary.get(key)
            return float("nan") if v is None else float(v)

        if summary.get("num_rejected"):
            return False
        if self.slo_s is not None and not num(self.metric) <= self.slo_s:
            return False
        if self.kind == "stable":
            return (num("stability_ratio") < STABLE_RATIO
                    and num("completion_rate_per_s") >= (1 - COMPLETION_TOLERANCE) * num("offered_rate_per_s"))
        return True


def _probe(task: dict, rate: float, probes: list[dict], **more) -> bool:
    crit = Criterion(**task["criterion"])
    ok = True
    for seed in task["seeds"]:
        summary = run_cell({**task["cell"], "rate": rate, "seed": seed, **more}, save_runs=False)
        passed = crit.passes(summary)
        probes.append({**more, "rate": rate, "seed": seed, "passed": passed, crit.metric: summary.get(crit.metric),
                       "stability_ratio": summary.get("stability_ratio"),
                       "completion_rate_per_s": summary.get("completion_rate_per_s")})
        ok = ok and passed
        if not ok:  # one failing seed decides; the others would not change the answer
            break
    return ok


def search(task: dict) -> dict:
    """One bisection (a runner task): the largest sustained rate and every probe made."""
    lo, hi, max_rate, rel_tol = task["lo"], task["hi"], task["max_rate"], task["rel_tol"]
    probes: list[dict] = []
    result = {"max_rate_per_s": None, "bracket_lo": None, "bracket_hi": lo, "limit": "below lo"}
    if _probe(task, lo, probes):
        while hi < max_rate and _probe(task, hi, probes):
            lo, hi = hi, min(2 * hi, max_rate)
        if hi >= max_rate and _probe(task, max_rate, probes):
            lo, result["limit"] = max_rate, "max_rate"
        else:
            result["limit"] = "bisection"
            while (hi - lo) > rel_tol * lo:
                mid = math.sqrt(lo * hi)  # geometric: rates span orders of magnitude
                lo, hi = (mid, hi) if _probe(task, mid, probes) else (lo, mid)
        result.update(max_rate_per_s=lo, bracket_lo=lo, bracket_hi=hi if result["limit"] == "bisection" else None)
    return {**result, "num_probes": len(probes), "probes": probes}


def search_tasks(grid: Grid, criterion: Criterion, *, lo: float, hi: float, max_rate: float,
                 rel_tol: float) -> list[dict]:
    """One search per (workload, capacity, scheduler variant); the grid's rates are ignored
    and its seeds are the runs every probed rate must pass."""
    if not 0 < lo < hi <= max_rate:
        raise ValueError(f"need 0 < lo < hi <= max_rate, got lo={lo}, hi={hi}, max_rate={max_rate}")
    if not 0 < rel_tol < 1:
        raise ValueError(f"rel_tol must be in (0, 1), got {rel_tol}")
    seen, tasks = set(), []
    for cell in grid.cells():
        base = {**cell, "rate": None, "seed": None}
        key = repr(sorted(base.items(), key=lambda kv: kv[0]))
        if key in seen:
            continue
        seen.add(key)
        tasks.append({"cell": base, "seeds": list(grid.seeds), "criterion": asdict(criterion), "lo": lo, "hi": hi,
                      "max_rate": max_rate, "rel_tol": rel_tol})
    return tasks


def fewest(task: dict) -> dict:
    """One fewest-replicas search (a runner task): the smallest replica count that meets the
    criterion at the task's rate, or None when `max_replicas` does not."""
    rate, max_n = task["rate"], task["max_replicas"]
    probes: list[dict] = []
    failed, passed, n = 0, None, 1
    while True:
        if _probe(task, rate, probes, replicas=n):
            passed = n
            break
        failed = n
        if n >= max_n:
            break
        n = min(2 * n, max_n)
    if passed is not None:
        while passed - failed > 1:
            mid = (failed + passed) // 2
            if _probe(task, rate, probes, replicas=mid):
                passed = mid
            else:
                failed = mid
    return {"fewest_replicas": passed, "limit": "found" if passed is not None else "above max_replicas",
            "max_failing_replicas": failed, "num_probes": len(probes), "probes": probes}


def fewest_tasks(grid: Grid, criterion: Criterion, *, max_replicas: int) -> list[dict]:
    """One search per (workload, capacity, scheduler variant, router, rate); the grid's
    replica counts are ignored, its rates are required."""
    if max_replicas < 1:
        raise ValueError(f"max_replicas must be >= 1, got {max_replicas}")
    if None in grid.rates:
        raise ValueError("the fewest-replicas search needs rates (req/s): the load to plan for")
    if grid.prefill_decode is not None:
        raise ValueError("the fewest-replicas search counts replicas of one kind; drop prefill_decode")
    seen, tasks = set(), []
    for cell in grid.cells():
        base = {**cell, "replicas": None, "router": cell.get("router", "round-robin"), "rate": None, "seed": None}
        key = repr((sorted(base.items(), key=lambda kv: kv[0]), cell["rate"]))
        if key in seen:
            continue
        seen.add(key)
        tasks.append({"cell": base, "rate": cell["rate"], "seeds": list(grid.seeds), "criterion": asdict(criterion),
                      "max_replicas": max_replicas})
    return tasks


def run_fewest(grid: Grid, criterion: Criterion, out: str | Path, *, max_replicas: int = 64,
               executor: LocalExecutor | RayExecutor | None = None,
               progress: ProgressFn | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fewest-replicas search of the grid; writes fewest.parquet (one row per search),
    probes.parquet (every run made) and search.json. Returns both tables."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = fewest_tasks(grid, criterion, max_replicas=max_replicas)
    write_json(out / "search.json", {"grid": grid.to_dict(), "criterion": asdict(criterion), "question":
                                     "fewest replicas", "max_replicas": max_replicas})
    outcome = run_tasks(tasks, fewest, out=out, executor=executor, progress=progress)
    rows, probe_rows = [], []
    for task, tid, res, err in zip(tasks, outcome.task_ids, outcome.summaries, outcome.errors):
        cell = task["cell"]
        ident = {"search_id": tid, "scheduler": cell["scheduler"], "label": label(cell["scheduler"], cell["options"]),
                 "router": cell["router"], "trace": cell["workload"]["trace"], "rate": task["rate"],
                 "capacity_tokens": cell["capacity_tokens"]}
        res = res or {}
        rows.append({**ident, "status": "ok" if err is None else "failed", "error": err or "",
                     **{k: res.get(k) for k in ("fewest_replicas", "limit", "max_failing_replicas", "num_probes")}})
        probe_rows += [{**ident, **p} for p in res.get("probes", [])]
    table = pd.DataFrame(rows)
    table["fewest_replicas"] = pd.to_numeric(table["fewest_replicas"]).astype("Int64")
    probes = pd.DataFrame(probe_rows)
    table.to_parquet(out / "fewest.parquet", index=False)
    probes.to_parquet(out / "probes.parquet", index=False)
    return table, probes


def run_search(grid: Grid, criterion: Criterion, out: str | Path, *, lo: float = 0.25, hi: float = 4.0,
               max_rate: float = 1024.0, rel_tol: float = 0.02,
               executor: LocalExecutor | RayExecutor | None = None,
               progress: ProgressFn | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every search of the grid; writes capacity.parquet (one row per search),
    probes.parquet (every run made) and search.json. Returns both tables."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = search_tasks(grid, criterion, lo=lo, hi=hi, max_rate=max_rate, rel_tol=rel_tol)
    write_json(out / "search.json", {"grid": grid.to_dict(), "criterion": asdict(criterion), "lo": lo, "hi": hi,
                                     "max_rate": max_rate, "rel_tol": rel_tol})
    outcome = run_tasks(tasks, search, out=out, executor=executor, progress=progress)
    rows, probe_rows = [], []
    for task, tid, res, err in zip(tasks, outcome.task_ids, outcome.summaries, outcome.errors):
        cell = task["cell"]
        ident = {"search_id": tid, "scheduler": cell["scheduler"], "label": label(cell["scheduler"], cell["options"]),
                 "trace": cell["workload"]["trace"], "capacity_tokens": cell["capacity_tokens"]}
        if "replicas" in cell:
            ident.update(replicas=cell["replicas"], router=cell["router"])
        res = res or {}
        rows.append({**ident, "status": "ok" if err is None else "failed", "error": err or "",
                     **{k: res.get(k) for k in ("max_rate_per_s", "bracket_lo", "bracket_hi", "limit", "num_probes")}})
        probe_rows += [{**ident, **p} for p in res.get("probes", [])]
    table = pd.DataFrame(rows)
    for col in ("max_rate_per_s", "bracket_lo", "bracket_hi"):
        table[col] = pd.to_numeric(table[col])
    probes = pd.DataFrame(probe_rows)
    table.to_parquet(out / "capacity.parquet", index=False)
    probes.to_parquet(out / "probes.parquet", index=False)
    return table, probes
