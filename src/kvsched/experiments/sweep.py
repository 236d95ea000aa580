"""Sweeps: schedulers x workloads x rates x capacities x seeds x scheduler options.

A `Grid` comes from a TOML file (`Grid.from_toml`) or a dict (the command line builds one)
and expands into cells, one simulator run each. `run_sweep` runs the cells not yet done
(`runner.run_tasks`: local processes, or Ray), saves each cell's run as it finishes and
gathers one row per cell, config and metrics, into `results.parquet`.

    name = "chat-load"
    schedulers = ["vllm", "sarathi", "mcsf"]
    rates = [2.0, 4.0, 8.0]          # req/s; omitted: the traces' own arrivals
    capacities = [16384, 65536]      # KV tokens
    seeds = [0, 1, 2]
    cost_model = "llama2-7b-a100"    # or theory = true: unit rounds, token-exact blocks

    [[workloads]]
    trace = "azure-conv"             # a list of traces expands to one workload each
    num_requests = 2000

    [options.sarathi]                # list values are axes, scalars fixed
    chunk_size = [256, 512]

    replicas = [1, 4, 16]            # optional: a cluster of replicas per cell (docs/cluster.md)
    routers = ["round-robin", "least-outstanding"]   # with replicas; default round-robin
    prefill_decode = ["2:6", "3:5"]  # optional: prefill:decode replicas instead of `replicas`
    kv_link_gbps = [100.0]           # with prefill_decode: the KV link (default 100)
    router_refresh_s = [0, 0.1]      # with a cluster: routers read state published every s seconds (0: live)

Rates follow `kvsched.workload.build_workload`'s `target_rate`: the Poisson rate of a
length-only trace or synthetic spec, the mean replay rate of a trace with real arrivals.

Results directory (see runner.py for cells/ and failed/):

    sweep.json       the grid, its cell count and the kvsched version
    results.parquet  one row per cell in grid order: cell_id, status, error, the config
                     columns, every metric of metrics.summarize, the volume bound, the
                     fluid benchmark, offered and completion rates, a stability ratio
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from kvsched import __version__
from kvsched.experiments.runner import (
    LocalExecutor,
    ProgressFn,
    RayExecutor,
    run_tasks,
    task_id,
)
from kvsched.results import write_json

DEFAULT_CAPACITY_TOKENS = 137_000
DEFAULT_COST_MODEL = "llama2-7b-a100"
WORKLOAD_KEYS = ("trace", "num_requests", "sample", "rate_scale", "length_scale", "max_prompt_len",
                 "max_output_len", "predictions")
CONFIG_COLUMNS = ("scheduler", "label", "options", "trace", "rate", "capacity_tokens", "seed", "cost_model",
                  "block_size", "theory", "predictions", "workload", "replicas", "router", "router_label",
                  "prefill_replicas", "decode_replicas", "kv_link_gbps", "router_refresh_s")
DEFAULT_ROUTER = "round-robin"


class GridError(ValueError):
    """A grid that cannot run: the message names the file (or "command line") and the key."""


def _as_tuple(value, key: str, kind: type | tuple, source: str) -> tuple:
    """A scalar or a list as a non-empty tuple of `kind` (TOML booleans are never numbers)."""
    values = tuple(value) if isinstance(value, list) else (value,)
    if not values:
        raise GridError(f"{source}: {key} is empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, kind):
            raise GridError(f"{source}: {key}: {v!r} is not a {getattr(kind, '__name__', 'number')}")
    return values


def _checked_options(scheduler: str, options: dict, where: str) -> dict:
    """Misspelt options and values of the wrong type fail here, before any cell runs, through
    the one validator the command line's -o uses too (registry.check_options). A list is an
    axis: each of its values is checked (a list-typed option's axis is a list of lists)."""
    from kvsched.registry import SCHEDULERS, OptionError

    known = {o.name: o for o in SCHEDULERS.options(scheduler) or ()}
    out = {}
    try:
        for key, value in options.items():
            listy = known.get(key) is not None and typing.get_origin(known[key].type) in (list, tuple)
            axis = isinstance(value, list) and (not listy or all(isinstance(v, list) for v in value))
            values = value if axis else [value]
            checked = [SCHEDULERS.check_options(scheduler, {key: v})[key] for v in values]
            out[key] = checked if axis else checked[0]
    except OptionError as exc:
        raise GridError(f"{where}: {exc}") from None
    return out


def _workloads(raw, source: str) -> tuple[dict, ...]:
    out = []
    for k, table in enumerate(raw if isinstance(raw, list) else [raw]):
        where = f"{source}: workloads[{k}]"
        if not isinstance(table, dict) or "trace" not in table:
            raise GridError(f"{where}: needs a 'trace' key")
        unknown = set(table) - set(WORKLOAD_KEYS)
        if unknown:
            raise GridError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(WORKLOAD_KEYS)}")
        for trace in _as_tuple(table["trace"], f"workloads[{k}].trace", str, source):
            out.append({**table, "trace": trace})
    return tuple(out)


