"""Offline-batch experiments for GBA and GSA (reconstructions; docs/gsa.md).

The paper (arXiv 2601.22996) publishes no numerical results, so nothing here reproduces
a figure of it: runs are compared with lower bounds (LB_count), the exact optimum on tiny
instances, the baselines, and the published constants as sanity bounds.

* `sample_batch`: n requests of a shipped trace, sampled without replacement with an
  explicit generator, all released at 0; jobs with s + o > M are dropped and counted.
* `run_policy`: one policy on one batch in the theory model (`simulate_batch`), or
  with a cost model for seconds; returns one row (latency in rounds, kills, waste,
  memory use, makespan, throughput).
* Studies (each writes `<name>.parquet`, `config.json`, `summary.json`):
  - `sweep`: traces x n x M x seeds x policies, with ε, the regime and ratios to LB_count;
  - `ablation`: stagger, credit bucket B, base β, V vs B, refund, kill vs resume;
  - `worst_case`: tiny random instances against the exact optimum (IP);
  - `serving`: GSA against vLLM-style FCFS and A_min with the trivial interval on
    throughput and latency in seconds (cost model).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import kvsched.sim  # noqa: F401  (registers the cost models)
from kvsched import __version__
from kvsched.bounds.batch import batch_bounds, exact_optimum, job_size_ratio, regime
from kvsched.experiments.study import Executor, rows_frame, run_study
from kvsched.loop import Run
from kvsched.predictors import with_predictions
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.request import RequestStatus
from kvsched.sim.simulate import batch_requests, simulate

ProgressFn = Callable[[int, int], None]
TRACES = ("azure-conv", "azure-code")
PUBLISHED = {"gba": {"general": 32 / 3, "large-memory": 6.75}, "gsa": {"general": 61.92, "large-memory": 32.0}}
BIG = 1 << 40  # "no limit" for vLLM's token budget and sequence cap in theory mode
# Leading columns of the tables (the rest follow alphabetically, see study.rows_frame).
ROW_COLUMNS = ("trace", "n", "capacity", "seed", "policy", "scheduler", "options", "clairvoyant")


@dataclass(frozen=True)
class Policy:
    """A labelled scheduler configuration. `regime_base` picks GBA/GSA's base from the
    instance's regime; `trivial_interval` gives every job the prediction [1, M] (A_min)."""

    label: str
    scheduler: str
    options: dict = field(default_factory=dict)
    regime_base: bool = False
    trivial_interval: bool = False


CLAIRVOYANT = (
    Policy("gba", "gba", regime_base=True),
    Policy("gba-batched", "gba-batched", regime_base=True),
    Policy("mcsf-break", "mcsf", {"predictor": "oracle"}),
    Policy("mcsf-scan", "mcsf", {"predictor": "oracle", "skip_infeasible": True}),
    Policy("sorted-f", "sorted-f"),
    Policy("sf-restart", "sjf", {"max_num_batched_tokens": BIG, "max_num_seqs": BIG, "preemption": "restart"}),
)
NON_CLAIRVOYANT = (
    Policy("gsa", "gsa", regime_base=True),
    Policy("gsa-batched", "gsa-batched", regime_base=True),
    Policy("b-scaling", "b-scaling"),
    Policy("fcfs-restart", "vllm", {"max_num_batched_tokens": BIG, "max_num_seqs": BIG, "preemption": "restart"}),
    Policy("a-min", "a-min", trivial_interval=True),
)
ALL_POLICIES = CLAIRVOYANT + NON_CLAIRVOYANT


def ablation_policies() -> tuple[Policy, ...]:
    """kvsched's ablations (docs/gsa.md): each differs from GBA-V / GSA-V in one setting."""
    out = [Policy("gba", "gba", regime_base=True), Policy("gba stagger=off", "gba", {"stagger": False}),
           Policy("gba-sync", "gba-sync"), Policy("gba-batched", "gba-batched", regime_base=True),
           Policy("gsa", "gsa", regime_base=True), Policy("gsa stagger=off", "gsa", {"stagger": False}, True),
           Policy("gsa refund=off", "gsa", {"refund": False}, True), Policy("gsa resume", "gsa", {"resume": True}, True),
           Policy("gsa-batched", "gsa-batched", regime_base=True)]
    for cap in (2, 4, 16):
        out += [Policy(f"gba B={cap}", "gba", {"credit_cap": cap}, True),
                Policy(f"gsa B={cap}", "gsa", {"credit_cap": cap}, True)]
    for base in (2.0, 2.3, 3.0, 4.0):
        out += [Policy(f"gsa base={base:g}", "gsa", {"base": base}),
                Policy(f"gba-batched base={base:g}", "gba-batched", {"base": base})]
    return tuple(out)


