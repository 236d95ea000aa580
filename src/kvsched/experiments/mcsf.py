"""The experiments of the MC-SF paper (arXiv 2502.07115; the MC-SF paper's studies).

- `synthetic_study`: 200 instances per arrival model in theory mode; MC-SF's total
  latency against the hindsight optimum (the IP of `kvsched.bounds`, HiGHS, warm-started
  from the better of MC-SF and MC-Benchmark). A ratio counts as exact only against a
  proven optimum; otherwise the instance contributes the proven interval.
- `trace_study`: an LMSYS-like workload (10,000 requests, Poisson lambda = 10 and 50
  req/s, M = 16,492 tokens) under MC-SF, MC-Benchmark and the six alpha/beta baselines,
  rounds timed by a cost model; plus the smallest feasible alpha of protection greedy.
- `robustness_study`: the same workload with predictions off by eps in {0.2, 0.5, 0.8};
  MC-SF and MC-Benchmark with a 10% reserve and LIFO clearing against the baselines.

Each study returns pandas frames and writes them (Parquet + JSON config + JSON summary)
when given a directory. The paper's numbers sit beside ours in `PAPER`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kvsched import __version__
from kvsched.experiments.study import Executor, rows_frame, run_study
from kvsched.predictors import with_predictions
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.request import Request, RequestStatus

PAPER = {
    "synthetic": {
        1: {"mean": 1.005, "best": 1.000, "worst": 1.074, "optimal": "114/200"},
        2: {"mean": 1.047, "best": 1.000, "worst": 1.227, "optimal": "n/a"},
    },
    "trace": {"mcsf_vs_benchmark_reduction": 0.31, "headline": "32.11 vs 46.47 (unit unclear)",
              "smallest_feasible_alpha": {50.0: 0.21, 10.0: 0.24}},
}
LMSYS_PROMPT = (math.log(11.0), math.sqrt(2.0 * math.log(40.62 / 11.0)))  # (mu, sigma), the MC-SF paper's studies
LMSYS_OUTPUT = (math.log(45.0), math.sqrt(2.0 * math.log(85.32 / 45.0)))
PAPER_CAPACITY_TOKENS = 16_492
TRACE_COST_MODEL = "llama2-70b-a100-tp2"
# the MC-SF paper's α-protection benchmarks / docs/conventions.md: the six alpha/beta configurations.
BASELINES = (
    ("alpha-protection", {"alpha": 0.3}),
    ("alpha-protection", {"alpha": 0.25}),
    ("beta-clearing", {"alpha": 0.2, "beta": 0.2}),
    ("beta-clearing", {"alpha": 0.2, "beta": 0.1}),
    ("beta-clearing", {"alpha": 0.1, "beta": 0.2}),
    ("beta-clearing", {"alpha": 0.1, "beta": 0.1}),
)

ProgressFn = Callable[[int, int], None]  # (done, total)
# Leading columns of the tables (the rest follow alphabetically, see study.rows_frame).
SYNTHETIC_COLUMNS = ("model", "scale", "index", "base_seed", "capacity", "num_requests", "sum_output")
RUN_COLUMNS = ("rate", "eps", "scheduler", "label", "feasible")


def label(name: str, options: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in options.items())


def _write(out: Path | None, tables: dict[str, pd.DataFrame], config: dict, summary: dict) -> None:
    if out is None:
        return
    from kvsched.results import write_json

    out.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    write_json(out / "config.json", {"kvsched_version": __version__, **config})
    write_json(out / "summary.json", summary)


# --- theory-mode helpers ------------------------------------------------------------------

def instance_requests(inst) -> list[Request]:
    """An `Instance`'s requests with exact predictions (the synthetic study's setting)."""
    reqs = [Request(int(rid), float(a), int(s), int(o)) for rid, a, s, o in
            zip(inst.request_ids, inst.arrival, inst.prompt_len, inst.output_len)]
    return with_predictions(reqs, "exact", np.random.default_rng(0))


def theory_schedule(inst, scheduler_name: str, **options) -> tuple[int, tuple[int, ...] | None]:
    """Total latency of `scheduler_name` on `inst` in theory mode, and its start epochs in
    `inst` order (None when a request was cleared, so the schedule is not non-preemptive)."""
    from kvsched.bounds.runs import schedule_of
    from kvsched.sim import simulate_theory

    run = simulate_theory(instance_requests(inst), SCHEDULERS.create(scheduler_name, **options),
                          capacity_tokens=inst.capacity)
    if any(r.status is not RequestStatus.FINISHED for r in run.requests):
        raise RuntimeError(f"{scheduler_name} left requests unfinished on a feasible instance")
    tel, starts = schedule_of(run)
    return tel, None if starts is None else tuple(starts[rid] for rid in inst.request_ids)


# --- 10.1 synthetic study -----------------------------------------------------------------

# Instance sizes: the paper's, and a scaled-down family whose IPs HiGHS closes in seconds.
SCALES = {
    "paper": {1: {}, 2: {}},
    "small": {1: {"capacity_range": (10, 16), "n_range": (6, 10), "prompt_max": 3},
              2: {"capacity_range": (10, 16), "epochs_range": (6, 10), "prompt_max": 3}},
}


def synthetic_instance(model: int, index: int, base_seed: int, scale: str = "paper"):
    from kvsched.experiments.mcsf_instances import (
        instance_rng,
        model1_instance,
        model2_instance,
    )

    rng = instance_rng(base_seed, model, index)
    kwargs = SCALES[scale][model]
    return model1_instance(rng, **kwargs) if model == 1 else model2_instance(rng, **kwargs)


def synthetic_instance_row(model: int, index: int, base_seed: int, time_limit_s: float,
                           solve: bool = True, scale: str = "paper", method: str = "auto") -> dict:
    """Everything the study stores for one instance (runs in a worker process).

    `method` picks who solves the hindsight IP (`kvsched.bounds.hindsight.solve_hindsight`)."""
    from kvsched.bounds import solve_hindsight, volume_bound

    inst = synthetic_instance(model, index, base_seed, scale)
    row: dict = {"model": model, "scale": scale, "index": index, "base_seed": base_seed, "capacity": inst.capacity,
                 "num_requests": inst.n, "sum_output": int(sum(inst.output_len))}
    heuristics = {}
    for name in ("mcsf", "mc-benchmark"):
        heuristics[name] = theory_schedule(inst, name)
        row[f"{name.replace('-', '_')}_tel"] = heuristics[name][0]
    row["volume_bound"] = int(volume_bound(inst))
    if not solve:
        return row
    best = min((h for h in heuristics.values() if h[1] is not None), key=lambda h: h[0])
    t0 = time.perf_counter()
    res = solve_hindsight(inst, method=method, incumbent_starts=best[1], time_limit_s=time_limit_s)
    cert = res.certificate()
    row.update({
        "ip_status": res.status, "ip_upper": res.upper_bound, "ip_lower": res.lower_bound,
        "ip_lower_source": res.lower_bound_source, "ip_gap": res.gap, "ip_horizon": res.horizon,
        "ip_num_vars": res.num_vars, "ip_solve_time_s": time.perf_counter() - t0, "ip_solver": res.solver,
        "ip_lower_solver": res.lower_bound_solver, "ip_upper_from": cert["upper_bound_from"],
    })
    mcsf = row["mcsf_tel"]
    row["ratio_lower"] = mcsf / res.upper_bound if res.upper_bound else float("nan")  # true ratio >= this
    row["ratio_upper"] = mcsf / res.lower_bound if res.lower_bound else float("nan")  # true ratio <= this
    row["proven_optimal"] = res.status == "optimal"
    # MC-SF is certainly optimal when its TEL meets a proven lower bound.
    row["mcsf_optimal"] = bool(mcsf <= res.lower_bound) or (res.status == "optimal" and mcsf == res.upper_bound)
    return row


def _synthetic_task(task: dict) -> dict:
    return synthetic_instance_row(task["model"], task["index"], task["base_seed"], task["time_limit_s"],
                                  task["solve"], task["scale"], task.get("method", "auto"))


def synthetic_study(model: int, *, instances: int = 200, time_limit_s: float = 10.0, base_seed: int = 0,
                    jobs: int = 1, executor: Executor | None = None, out: Path | None = None,
                    progress: ProgressFn | None = None, solve: bool = True,
                    scale: str = "paper", method: str = "auto") -> tuple[pd.DataFrame, dict]:
    """the MC-SF paper's studies: per-instance rows and the summary table beside the paper's numbers.

    scale="small" draws scaled-down instances (M 10-16, n 6-10 or 6-10 epochs, s 1-3)
    whose IPs close, so MC-SF's ratio to a *proven* optimum can be measured; it is not
    the paper's distribution and is labelled so in every output. With `out`, each solved
    instance is saved under `out/cells/` and a re-run resumes from them. `method`: who
    solves the hindsight IP ("auto", "highs", "cpsat", "best"; kvsched.bounds.hindsight)."""
    from kvsched.bounds.hindsight import resolve_method

    method = resolve_method(method)
    if model not in (1, 2):
        raise ValueError(f"arrival model must be 1 or 2, got {model}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    tasks = [{"study": "mcsf-synthetic", "model": model, "index": i, "base_seed": base_seed,
              "time_limit_s": time_limit_s, "solve": solve, "scale": scale, "method": method}
             for i in range(instances)]
    rows = run_study(tasks, _synthetic_task, out=out, executor=executor, jobs=jobs, progress=progress)
    frame = rows_frame(rows, SYNTHETIC_COLUMNS)
    summary = summarize_synthetic(frame, model)
    summary["scale"] = scale
    config = {"study": "mcsf-synthetic", "model": model, "scale": scale, "instance_sizes": SCALES[scale][model] or
              "the MC-SF paper's studies", "instances": instances, "time_limit_s": time_limit_s, "base_seed": base_seed,
              "solver_threads": 1, "solver_method": method}
    _write(out, {"instances": frame}, config, summary)
    return frame, summary


def summarize_synthetic(frame: pd.DataFrame, model: int) -> dict:
    """Ratio TEL(MC-SF)/TEL(OPT) over proven optima, and the proven interval over all."""
    out: dict = {"model": model, "instances": len(frame), "paper": PAPER["synthetic"][model]}
    out["mcsf_over_mc_benchmark_mean"] = float((frame["mcsf_tel"] / frame["mc_benchmark_tel"]).mean())
    out["mcsf_over_volume_bound_mean"] = float((frame["mcsf_tel"] / frame["volume_bound"]).mean())
    if "ip_status" not in frame:
        return out
    proven = frame[frame["proven_optimal"]]
    ratio = proven["mcsf_tel"] / proven["ip_upper"]
    out["proven_optimal"] = len(proven)
    out["proven_share"] = len(proven) / len(frame) if len(frame) else None
    if "ip_lower_solver" in frame:
        out["proved_by"] = {str(k): int(v) for k, v in proven["ip_lower_solver"].value_counts().items()}
    out["proven"] = {
        "mean": float(ratio.mean()) if len(ratio) else None,
        "best": float(ratio.min()) if len(ratio) else None,
        "worst": float(ratio.max()) if len(ratio) else None,
        "mcsf_exactly_optimal": int((proven["mcsf_tel"] == proven["ip_upper"]).sum()),
    }
    out["all_instances"] = {
        # The true ratio of each instance lies in [ratio_lower, ratio_upper].
        "mean_ratio_lower": float(frame["ratio_lower"].mean()),
        "mean_ratio_upper": float(frame["ratio_upper"].mean()),
        "worst_ratio_upper": float(frame["ratio_upper"].max()),
        "mcsf_certainly_optimal": int(frame["mcsf_optimal"].sum()),
        "median_solve_time_s": float(frame["ip_solve_time_s"].median()),
        "mean_gap": float(frame["ip_gap"].fillna(0).mean()),
    }
    return out


# --- 10.2 trace study ------------------------------------------------------------------------

def lmsys_like_workload(num_requests: int, rate: float, capacity: int, rng: np.random.Generator) -> list[Request]:
    """kvsched's stand-in for the paper's LMSYS-Chat-1M sample (docs/conventions.md#mcsf-trace): lognormal
    prompts and outputs with the reported medians and means (prompt 11 / 40.62, output 45 /
    85.32 words used as tokens), Poisson arrivals at `rate` req/s, outputs truncated so that
    s + o <= M. The data set itself is not shipped; see docs/mcsf.md."""
    if rate <= 0 or num_requests < 1:
        raise ValueError(f"need rate > 0 and num_requests >= 1, got rate={rate}, num_requests={num_requests}")
    arrivals = np.cumsum(rng.exponential(1.0 / rate, num_requests))
    arrivals -= arrivals[0]
    prompt = np.maximum(1, np.rint(rng.lognormal(*LMSYS_PROMPT, num_requests))).astype(np.int64)
    prompt = np.minimum(prompt, capacity - 1)
    output = np.maximum(1, np.rint(rng.lognormal(*LMSYS_OUTPUT, num_requests))).astype(np.int64)
    output = np.minimum(output, capacity - prompt)
    return [Request(i, float(t), int(s), int(o)) for i, (t, s, o) in enumerate(zip(arrivals, prompt, output))]


def _trace_run(reqs: Sequence[Request], name: str, options: dict, capacity: int, cost_model: str) -> dict:
    """One trace-mode run: rounds timed by the cost model, the papers' memory ledger."""
    from kvsched.metrics import requests_frame, summarize
    from kvsched.schedulers.clearing import InfeasibleSchedule
    from kvsched.sim import simulate

    scheduler = SCHEDULERS.create(name, **options)
    try:
        run = simulate(reqs, scheduler, COST_MODELS.create(cost_model), capacity_tokens=capacity, block_size=1,
                       lookahead_tokens=1)
    except InfeasibleSchedule as exc:
        return {"scheduler": name, "label": label(name, options), **options, "feasible": False,
                "infeasible_reason": str(exc)}
    df = requests_frame(run)
    s = summarize(run, df)
    done = df[df["status"] == RequestStatus.FINISHED.value].sort_values("arrival_time")
    lat = done["e2e_latency"].to_numpy()
    cum_mean = np.cumsum(lat) / np.arange(1, len(lat) + 1)
    # Growth of the cumulative average latency over the run (seconds per second of arrivals).
    slope = float(np.polyfit(done["arrival_time"].to_numpy(), cum_mean, 1)[0]) if len(lat) > 1 else float("nan")
    return {
        "scheduler": name, "label": label(name, options), **options, "feasible": True,
        "mean_latency_s": s["e2e_mean"], "p50_latency_s": s["e2e_p50"], "p99_latency_s": s["e2e_p99"],
        "ttft_mean_s": s["ttft_mean"], "throughput_tokens_per_s": s["throughput_tokens_per_s"],
        "num_preemptions": s["num_preemptions"], "num_restarts": s["num_restarts"],
        "num_wasted_tokens": s["num_wasted_tokens"],
        "peak_kv_tokens": s["peak_kv_tokens"], "cum_avg_latency_slope": slope, "makespan_s": s["makespan_s"],
    }


def smallest_feasible_alpha(reqs: Sequence[Request], capacity: int, cost_model: str, *, resolution: float = 0.01,
                            high: float = 0.6) -> float | None:
    """Bisection for the smallest alpha at which protection greedy never overflows
    (assumes feasibility is monotone in alpha, which the papers' figures suggest)."""
    def feasible(alpha: float) -> bool:
        return _trace_run(reqs, "alpha-protection", {"alpha": round(alpha, 6)}, capacity, cost_model)["feasible"]

    lo, hi = 0.0, high
    if feasible(lo):
        return 0.0
    if not feasible(hi):
        return None
    while hi - lo > resolution + 1e-12:
        mid = round((lo + hi) / 2 / resolution) * resolution
        if mid <= lo or mid >= hi:
            break
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return round(hi, 6)


def _lmsys_requests(task: dict) -> tuple[list[Request], np.random.Generator]:
    """The workload of the task's rate, drawn the same way by every task of that rate."""
    rng = np.random.default_rng([task["seed"], int(task["rate"] * 1000)])
    return lmsys_like_workload(task["num_requests"], task["rate"], task["capacity"], rng), rng


def _trace_task(task: dict) -> dict:
    """One task of the trace study: a scheduler's run, or the alpha bisection of one rate."""
    base, rng = _lmsys_requests(task)
    reqs = with_predictions(base, "exact", rng)
    if task["kind"] == "alpha":
        return {"rate": task["rate"],
                "smallest_feasible_alpha": smallest_feasible_alpha(reqs, task["capacity"], task["cost_model"])}
    return {"rate": task["rate"], **_trace_run(reqs, task["scheduler"], task["options"], task["capacity"],
                                               task["cost_model"])}


def trace_study(*, rates: Sequence[float] = (10.0, 50.0), num_requests: int = 10_000,
                capacity: int = PAPER_CAPACITY_TOKENS, cost_model: str = TRACE_COST_MODEL, seed: int = 0,
                find_alpha: bool = True, jobs: int = 1, executor: Executor | None = None, out: Path | None = None,
                progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """the MC-SF paper's studies: MC-SF vs MC-Benchmark vs the six alpha/beta baselines at each rate
    (resumable from `out/cells/`; the alpha bisection of a rate is one task)."""
    configs = [("mcsf", {}), ("mc-benchmark", {}), *BASELINES]
    common = {"study": "mcsf-trace", "num_requests": num_requests, "capacity": capacity, "cost_model": cost_model,
              "seed": seed}
    tasks = [{**common, "kind": "run", "rate": float(rate), "scheduler": name, "options": options}
             for rate in rates for name, options in configs]
    tasks += [{**common, "kind": "alpha", "rate": float(rate)} for rate in rates] if find_alpha else []
    results = run_study(tasks, _trace_task, out=out, executor=executor, jobs=jobs, progress=progress)
    runs = [r for task, r in zip(tasks, results) if task["kind"] == "run"]
    alphas = {r["rate"]: r["smallest_feasible_alpha"] for task, r in zip(tasks, results) if task["kind"] == "alpha"}
    frame = rows_frame(runs, RUN_COLUMNS)
    summary = summarize_trace(frame, alphas)
    config = {"study": "mcsf-trace", "rates": list(rates), "num_requests": num_requests, "capacity_tokens": capacity,
              "cost_model": cost_model, "seed": seed, "workload": "lmsys-like lognormal stand-in (the MC-SF paper's studies)",
              "memory_ledger": "papers' (block_size 1, one lookahead slot)"}
    _write(out, {"runs": frame}, config, summary)
    return frame, summary


def summarize_trace(frame: pd.DataFrame, alphas: dict | None = None) -> dict:
    out: dict = {"paper": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                           for k, v in PAPER["trace"].items()}}
    for rate, group in frame.groupby("rate"):
        ok = group[group["feasible"]]
        by = dict(zip(ok["label"], ok["mean_latency_s"]))
        mcsf, mcb = by.get("mcsf"), by.get("mc-benchmark")
        others = {k: v for k, v in by.items() if k != "mcsf"}
        out[f"rate_{rate:g}"] = {
            "mean_latency_s": by,
            "infeasible": list(group.loc[~group["feasible"], "label"]),
            "mcsf_lowest": bool(mcsf is not None and all(mcsf < v for v in others.values())),
            "reduction_vs_mc_benchmark": (1.0 - mcsf / mcb) if mcsf and mcb else None,
            "smallest_feasible_alpha": None if alphas is None else alphas.get(rate),
        }
    return out


# --- 10.3 robustness study --------------------------------------------------------------------

def _robustness_task(task: dict) -> dict:
    """One run of the robustness study: a baseline on exact lengths, or MC-SF / MC-Benchmark
    with a reserve on predictions off by eps (their own generator, so eps values share lengths)."""
    base, rng = _lmsys_requests(task)
    exact = with_predictions(base, "exact", rng)
    if task["eps"] is None:
        return {"rate": task["rate"], "eps": None, **_trace_run(exact, task["scheduler"], task["options"],
                                                                 task["capacity"], task["cost_model"])}
    noisy = with_predictions(base, f"relative:eps={task['eps']}",
                             np.random.default_rng([task["seed"], int(task["eps"] * 1000)]))
    return {"rate": task["rate"], "eps": task["eps"], **_trace_run(noisy, task["scheduler"], task["options"],
                                                                    task["capacity"], task["cost_model"])}


def robustness_study(*, eps_values: Sequence[float] = (0.2, 0.5, 0.8), rates: Sequence[float] = (50.0, 10.0),
                     num_requests: int = 10_000, capacity: int = PAPER_CAPACITY_TOKENS,
                     cost_model: str = TRACE_COST_MODEL, reserve: float = 0.1, seed: int = 0, jobs: int = 1,
                     executor: Executor | None = None, out: Path | None = None,
                     progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """the MC-SF paper's studies: noisy predictions; MC-SF (and MC-Benchmark) with a reserve and LIFO
    clearing on overflow, against the alpha/beta baselines (which ignore predictions)."""
    common = {"study": "mcsf-robustness", "num_requests": num_requests, "capacity": capacity,
              "cost_model": cost_model, "seed": seed}
    tasks = []
    for rate in rates:
        tasks += [{**common, "rate": float(rate), "eps": None, "scheduler": name, "options": options}
                  for name, options in BASELINES]
        tasks += [{**common, "rate": float(rate), "eps": float(eps), "scheduler": name,
                   "options": {"reserve": reserve}} for eps in eps_values for name in ("mcsf", "mc-benchmark")]
    rows = run_study(tasks, _robustness_task, out=out, executor=executor, jobs=jobs, progress=progress)
    frame = rows_frame(rows, RUN_COLUMNS)
    summary: dict = {"paper": "MC-SF beats the FCFS-type benchmarks at every eps (no numeric table)"}
    for rate in rates:
        at = frame[frame["rate"] == rate]
        baselines = at[at["eps"].isna() & at["feasible"]]
        best_baseline = float(baselines["mean_latency_s"].min()) if len(baselines) else None
        for eps in eps_values:
            sub = at[at["eps"] == eps].set_index("scheduler")
            mcsf = float(sub.loc["mcsf", "mean_latency_s"])
            summary[f"rate_{rate:g}_eps_{eps:g}"] = {
                "mcsf_mean_latency_s": mcsf,
                "mc_benchmark_mean_latency_s": float(sub.loc["mc-benchmark", "mean_latency_s"]),
                "best_baseline_mean_latency_s": best_baseline,
                "mcsf_beats_every_feasible_baseline": bool(best_baseline is None or mcsf < best_baseline),
                "mcsf_evictions": int(sub.loc["mcsf", "num_preemptions"] + sub.loc["mcsf", "num_restarts"]),
                "mcsf_recomputed_tokens": int(sub.loc["mcsf", "num_wasted_tokens"]),
            }
    config = {"study": "mcsf-robustness", "eps": list(eps_values), "rates": list(rates), "num_requests": num_requests,
              "capacity_tokens": capacity, "cost_model": cost_model, "reserve": reserve, "seed": seed,
              "noise_model": "relative uniform: round(o (1 + eps U)), U ~ U[-1, 1] (docs/conventions.md#mcsf-noise)"}
    _write(out, {"runs": frame}, config, summary)
    return frame, summary