@dataclass(frozen=True)
class Grid:
    """The sweep's axes and fixed settings; `cells()` is their product in a fixed order."""

    schedulers: tuple[str, ...]
    workloads: tuple[dict, ...]
    rates: tuple[float | None, ...] = (None,)
    capacities: tuple[int, ...] = (DEFAULT_CAPACITY_TOKENS,)
    seeds: tuple[int, ...] = (0,)
    options: dict = field(default_factory=dict)  # scheduler -> {key: value or list of values}
    # Cluster axes (docs/cluster.md): replicas per cell and the router in front of them. None:
    # one replica, the cell as before (and the same cell id, so old results still resume).
    replicas: tuple[int, ...] | None = None
    routers: tuple[str, ...] | None = None
    # Prefill/decode disaggregation: "P:D" replica splits and KV link speeds (Gb/s).
    prefill_decode: tuple[str, ...] | None = None
    kv_link_gbps: tuple[float, ...] | None = None
    # How stale the routers' view is: replica state published every s seconds; 0 reads it live.
    router_refresh_s: tuple[float, ...] | None = None
    cost_model: str = DEFAULT_COST_MODEL
    block_size: int = 16
    theory: bool = False
    fast_forward: bool = True
    name: str = "sweep"
    source: str = "grid"

    def __post_init__(self) -> None:
        from kvsched.registry import COST_MODELS, SCHEDULERS

        where = self.source
        for name in self.schedulers:
            if name not in SCHEDULERS:
                raise GridError(f"{where}: schedulers: unknown scheduler {name!r}; see `kvsched schedulers`")
        for name in self.options:
            if name not in self.schedulers:
                raise GridError(f"{where}: options.{name}: {name!r} is not in schedulers")
            if not isinstance(self.options[name], dict):
                raise GridError(f"{where}: options.{name} must be a table of key = value")
        object.__setattr__(self, "options", {name: _checked_options(name, opts, f"{where}: options.{name}")
                                             for name, opts in self.options.items()})
        if not self.theory and self.cost_model not in COST_MODELS:
            raise GridError(f"{where}: cost_model: unknown cost model {self.cost_model!r}; see `kvsched cost-models`")
        bad = [r for r in self.rates if r is not None and not (isinstance(r, (int, float)) and r > 0)]
        if bad:
            raise GridError(f"{where}: rates must be positive numbers, got {bad[0]!r}")
        if any(c < 1 for c in self.capacities) or self.block_size < 1:
            raise GridError(f"{where}: capacities and block_size must be >= 1")
        if self.replicas is not None and any(n < 1 for n in self.replicas):
            raise GridError(f"{where}: replicas must be >= 1, got {list(self.replicas)}")
        if self.prefill_decode is not None:
            if self.replicas is not None:
                raise GridError(f"{where}: give replicas or prefill_decode, not both")
            for split in self.prefill_decode:
                _split_pd(split, where)
        elif self.kv_link_gbps is not None:
            raise GridError(f"{where}: kv_link_gbps needs prefill_decode")
        if self.kv_link_gbps is not None and any(not (b > 0 and math.isfinite(b)) for b in self.kv_link_gbps):
            raise GridError(f"{where}: kv_link_gbps must be finite numbers > 0, got {list(self.kv_link_gbps)}")
        if self.router_refresh_s is not None:
            if self.replicas is None and self.routers is None and self.prefill_decode is None:
                raise GridError(f"{where}: router_refresh_s needs a cluster (replicas, routers or prefill_decode)")
            if any(not (b >= 0 and math.isfinite(b)) for b in self.router_refresh_s):
                raise GridError(f"{where}: router_refresh_s must be finite numbers >= 0 (0: live), "
                                f"got {list(self.router_refresh_s)}")
        if self.routers is not None:
            from kvsched.cluster.routers import ROUTERS

            for name in self.routers:
                if name not in ROUTERS:
                    raise GridError(f"{where}: routers: unknown router {name!r}; see `kvsched routers`")

    @classmethod
    def from_dict(cls, raw: dict, source: str = "grid") -> Grid:
        known = {"name", "schedulers", "workloads", "workload", "rates", "capacities", "seeds", "options",
                 "cost_model", "block_size", "theory", "fast_forward", "replicas", "routers", "prefill_decode",
                 "kv_link_gbps", "router_refresh_s"}
        unknown = set(raw) - known
        if unknown:
            raise GridError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        for key in ("schedulers",):
            if key not in raw:
                raise GridError(f"{source}: missing key {key!r}")
        if ("workloads" in raw) == ("workload" in raw):
            raise GridError(f"{source}: give exactly one of [workload] or [[workloads]]")
        kw = {
            "schedulers": _as_tuple(raw["schedulers"], "schedulers", str, source),
            "workloads": _workloads(raw.get("workloads", raw.get("workload")), source),
            "rates": tuple(float(r) for r in _as_tuple(raw["rates"], "rates", (int, float), source))
            if "rates" in raw else (None,),
            "capacities": _as_tuple(raw.get("capacities", DEFAULT_CAPACITY_TOKENS), "capacities", int, source),
            "seeds": _as_tuple(raw.get("seeds", 0), "seeds", int, source),
            "options": {k: dict(v) if isinstance(v, dict) else v for k, v in raw.get("options", {}).items()},
            "source": source,
        }
        if "replicas" in raw:
            kw["replicas"] = _as_tuple(raw["replicas"], "replicas", int, source)
        if "routers" in raw:
            kw["routers"] = _as_tuple(raw["routers"], "routers", str, source)
        if "prefill_decode" in raw:
            kw["prefill_decode"] = _as_tuple(raw["prefill_decode"], "prefill_decode", str, source)
        if "kv_link_gbps" in raw:
            kw["kv_link_gbps"] = tuple(float(b) for b in _as_tuple(raw["kv_link_gbps"], "kv_link_gbps",
                                                                   (int, float), source))
        if "router_refresh_s" in raw:
            kw["router_refresh_s"] = tuple(float(b) for b in _as_tuple(raw["router_refresh_s"], "router_refresh_s",
                                                                       (int, float), source))
        for key, kind in (("name", str), ("cost_model", str), ("block_size", int), ("theory", bool),
                          ("fast_forward", bool)):
            if key in raw:
                if not isinstance(raw[key], kind) or (kind is int and isinstance(raw[key], bool)):
                    raise GridError(f"{source}: {key}: {raw[key]!r} is not a {kind.__name__}")
                kw[key] = raw[key]
        return cls(**kw)

    @classmethod
    def from_toml(cls, path: str | Path) -> Grid:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such grid file") from None
        except tomllib.TOMLDecodeError as exc:
            raise GridError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        for key in ("replicas", "routers", "prefill_decode", "kv_link_gbps", "router_refresh_s"):  # as before
            if d[key] is None:
                d.pop(key)
        return d

    def variants(self, scheduler: str) -> list[dict]:
        """Every combination of the scheduler's option axes (list values)."""
        opts = self.options.get(scheduler, {})
        keys = sorted(opts)
        axes = [opts[k] if isinstance(opts[k], list) else [opts[k]] for k in keys]
        return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]

    def cells(self) -> list[dict]:
        fixed = {"cost_model": "unit" if self.theory else self.cost_model,
                 "block_size": 1 if self.theory else self.block_size, "theory": self.theory,
                 "fast_forward": self.fast_forward}
        # Cluster keys only when asked for: a one-replica grid keeps its cells' ids.
        routers = self.routers or (DEFAULT_ROUTER,)
        if self.prefill_decode is not None:
            clusters: list[dict] = []
            for split, link, router in itertools.product(self.prefill_decode, self.kv_link_gbps or (100.0,),
                                                          routers):
                p, d = _split_pd(split, self.source)
                clusters.append({"replicas": p + d, "router": router, "prefill_replicas": p, "decode_replicas": d,
                                 "kv_link_gbps": link})
        elif self.replicas is None and self.routers is None:
            clusters = [{}]
        else:
            clusters = [{"replicas": n, "router": router} for n, router in
                        itertools.product(self.replicas or (1,), self.routers or (DEFAULT_ROUTER,))]
        if self.router_refresh_s is not None:  # a key only when asked for: other cells keep their ids
            clusters = [{**cl, "router_refresh_s": s} for cl in clusters for s in self.router_refresh_s]
        out = []
        for workload, capacity in itertools.product(self.workloads, self.capacities):
            for scheduler in self.schedulers:
                for cl, options, rate, seed in itertools.product(clusters, self.variants(scheduler), self.rates,
                                                                 self.seeds):
                    out.append({"scheduler": scheduler, "options": options, "workload": workload, "rate": rate,
                                "capacity_tokens": capacity, "seed": seed, **fixed, **cl})
        return out