def sample_batch(trace: str, n: int, capacity: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(s, o, dropped): n requests sampled without replacement (the whole trace when n is
    larger), minus the `dropped` ones with s + o > capacity."""
    from kvsched.traces import load_trace

    reqs = load_trace(trace)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(reqs), size=min(n, len(reqs)), replace=False)
    s = np.array([reqs[i].prompt_len for i in pick], dtype=np.int64)
    o = np.array([reqs[i].output_len for i in pick], dtype=np.int64)
    fits = s + o <= capacity
    return s[fits], o[fits], int((~fits).sum())


def _options(policy: Policy, regime_name: str) -> dict:
    options = dict(policy.options)
    if policy.regime_base:
        options.setdefault("regime", regime_name)
    return options


def run_policy(policy: Policy, s: np.ndarray, o: np.ndarray, capacity: int, *, cost_model: str | None = None,
               seed: int = 0) -> dict:
    """One policy on one batch. Latency in rounds (theory model) unless `cost_model`
    is given, in which case every column in seconds comes from that model."""
    regime_name = regime(job_size_ratio(s, o, capacity)) if len(s) else "general"
    options = _options(policy, regime_name)
    sched = SCHEDULERS.create(policy.scheduler, **options)
    reqs = batch_requests(s, o)
    if policy.trivial_interval:
        reqs = with_predictions(reqs, f"interval-common:lo=1,hi={capacity}", np.random.default_rng(seed))
    cost = COST_MODELS.create(cost_model or "unit")
    t0 = time.perf_counter()
    run = simulate(reqs, sched, cost, capacity_tokens=capacity, block_size=1, lookahead_tokens=0, check_oracle=True)
    wall = time.perf_counter() - t0
    return {"policy": policy.label, "scheduler": policy.scheduler, "options": json.dumps(options, sort_keys=True),
            "clairvoyant": bool(sched.clairvoyant), **run_metrics(run, capacity), "wall_time_s": wall}


def run_metrics(run: Run, capacity: int) -> dict:
    """Latency, kills, waste and memory use of a batch run (requests' s = prompt_len - 1)."""
    done = [r for r in run.requests if r.status is RequestStatus.FINISHED]
    finish = np.array([r.finish_time for r in done])
    kv = np.asarray(run.steps["kv_used_tokens"], dtype=np.float64)
    steps = np.asarray(run.steps["num_steps"], dtype=np.float64)
    makespan = float(finish.max()) if len(done) else 0.0
    return {
        "num_jobs": len(run.requests), "num_completed": len(done),
        "total_latency": float(finish.sum()), "mean_latency": float(finish.mean()) if len(done) else math.nan,
        "makespan": makespan,
        "throughput_tokens": sum(r.output_len for r in done) / makespan if makespan else math.nan,
        "num_kills": sum(r.num_restarts for r in run.requests),
        "num_preemptions": sum(r.num_preemptions for r in run.requests),
        "num_discarded_tokens": sum(r.num_discarded_tokens for r in run.requests),
        "num_recomputed_prompt_tokens": sum(r.num_restarts * (r.prompt_len - 1) for r in run.requests),
        "wasted_kv_area": sum(r.wasted_kv_area for r in run.requests),
        # Memory use per round; fast-forwarded rows hold a token more per sequence each round.
        "peak_memory_utilization": float(kv.max()) / capacity if kv.size else 0.0,
        "mean_memory_utilization": float(
            (np.asarray(run.steps["kv_token_seconds"]).sum() / max(run.end_time, 1e-12)) / capacity),
        "num_steps": int(steps.sum()),
    }


def _cell(task: dict) -> dict:
    """One (trace, n, M, seed) instance under every policy of the task: {"rows": one per policy}."""
    s, o, dropped = sample_batch(task["trace"], task["n"], task["capacity"], task["seed"])
    eps = job_size_ratio(s, o, task["capacity"])
    bounds = batch_bounds(s, o, task["capacity"])
    base = {"trace": task["trace"], "n": task["n"], "capacity": task["capacity"], "seed": task["seed"],
            "num_dropped": dropped, "job_size_ratio": eps, "regime": regime(eps), **bounds}
    rows = []
    for fields in task["policies"]:
        policy = Policy(**fields)
        row = {**base, **run_policy(policy, s, o, task["capacity"], cost_model=task.get("cost_model"),
                                    seed=task["seed"])}
        row["ratio_to_lb_count"] = row["total_latency"] / bounds["lb_count"] if bounds["lb_count"] else math.nan
        rows.append(row)
    return {"rows": rows}


def _run_cells(tasks: list[dict], jobs: int, progress: ProgressFn | None, executor: Executor | None = None,
               out: Path | None = None) -> pd.DataFrame:
    """Every cell's rows in task order; with `out`, cells are saved and reused (resume)."""
    for task in tasks:  # policies travel as plain dicts: a task is JSON (its id, its config.json)
        task["policies"] = [asdict(p) for p in task["policies"]]
    results = run_study(tasks, _cell, out=out, executor=executor, jobs=jobs, progress=progress)
    return rows_frame([row for result in results for row in result["rows"]], ROW_COLUMNS)


def price_of_non_clairvoyance(frame: pd.DataFrame, gsa: str = "gsa", gba: str = "gba") -> pd.DataFrame:
    """GSA / GBA total latency per instance, averaged per (trace, n, capacity)."""
    keys = ["trace", "n", "capacity", "seed"]
    wide = frame.pivot_table(index=keys, columns="policy", values="total_latency")
    if gsa not in wide.columns or gba not in wide.columns:
        return pd.DataFrame()
    ratio = (wide[gsa] / wide[gba]).rename("gsa_over_gba").reset_index()
    return ratio.groupby(["trace", "n", "capacity"], as_index=False)["gsa_over_gba"].mean()


def _summary_table(frame: pd.DataFrame, value: str) -> dict:
    mean = frame.groupby(["trace", "n", "capacity", "policy"])[value].mean()
    out: dict = {}
    for (trace, n, cap, policy), v in mean.items():
        out.setdefault(f"{trace} n={n} M={cap}", {})[policy] = round(float(v), 4)
    return out


def sweep(*, traces: Sequence[str] = TRACES, sizes: Sequence[int] = (100, 1000), capacities: Sequence[int] = (
          4096, 16384, 65536, 131072, 262144, 524288), seeds: Sequence[int] = tuple(range(10)),
          policies: Sequence[Policy] = ALL_POLICIES, jobs: int = 1, executor: Executor | None = None,
          out: Path | None = None, progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """The M sweep of §12.2: every (trace, n, M, seed) cell runs every policy (resumable
    from `out/cells/`)."""
    tasks = [{"study": "gsa-sweep", "trace": t, "n": n, "capacity": m, "seed": seed, "policies": tuple(policies)}
             for t in traces for n in sizes for m in capacities for seed in seeds]
    frame = _run_cells(tasks, jobs, progress, executor, out)
    regimes = frame.groupby(["trace", "n", "capacity"]).agg(
        job_size_ratio=("job_size_ratio", "max"), dropped=("num_dropped", "mean"))
    summary = {
        "study": "gsa-sweep", "bound": "LB_count (counting bound, docs/gsa.md item 4)",
        "mean_ratio_to_lb_count": _summary_table(frame, "ratio_to_lb_count"),
        "mean_kills": _summary_table(frame[frame["num_kills"] > 0], "num_kills"),
        "price_of_non_clairvoyance": {f"{r.trace} n={r.n} M={r.capacity}": round(r.gsa_over_gba, 4)
                                      for r in price_of_non_clairvoyance(frame).itertuples()},
        "eps_and_dropped": {f"{t} n={n} M={m}": {"max_eps": round(v.job_size_ratio, 4), "mean_dropped": v.dropped,
                                                  "regime": regime(v.job_size_ratio)}
                            for (t, n, m), v in regimes.iterrows()},
    }
    config = {"study": "gsa-sweep", "traces": list(traces), "sizes": list(sizes), "capacities": list(capacities),
              "seeds": list(seeds), "policies": [p.__dict__ for p in policies], "kvsched_version": __version__,
              "model": "offline batch, theory ledger, unit rounds (simulate_batch)"}
    _write(out, "sweep", frame, config, summary)
    if out is not None:
        plot_sweep(frame, Path(out) / "sweep.png")
    return frame, summary


def plot_sweep(frame: pd.DataFrame, path: Path) -> None:
    """Mean ratio to LB_count against M, one panel per (trace, n), one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(t, n) for t, n in zip(frame["trace"], frame["n"])})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, sharey=True)
    means = frame.groupby(["trace", "n", "capacity", "policy"], as_index=False)["ratio_to_lb_count"].mean()
    for ax, (trace, n) in zip(axes[0], panels):
        part = means[(means["trace"] == trace) & (means["n"] == n)]
        for k, policy in enumerate(dict.fromkeys(frame["policy"])):
            line = part[part["policy"] == policy].sort_values("capacity")
            style = "-" if policy.startswith(("gba", "gsa")) else "--"
            ax.plot(line["capacity"], line["ratio_to_lb_count"], style, marker="o", ms=3, label=policy,
                    color=plt.cm.tab20(k % 20))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("KV capacity M (tokens)")
        ax.set_title(f"{trace}, n = {n}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("total latency / LB_count")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle("offline batch, theory model (GBA/GSA are reconstructions)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation(*, trace: str = "azure-conv", n: int = 1000, capacities: Sequence[int] = (16384, 131072),
             seeds: Sequence[int] = tuple(range(5)), jobs: int = 1, executor: Executor | None = None,
             out: Path | None = None, progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """Stagger, credit bucket, base, V vs B, refund and kill vs resume (§12.2 ablations)."""
    policies = ablation_policies()
    tasks = [{"study": "gsa-ablation", "trace": trace, "n": n, "capacity": m, "seed": seed, "policies": policies}
             for m in capacities for seed in seeds]
    frame = _run_cells(tasks, jobs, progress, executor, out)
    summary = {"study": "gsa-ablation", "mean_ratio_to_lb_count": _summary_table(frame, "ratio_to_lb_count"),
               "mean_kills": _summary_table(frame, "num_kills")}
    config = {"study": "gsa-ablation", "trace": trace, "n": n, "capacities": list(capacities), "seeds": list(seeds),
              "policies": [p.__dict__ for p in policies], "kvsched_version": __version__}
    _write(out, "ablation", frame, config, summary)
    return frame, summary


GOLDEN_BASE = (1 + math.sqrt(13)) / 2  # GSA's general-regime base beta* (docs/gsa.md)
WORST_CASE_POLICIES = (
    Policy("gba", "gba", {"regime": "general"}), Policy("gba-batched", "gba-batched", {"base": 4.0}),
    Policy("gsa", "gsa", {"base": GOLDEN_BASE}), Policy("gsa-batched", "gsa-batched", {"base": GOLDEN_BASE}),
    Policy("mcsf-break", "mcsf", {"predictor": "oracle"}), Policy("sorted-f", "sorted-f"),
    Policy("b-scaling", "b-scaling"))


def _worst_case_instance(task: dict) -> dict:
    """One tiny instance: the exact optimum and every policy's total latency against it."""
    s, o, cap = np.array(task["s"], dtype=np.int64), np.array(task["o"], dtype=np.int64), task["capacity"]
    opt = exact_optimum(s, o, cap, time_limit_s=task["time_limit_s"])
    bounds = batch_bounds(s, o, cap)
    rows = []
    for policy in WORST_CASE_POLICIES:
        row = run_policy(policy, s, o, cap)
        rows.append({"instance": task["instance"], "n": len(s), "capacity": cap, "s": s.tolist(), "o": o.tolist(),
                     "optimum": opt.objective, "optimum_proven": opt.status == "optimal", **bounds,
                     "policy": policy.label, "total_latency": row["total_latency"],
                     "ratio_to_optimum": row["total_latency"] / opt.objective, "num_kills": row["num_kills"]})
    return {"rows": rows}


def worst_case(*, instances: int = 200, max_jobs: int = 6, max_capacity: int = 20, seed: int = 0,
               time_limit_s: float = 30.0, jobs: int = 1, executor: Executor | None = None, out: Path | None = None,
               progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """Tiny random instances against the exact optimum (§12.2 worst-case check).

    The published constants are sanity bounds: a ratio above one means the
    reconstruction differs from the paper's algorithm (or has a bug), never that the
    paper is wrong. The instances are drawn here, in order from one generator; each
    one's IP is a task (resumable from `out/cells/`)."""
    rng = np.random.default_rng(seed)
    tasks = []
    for k in range(instances):
        cap = int(rng.integers(4, max_capacity + 1))
        n = int(rng.integers(1, max_jobs + 1))
        s = rng.integers(0, cap // 2 + 1, n)
        o = np.minimum(rng.integers(1, cap + 1, n), cap - s)
        tasks.append({"study": "gsa-worst-case", "instance": k, "capacity": cap, "s": s.tolist(), "o": o.tolist(),
                      "time_limit_s": time_limit_s})
    results = run_study(tasks, _worst_case_instance, out=out, executor=executor, jobs=jobs, progress=progress)
    rows = [row for result in results for row in result["rows"]]
    frame = rows_frame(rows, ("instance", "n", "capacity", "policy"))
    worst = frame.groupby("policy")["ratio_to_optimum"].max()
    summary = {"study": "gsa-worst-case", "instances": instances,
               "all_optima_proven": bool(frame["optimum_proven"].all()),
               "worst_ratio_to_optimum": {p: round(float(v), 4) for p, v in worst.items()},
               "published_constants (sanity bounds)": {"gba": PUBLISHED["gba"]["general"],
                                                       "gsa": PUBLISHED["gsa"]["general"]},
               "within_sanity_bounds": bool(worst.get("gba", 0) <= PUBLISHED["gba"]["general"]
                                            and worst.get("gba-batched", 0) <= PUBLISHED["gba"]["general"]
                                            and worst.get("gsa", 0) <= PUBLISHED["gsa"]["general"])}
    config = {"study": "gsa-worst-case", "instances": instances, "max_jobs": max_jobs, "max_capacity": max_capacity,
              "seed": seed, "time_limit_s": time_limit_s, "kvsched_version": __version__}
    _write(out, "worst_case", frame, config, summary)
    return frame, summary


def serving(*, trace: str = "azure-conv", n: int = 1000, capacities: Sequence[int] = (16384, 65536),
            seeds: Sequence[int] = tuple(range(3)), cost_model: str = "llama2-7b-a100", jobs: int = 1,
            executor: Executor | None = None, out: Path | None = None,
            progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """GSA against the non-clairvoyant baselines users run (vLLM-style FCFS with
    restarts and with recompute, A_min with the trivial interval), in seconds."""
    policies = (Policy("gsa", "gsa", regime_base=True),
                Policy("fcfs-restart", "vllm", {"max_num_batched_tokens": BIG, "max_num_seqs": BIG,
                                                "preemption": "restart"}),
                Policy("vllm-recompute", "vllm", {"max_num_batched_tokens": BIG, "max_num_seqs": BIG}),
                Policy("a-min", "a-min", trivial_interval=True), Policy("gba (clairvoyant)", "gba", regime_base=True))
    tasks = [{"study": "gsa-serving", "trace": trace, "n": n, "capacity": m, "seed": seed, "policies": policies,
              "cost_model": cost_model} for m in capacities for seed in seeds]
    frame = _run_cells(tasks, jobs, progress, executor, out)
    means = frame.groupby(["capacity", "policy"])[["mean_latency", "throughput_tokens", "num_kills"]].mean()
    summary = {"study": "gsa-serving", "cost_model": cost_model, "units": "seconds (cost model), tokens/s",
               "mean": {f"M={m} {p}": {k: round(float(v), 4) for k, v in row.items()}
                        for (m, p), row in means.iterrows()}}
    config = {"study": "gsa-serving", "trace": trace, "n": n, "capacities": list(capacities), "seeds": list(seeds),
              "cost_model": cost_model, "kvsched_version": __version__}
    _write(out, "serving", frame, config, summary)
    return frame, summary


def _write(out: Path | None, name: str, frame: pd.DataFrame, config: dict, summary: dict) -> None:
    if out is None:
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / f"{name}.parquet", index=False)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