def label(scheduler: str, options: dict) -> str:
    """The curve's name in tables and plots: the scheduler and the options it was given."""
    return " ".join([scheduler, *(f"{k}={v}" for k, v in sorted(options.items()))])


def _split_pd(text: str, where: str) -> tuple[int, int]:
    """"P:D" as (P, D), both >= 1."""
    p, sep, d = str(text).partition(":")
    try:
        out = (int(p), int(d))
    except ValueError:
        out = (0, 0)
    if not sep or min(out) < 1:
        raise GridError(f"{where}: prefill_decode: {text!r} is not P:D with P, D >= 1 (e.g. \"3:7\")")
    return out


# --- one cell ------------------------------------------------------------------------------
def _fluid(reqs, cost, capacity: int, theory: bool) -> dict:
    """The fluid benchmark of the cell's workload, (d0, d1) fitted to its cost model (wait.md
    A23: never reuse one pair across workloads). Prefill compute is left out, so it is an
    optimistic reference curve rather than a proven bound."""
    from kvsched.bounds.fluid import fluid_benchmark, types_from_requests
    from kvsched.sim.cost import design_coefficients

    try:
        kinds = types_from_requests(reqs)
        fit = design_coefficients(cost, [t.prompt_len for t in kinds], [t.output_len for t in kinds]).model
        res = fluid_benchmark(kinds, max(fit.d0_s, 0.0), max(fit.d1_s_per_token, 0.0), capacity,
                              first_token_in_prefill=not theory)
    except ValueError:  # no arrival rate (a batch), or an empty workload
        return {"fluid_mean_latency_s": float("nan"), "fluid_verdict": "", "fluid_rho": float("nan")}
    total_rate = sum(t.rate for t in res.types)
    mean = sum(t.rate * lat for t, lat in zip(res.types, res.latency_s)) / total_rate
    return {"fluid_mean_latency_s": mean if math.isfinite(mean) else float("nan"),
            "fluid_verdict": res.verdict, "fluid_rho": res.rho}


def run_cell(cell: dict, *, save_runs: bool = True):
    """Simulate one cell; (summary, {"requests", "steps"} frames) or the summary alone."""
    from kvsched.bounds.runs import min_round_time, run_bound
    from kvsched.metrics import load_stats, requests_frame, steps_frame, summarize
    from kvsched.registry import COST_MODELS, SCHEDULERS
    from kvsched.schedulers.wait_common import fill_design_options
    from kvsched.sim import simulate
    from kvsched.workload import build_workload

    reqs, _ = build_workload(**cell["workload"], target_rate=cell["rate"], seed=cell["seed"])
    cost = COST_MODELS.create(cell["cost_model"])
    lookahead = 1 if cell["theory"] else 0
    factory = SCHEDULERS.get(cell["scheduler"]).factory
    if "replicas" in cell:
        return _run_cluster_cell(cell, reqs, cost, factory, save_runs)
    scheduler = factory(**fill_design_options(factory, dict(cell["options"]), reqs, cost))
    run = simulate(reqs, scheduler, cost, capacity_tokens=cell["capacity_tokens"], block_size=cell["block_size"],
                   fast_forward=cell["fast_forward"], lookahead_tokens=lookahead)
    frame = requests_frame(run)
    summary = summarize(run, frame)
    bound = run_bound(run, min_round_time(cost), lookahead)
    summary.update(bound)
    done = summary["num_completed"]
    summary["bound_mean_latency_s"] = bound["bound_total_latency_s"] / done if done else float("nan")
    summary.update(_fluid(reqs, cost, cell["capacity_tokens"], cell["theory"]))
    summary.update(load_stats(run))
    if not save_runs:
        return summary
    return summary, {"requests": frame, "steps": steps_frame(run)}


def _run_cluster_cell(cell: dict, reqs, cost, factory, save_runs: bool):
    """A cell with `replicas` and `router`: `simulate_cluster`, every replica running the
    cell's scheduler; the summary is `cluster_summary` (without the per-replica list)."""
    from kvsched.bounds.runs import min_round_time, run_bound
    from kvsched.cluster.metrics import cluster_requests_frame, cluster_steps_frame, cluster_summary
    from kvsched.cluster.simulate import simulate_cluster
    from kvsched.loop import Run
    from kvsched.metrics import load_stats
    from kvsched.schedulers.wait_common import fill_design_options

    n = cell["replicas"]
    lookahead = 1 if cell["theory"] else 0
    dis = None
    if "prefill_replicas" in cell:
        from kvsched.cluster.disagg import Disaggregation, kv_bytes_per_token

        per_token = kv_bytes_per_token(cell["cost_model"])
        if per_token is None:
            raise ValueError(f"cost model {cell['cost_model']!r} names no model to take KV bytes per token from")
        dis = Disaggregation(cell["prefill_replicas"], cell["decode_replicas"], cell["kv_link_gbps"], per_token)
    # A WAIT-family design is for the load one replica sees: every n-th request.
    share = dis.num_decode if dis is not None else n
    options = fill_design_options(factory, dict(cell["options"]), reqs[::share] or reqs, cost)
    crun = simulate_cluster(reqs, lambda: factory(**options), cost, capacity_tokens=cell["capacity_tokens"],
                            num_replicas=n, router=cell["router"], seed=cell["seed"], block_size=cell["block_size"],
                            router_refresh_s=cell.get("router_refresh_s") or None,  # 0: live
                            fast_forward=cell["fast_forward"], lookahead_tokens=lookahead, disaggregation=dis)
    frame = cluster_requests_frame(crun)
    summary = cluster_summary(crun, frame, per_replica=False)
    run = crun.run
    if dis is None:
        pooled = Run(run.requests, run.steps, run.capacity_tokens * n, run.block_size, run.num_blocks * n,
                     run.end_time)
        bound = run_bound(pooled, min_round_time(cost), lookahead)  # the cluster's total KV (cluster/cli.py)
        summary.update(bound)
        done = summary["num_completed"]
        summary["bound_mean_latency_s"] = bound["bound_total_latency_s"] / done if done else float("nan")
    summary.update(load_stats(run))
    if not save_runs:
        return summary
    return summary, {"requests": frame, "steps": cluster_steps_frame(crun)}


# --- the whole sweep --------------------------------------------------------------------------
def _row(cell: dict, tid: str, summary: dict | None, error: str | None) -> dict:
    w = cell["workload"]
    row = {"cell_id": tid, "status": "ok" if error is None else "failed", "error": error or "",
           "scheduler": cell["scheduler"], "label": label(cell["scheduler"], cell["options"]),
           "options": json.dumps(cell["options"], sort_keys=True),
           "trace": w["trace"], "rate": float("nan") if cell["rate"] is None else float(cell["rate"]),
           "capacity_tokens": cell["capacity_tokens"], "seed": cell["seed"], "cost_model": cell["cost_model"],
           "block_size": cell["block_size"], "theory": cell["theory"],
           "predictions": w.get("predictions", "exact"), "workload": json.dumps(w, sort_keys=True)}
    if "replicas" in cell:
        # Curves vs rate are drawn per label: a cluster configuration is part of it.
        size = (f"{cell['prefill_replicas']}P+{cell['decode_replicas']}D {cell['kv_link_gbps']:g}Gbps"
                if "prefill_replicas" in cell else f"x{cell['replicas']}")
        router = cell["router"]
        if cell.get("router_refresh_s"):  # 0 or absent: live reads, the router's plain name
            router = f"{router}@{cell['router_refresh_s']:g}s"
        row.update(label=f"{row['label']} {size} {router}", replicas=cell["replicas"],
                   router=cell["router"], router_label=f"{row['label']} / {router}")
        if "router_refresh_s" in cell:
            row["router_refresh_s"] = float(cell["router_refresh_s"])
        if "prefill_replicas" in cell:
            row.update(prefill_replicas=cell["prefill_replicas"], decode_replicas=cell["decode_replicas"],
                       kv_link_gbps=cell["kv_link_gbps"])
    summary = dict(summary or {})
    summary.pop("num_replicas", None)  # the axis is `replicas`
    summary.pop("router", None)
    # The grid's capacity stays the axis; the run's own (rounded down to whole blocks) is kept beside it.
    if "capacity_tokens" in summary:
        row["effective_capacity_tokens"] = summary.pop("capacity_tokens")
    row.update(summary)
    return row


def results_table(cells: Sequence[dict], ids: Sequence[str], summaries, errors) -> pd.DataFrame:
    """One row per cell in grid order; failed cells keep their config and error, NaN metrics."""
    frame = pd.DataFrame([_row(c, t, s, e) for c, t, s, e in zip(cells, ids, summaries, errors)])
    for col in frame.columns:  # a column that only failed rows left empty is still numeric
        if col not in CONFIG_COLUMNS and frame[col].dtype == object:
            try:
                frame[col] = pd.to_numeric(frame[col])
            except (ValueError, TypeError):
                frame[col] = frame[col].fillna("").astype(str)
    return frame


def run_sweep(grid: Grid, out: str | Path, *, executor: LocalExecutor | RayExecutor | None = None,
              progress: ProgressFn | None = None, save_runs: bool = True,
              retry_failed: bool = True) -> tuple[pd.DataFrame, object]:
    """Run the grid's missing cells into `out` and write results.parquet.

    Returns (table, runner.Outcome: which cells ran, were found done, or failed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = grid.cells()
    write_json(out / "sweep.json", {"kvsched_version": __version__, "grid": grid.to_dict(),
                                    "num_cells": len(cells)})
    outcome = run_tasks(cells, partial(run_cell, save_runs=save_runs), out=out, executor=executor,
                        progress=progress, retry_failed=retry_failed)
    table = results_table(cells, outcome.task_ids, outcome.summaries, outcome.errors)
    table.to_parquet(out / "results.parquet", index=False)
    return table, outcome


def load_results(out: str | Path) -> pd.DataFrame:
    path = Path(out) / "results.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is {out} a kvsched sweep directory?)")
    return pd.read_parquet(path)


__all__ = ["Grid", "GridError", "label", "load_results", "results_table", "run_cell", "run_sweep", "task_id"]
