"""The experiments of the WAIT paper (arXiv 2504.11320; WAIT paper §6).

Every experiment sweeps Poisson arrival rates over one workload and runs each policy on the
same requests (one workload per (rate, replication) seed):

- E1 `p512d20`: prompt 512, output 20, lambda 12..26;
- E2 `two-type`: 0.7 p512d20 + 0.3 p512d50, lambda 12..26;
- E3 `p512d1000`: lambda 0.5..5.0, plus the eviction table at lambda 4 (also with the KV
  pool shrunk to 60 %, the [draft] setting);
- E4 `lmsys`: an lmsys-like chat workload (both lengths < 500, 50 decode-length bins, A22),
  lambda 10..150, Nested WAIT-CP with L equal-width segments;
- E5: 20 repetitions at lambda 22 and 23 for E1 and E2 (mean +- sd).

System (WAIT paper §6, docs/conventions.md#wait-model, docs/conventions.md#wait-caps): Llama-2-7B on one A100-80GB (`llama2-7b-a100`, kvsched's
profile-derived cost model), KV capacity 137,000 tokens in 16-token blocks. Baselines are
Vidur's: `vidur-vllm` (batch cap 128, 4096 tokens, 1 % watermark) and `sarathi` (chunk
512, batch cap 256). WAIT-CP runs on a (tl, chunk) grid and the best setting per rate is
reported as "wait-cp (tuned)" (the paper's practice, A12a) next to one fixed setting for
all rates (docs/conventions.md#wait-tuning) and the automatic design ("wait-cp (auto)": only the workload and the
capacity, no grid). The theoretical `wait` / `nested-wait` run with their automatic
designs too (docs/conventions.md#wait-cp).

Each row of the results is one run: untrimmed and middle-50 % mean latency (docs/conventions.md#wait-window), TTFT,
completion rate, effective throughput, restarts, and a stability ratio (mean latency of
the last quarter of arrivals over that of the second quarter). lambda* of a policy is the
largest rate up to which, at every rate, the median stability ratio stays below 1.5, the
completion rate stays within 5 % of lambda and the mean latency stays within an SLO of 5x
the best mean latency any policy reaches at the lowest swept rate: the project's reading
of "latency stays controlled and the completion rate tracks lambda" (WAIT paper §6).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kvsched import __version__
from kvsched.bounds.fluid import RequestType
from kvsched.experiments.study import Executor, rows_frame, run_study
from kvsched.metrics import COMPLETION_TOLERANCE, STABLE_RATIO, load_stats
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.wait_common import WaitFamily, fill_design_options, format_types

CAPACITY_TOKENS = 137_000
COST_MODEL = "llama2-7b-a100"
SLO_FACTOR = 5.0

PAPER = {
    "E1": {"lambda_star": {"vidur-vllm": 19, "sarathi": 22, "wait-cp (tuned)": 23},
           "gain_vs_sarathi": "2 % at lambda 12 to > 70 % at 23 (Llama-3-8B era); Llama-2 rerun: 3.5-4.2 % "
                              "for 12..23, 34.9 % at 24 [notes]"},
    "E2": {"lambda_star": {"vidur-vllm": 18, "sarathi": 21, "wait-cp (tuned)": 22},
           "gain_vs_sarathi": "6 % at low load to > 40 % near the boundary"},
    "E3": {"latency_at_4.5_s": {"wait-cp (tuned)": 32.3, "sarathi": 41.7, "vidur-vllm": 53.8},
           "table1_at_4.0": {"sarathi": {"latency_s": 30.2, "restart_rate": 0.0288},
                             "wait-cp (tuned)": {"latency_s": 26.4, "restart_rate": 0.0}},
           "draft_60pct_kv_at_4.0": {"sarathi": {"evictions": 3222, "latency_s": 78.1},
                                     "wait-cp (tuned)": {"evictions": 0, "latency_s": 31.3}}},
    "E4": {"notes_table": {10: (1.688, 1.688), 20: (2.081, 2.080), 30: (3.141, 3.010), 40: (4.130, 4.097),
                           50: (4.748, 4.707), 60: (9.486, 5.523), 70: (14.790, 10.065), 80: (18.969, 14.128),
                           90: (22.153, 17.424), 100: (24.670, 20.084), 110: (26.852, 22.241),
                           120: (28.591, 24.065), 130: (30.100, 25.620), 140: (31.505, 26.974),
                           150: (32.529, 28.162)},
           "fluid_memory_tokens": {50: 34_377, 60: 55_758, 70: 100_327, 80: 250_509}},
    "E5": {"single": {22: {"vidur-vllm": (18.23, 2.74), "sarathi": (1.85, 0.33), "wait": (1.03, 0.04)},
                      23: {"vidur-vllm": (26.78, 3.35), "sarathi": (5.08, 1.72), "wait": (1.29, 0.10)}},
           "two-type": {22: {"vidur-vllm": (56.70, 2.22), "sarathi": (4.06, 1.66), "wait": (2.36, 0.57)},
                        23: {"vidur-vllm": (80.25, 2.37), "sarathi": (8.41, 1.74), "wait": (5.66, 1.88)}}},
}

ProgressFn = Callable[[int, int], None]
# Leading columns of a run's row (the rest follow alphabetically, see study.rows_frame).
ROW_COLUMNS = ("experiment", "workload", "rate", "seed", "label", "scheduler", "group", "options", "capacity_tokens",
               "designable", "design_error")


# --- workloads ------------------------------------------------------------------------------
# lmsys-like lengths (WAIT paper §6): the data set is not shipped (its licence needs an
# agreement), so both lengths follow piecewise-linear CDFs through the reported statistics:
# decode median 116, 31 % <= 50, 14 % > 300; prefill median 21, mean about 59; both < 500.
LMSYS_DECODE_CDF = ((1, 0.0), (50, 0.31), (116, 0.50), (300, 0.86), (499, 1.0))
LMSYS_PREFILL_CDF = ((1, 0.0), (21, 0.50), (100, 0.86), (250, 0.955), (499, 1.0))


def _cdf_sample(points, n: int, rng: np.random.Generator) -> np.ndarray:
    xs, ps = zip(*points)
    return np.clip(np.rint(np.interp(rng.random(n), ps, xs)), 1, 499).astype(np.int64)


def _cdf_at(points, x: float) -> float:
    xs, ps = zip(*points)
    return float(np.interp(x, xs, ps))


def lmsys_bin_types(rate: float, num_bins: int = 50, width: int = 10) -> tuple[RequestType, ...]:
    """The authors' generator (docs/conventions.md#wait-bins): decode lengths cut into 50 bins of 10, each bin a type
    with output = upper edge and prompt = the mean prompt (independent of decode here)."""
    xs, ps = zip(*LMSYS_PREFILL_CDF)
    grid = np.linspace(0, 1, 20001)
    prompt_mean = float(np.interp(grid, ps, xs).mean())
    out = []
    for k in range(num_bins):
        share = _cdf_at(LMSYS_DECODE_CDF, width * (k + 1) + 0.5) - _cdf_at(LMSYS_DECODE_CDF, width * k + 0.5)
        if share > 0:
            out.append(RequestType(int(prompt_mean), width * (k + 1), rate * share))
    return tuple(out)


WORKLOADS = ("p512d20", "two-type", "p512d1000", "lmsys", "lmsys-lengths")


def workload_types(workload: str, rate: float) -> tuple[RequestType, ...]:
    if workload == "p512d20":
        return (RequestType(512, 20, rate),)
    if workload == "two-type":
        return (RequestType(512, 20, 0.7 * rate), RequestType(512, 50, 0.3 * rate))
    if workload == "p512d1000":
        return (RequestType(512, 1000, rate),)
    if workload in ("lmsys", "lmsys-lengths"):
        return lmsys_bin_types(rate)
    raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")


def generate(workload: str, rate: float, num_requests: int, rng: np.random.Generator) -> list[Request]:
    """Poisson arrivals at `rate`; lengths from the workload's types (or, for
    `lmsys-lengths`, each request's own lengths from the CDFs). Draw order: arrivals, then types."""
    times = np.concatenate(([0.0], np.cumsum(rng.exponential(1.0 / rate, num_requests - 1))))
    if workload == "lmsys-lengths":
        prompts = _cdf_sample(LMSYS_PREFILL_CDF, num_requests, rng)
        outputs = _cdf_sample(LMSYS_DECODE_CDF, num_requests, rng)
        return [Request(i, float(t), int(p), int(o)) for i, (t, p, o) in enumerate(zip(times, prompts, outputs))]
    types = workload_types(workload, rate)
    weights = np.array([t.rate for t in types])
    kinds = rng.choice(len(types), size=num_requests, p=weights / weights.sum())
    return [Request(i, float(t), types[k].prompt_len, types[k].output_len) for i, (t, k) in enumerate(zip(times, kinds))]


# --- policies -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    label: str
    scheduler: str
    options: dict = field(default_factory=dict)
    group: str = ""  # policies of one group are a tuning grid; the best per rate is "<group> (tuned)"


BASELINES = (
    Policy("vidur-vllm", "vidur-vllm", {"batch_size_cap": 128, "max_tokens_in_batch": 4096}),
    Policy("sarathi", "sarathi", {"chunk_size": 512, "batch_size_cap": 256}),
)


def wait_cp_grid(tls: Sequence[int], chunks: Sequence[int], **extra) -> tuple[Policy, ...]:
    suffix = "".join(f" {k}={v}" for k, v in extra.items())
    return tuple(Policy(f"wait-cp tl={tl} cs={cs}{suffix}", "wait-cp", {"tl": tl, "chunk_size": cs, **extra},
                        group="wait-cp") for tl in tls for cs in chunks)


# --- one run ----------------------------------------------------------------------------------
def _middle_mean(lat_by_arrival: np.ndarray) -> float:
    n = len(lat_by_arrival)
    lo, hi = n // 4, n - n // 4
    return float(lat_by_arrival[lo:hi].mean()) if hi > lo else float("nan")


def run_cell(task: dict) -> dict:
    """One (workload, rate, seed, policy) run; returns one row of metrics."""
    from kvsched.sim import simulate

    rng = np.random.default_rng([task["seed"], round(task["rate"] * 1000)])
    reqs = generate(task["workload"], task["rate"], task["num_requests"], rng)
    cost = COST_MODELS.create(task["cost_model"])
    factory = SCHEDULERS.get(task["scheduler"]).factory
    options = dict(task["options"])
    row = {k: task[k] for k in ("experiment", "workload", "rate", "seed", "label", "scheduler", "group")}
    row["options"] = json.dumps(options, sort_keys=True)
    row["capacity_tokens"] = task["capacity_tokens"]
    try:
        if isinstance(factory, type) and issubclass(factory, WaitFamily):
            options.setdefault("types", format_types(workload_types(task["workload"], task["rate"])))
            options = fill_design_options(factory, options, reqs, cost)
        scheduler = SCHEDULERS.create(task["scheduler"], **options)
    except ValueError as exc:  # the automatic design refuses this rate (e.g. overloaded)
        return {**row, "designable": False, "design_error": str(exc)}
    try:
        run = simulate(reqs, scheduler, cost, capacity_tokens=task["capacity_tokens"], block_size=16)
    except ValueError as exc:  # a design that needs the capacity is made at the first call
        return {**row, "designable": False, "design_error": str(exc)}
    done = sorted((r for r in run.requests if r.status is RequestStatus.FINISHED), key=lambda r: r.arrival_time)
    lat = np.array([r.finish_time - r.arrival_time for r in done])
    ttft = np.array([r.first_token_time - r.arrival_time for r in done])
    makespan = max(r.finish_time for r in done) - min(r.arrival_time for r in reqs)
    load = load_stats(run)
    stats = scheduler.stats() if hasattr(scheduler, "stats") else {}
    return {
        **row, "designable": True, "design_error": "",
        "num_requests": len(reqs), "num_completed": len(done),
        "mean_latency_s": float(lat.mean()), "middle50_latency_s": _middle_mean(lat),
        "p90_latency_s": float(np.percentile(lat, 90)), "ttft_mean_s": float(ttft.mean()),
        "completion_rate": load["completion_rate_per_s"], "offered_rate": load["offered_rate_per_s"],
        "throughput_tokens_per_s": sum(r.output_len for r in done) / makespan,
        "num_restarts": int(sum(r.num_evictions for r in run.requests)),
        "restart_rate": float(np.mean([r.num_evictions > 0 for r in run.requests])),
        "stability_ratio": load["stability_ratio"],
        "total_limit": stats.get("total_limit", np.nan),
        "repair_evictions": int(stats.get("num_repair_evictions", 0)),
    }


def sweep(experiment: str, workload: str, rates: Sequence[float], policies: Sequence[Policy], *,
          replications: int, num_requests: int, seed: int = 0, capacity_tokens: int = CAPACITY_TOKENS,
          cost_model: str = COST_MODEL, jobs: int = 1, executor: Executor | None = None, out: Path | None = None,
          progress: ProgressFn | None = None) -> pd.DataFrame:
    """One row per (rate, replication, policy) run. With `out`, every run is saved under
    `out/cells/` as it finishes and a later call with the same `out` reuses it (resume)."""
    tasks = [{"experiment": experiment, "workload": workload, "rate": float(rate), "seed": seed + rep,
              "label": p.label, "scheduler": p.scheduler, "group": p.group, "options": p.options,
              "num_requests": num_requests, "capacity_tokens": capacity_tokens, "cost_model": cost_model}
             for rate in rates for rep in range(replications) for p in policies]
    rows = run_study(tasks, run_cell, out=out, executor=executor, jobs=jobs, progress=progress)
    return rows_frame(rows, ROW_COLUMNS)


# --- summaries ------------------------------------------------------------------------------
def with_tuned(frame: pd.DataFrame, metric: str = "mean_latency_s") -> pd.DataFrame:
    """Per-rate means over replications, one row per (label, rate), plus "<group> (tuned)":
    the grid member with the lowest mean `metric` at that rate (the paper's per-rate tuning)."""
    ok = frame[frame["designable"]]
    numeric = ["mean_latency_s", "middle50_latency_s", "p90_latency_s", "ttft_mean_s", "completion_rate",
               "throughput_tokens_per_s", "num_restarts", "restart_rate", "stability_ratio", "repair_evictions"]
    means = ok.groupby(["group", "label", "rate"], as_index=False)[numeric].agg(
        {**{c: "mean" for c in numeric}, "stability_ratio": "median"})
    tuned = []
    for (group, rate), part in means[means["group"] != ""].groupby(["group", "rate"]):
        best = part.loc[part[metric].idxmin()].copy()
        best["tuned_from"] = best["label"]
        best["label"] = f"{group} (tuned)"
        tuned.append(best)
    if tuned:
        means = pd.concat([means, pd.DataFrame(tuned)], ignore_index=True)
    return means


def latency_slo(means: pd.DataFrame) -> float:
    """SLO_FACTOR times the lowest mean latency any policy reaches at the lowest swept rate."""
    lowest = means[means["rate"] == means["rate"].min()]
    return SLO_FACTOR * float(lowest["mean_latency_s"].min())


def lambda_star(means: pd.DataFrame, slo_s: float | None = None) -> dict[str, float | None]:
    """Largest rate up to which every rate is stable: median stability ratio < 1.5, completion
    rate within 5 % of lambda, and mean latency within the SLO (`latency_slo` by default)."""
    slo = latency_slo(means) if slo_s is None else slo_s
    out: dict[str, float | None] = {}
    for label_, part in means.groupby("label"):
        best = None
        for _, row in part.sort_values("rate").iterrows():
            if (row["stability_ratio"] < STABLE_RATIO
                    and row["completion_rate"] >= (1 - COMPLETION_TOLERANCE) * row["rate"]
                    and row["mean_latency_s"] <= slo):
                best = float(row["rate"])
            else:
                break
        out[str(label_)] = best
    return out


def summarize(frame: pd.DataFrame, experiment: str, fixed_label: str | None = None) -> dict:
    means = with_tuned(frame)
    table = means.pivot_table(index="rate", columns="label", values="mean_latency_s")
    shown = [c for c in ("vidur-vllm", "sarathi", "wait-cp (tuned)", fixed_label, "wait-cp (auto)", "wait",
                         "nested-wait") if c and c in table.columns]
    summary: dict = {"experiment": experiment, "latency_slo_s": round(latency_slo(means), 4),
                     "lambda_star": lambda_star(means),
                     "mean_latency_s": {c: {str(r): _round(v) for r, v in table[c].items()} for c in shown}}
    if "sarathi" in table.columns and "wait-cp (tuned)" in table.columns:
        gain = (table["sarathi"] - table["wait-cp (tuned)"]) / table["sarathi"]
        summary["gain_vs_sarathi"] = {str(r): _round(v) for r, v in gain.items()}
    if "tuned_from" in means.columns:
        tuned = means[means["label"] == "wait-cp (tuned)"]
        summary["tuned_setting"] = {str(r): s for r, s in zip(tuned["rate"], tuned["tuned_from"])}
    summary["repair_evictions_wait_family"] = int(frame.loc[frame["scheduler"].str.contains("wait"),
                                                            "repair_evictions"].sum())
    undesignable = frame[~frame["designable"]]
    if len(undesignable):
        summary["automatic_design_refused"] = sorted({(lbl, r) for lbl, r in zip(undesignable["label"],
                                                                                  undesignable["rate"])})
    summary["paper"] = PAPER.get(experiment, {})
    return summary


def _round(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def plot_latency(means: pd.DataFrame, path: Path, title: str, labels: Sequence[str]) -> None:
    """Mean latency against the arrival rate, one line per policy (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for lbl in labels:
        part = means[means["label"] == lbl].sort_values("rate")
        if len(part):
            ax.plot(part["rate"], part["mean_latency_s"], marker="o", ms=3, label=lbl)
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (req/s)")
    ax.set_ylabel("mean end-to-end latency (s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, name: str, frame: pd.DataFrame, config: dict, summary: dict, plot_labels: Sequence[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / f"{name}.parquet", index=False)
    means = with_tuned(frame)
    means.to_csv(out / f"{name}_means.csv", index=False)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plot_latency(means, out / f"{name}_latency.png", name, plot_labels)


# --- the experiments ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Experiment:
    name: str
    workload: str
    rates: tuple[float, ...]
    policies: tuple[Policy, ...]
    fixed_label: str
    num_requests: int = 5000
    replications: int = 10


def experiments(quick: bool = False) -> dict[str, Experiment]:
    """The sweep definitions; `quick` shrinks grids (for tests and a first look)."""
    auto = Policy("wait-cp (auto)", "wait-cp", {})
    e1_grid = wait_cp_grid((21, 25, 30, 40, 50) if not quick else (21, 30), (256,))
    e2_grid = wait_cp_grid((25, 30, 40, 50) if not quick else (30,), (128, 256) if not quick else (128,))
    e2_grid += (Policy("wait-cp tl=30 cs=128 eta=0", "wait-cp", {"tl": 30, "chunk_size": 128, "eta": 0.0},
                       group="wait-cp"),)
    e3_grid = tuple(Policy(f"wait-cp tl={tl} seg=200", "wait-cp", {"tl": tl, "chunk_size": 256, "segment_size": 200},
                           group="wait-cp") for tl in ((60, 90) if not quick else (90,)))
    e4_grid = tuple(Policy(f"wait-cp tl={tl} L={L}", "wait-cp", {"tl": tl, "num_segments": L, "chunk_size": 128},
                           group="wait-cp")
                    for tl in ((100, 200, 300) if not quick else (300,)) for L in ((1, 3, 5) if not quick else (1,)))
    sweep_rates = tuple(float(r) for r in range(12, 27))
    return {
        "e1": Experiment("E1", "p512d20", sweep_rates, (*BASELINES, *e1_grid, auto, Policy("wait", "wait", {})),
                         "wait-cp tl=25 cs=256"),
        "e2": Experiment("E2", "two-type", sweep_rates,
                         (*BASELINES, *e2_grid, auto, Policy("nested-wait", "nested-wait", {})),
                         "wait-cp tl=30 cs=128"),
        "e3": Experiment("E3", "p512d1000", tuple(0.5 * k for k in range(1, 11)), (*BASELINES, *e3_grid, auto),
                         "wait-cp tl=90 seg=200", num_requests=2000),
        "e4": Experiment("E4", "lmsys", tuple(float(r) for r in range(10, 151, 10)), (*BASELINES, *e4_grid, auto),
                         "wait-cp tl=300 L=1"),
    }


def run_experiment(key: str, *, out: Path | None = None, quick: bool = False, replications: int | None = None,
                   num_requests: int | None = None, rates: Sequence[float] | None = None, seed: int = 0,
                   jobs: int = 1, executor: Executor | None = None,
                   progress: ProgressFn | None = None) -> tuple[pd.DataFrame, dict]:
    """E1-E4: the sweep, its summary (lambda*, latencies, gains, the paper's numbers) and files.
    With `out`, an interrupted sweep resumes from the runs saved under `out/cells/`."""
    exp = experiments(quick)[key]
    reps = replications if replications is not None else (2 if quick else exp.replications)
    n = num_requests if num_requests is not None else (1000 if quick else exp.num_requests)
    grid = tuple(rates) if rates is not None else exp.rates
    t0 = time.perf_counter()
    frame = sweep(exp.name, exp.workload, grid, exp.policies, replications=reps, num_requests=n, seed=seed,
                  jobs=jobs, executor=executor, out=out, progress=progress)
    summary = summarize(frame, exp.name, exp.fixed_label)
    if key == "e3":
        summary["eviction_table"] = eviction_table(frame)
    config = {"kvsched_version": __version__, "experiment": exp.name, "workload": exp.workload,
              "rates": list(grid), "replications": reps, "num_requests": n, "seed": seed,
              "capacity_tokens": CAPACITY_TOKENS, "block_size": 16, "cost_model": COST_MODEL,
              "policies": [{"label": p.label, "scheduler": p.scheduler, "options": p.options} for p in exp.policies],
              "stability_rule": {"ratio_below": STABLE_RATIO, "completion_rate_within": COMPLETION_TOLERANCE,
                                 "slo_factor": SLO_FACTOR}}
    summary["wall_time_s"] = round(time.perf_counter() - t0, 1)
    if out is not None:
        labels = ["vidur-vllm", "sarathi", "wait-cp (tuned)", exp.fixed_label, "wait-cp (auto)", "wait", "nested-wait"]
        write(out, exp.name, frame, config, summary, labels)
    return frame, summary


def eviction_table(frame: pd.DataFrame, rate: float = 4.0) -> dict:
    """E3's Table 1: latency and the eviction-induced restart rate at lambda = 4."""
    means = with_tuned(frame)
    part = means[(means["rate"] == rate) & means["label"].isin(["sarathi", "vidur-vllm", "wait-cp (tuned)"])]
    return {row["label"]: {"latency_s": _round(row["mean_latency_s"]), "restart_rate": _round(row["restart_rate"]),
                           "restarts": _round(row["num_restarts"])} for _, row in part.iterrows()}


def repeated_runs(*, out: Path | None = None, repetitions: int = 20, num_requests: int = 5000, seed: int = 0,
                  jobs: int = 1, executor: Executor | None = None, progress: ProgressFn | None = None,
                  quick: bool = False) -> tuple[pd.DataFrame, dict]:
    """E5: mean +- sd latency over `repetitions` runs at lambda 22 and 23, single and two types,
    with WAIT-CP at the fixed settings (tl 25 cs 256; tl 30 cs 128)."""
    specs = {"single": ("p512d20", Policy("wait", "wait-cp", {"tl": 25, "chunk_size": 256})),
             "two-type": ("two-type", Policy("wait", "wait-cp", {"tl": 30, "chunk_size": 128}))}
    frames = []
    for name, (workload, policy) in specs.items():
        f = sweep("E5", workload, (22.0, 23.0), (*BASELINES, policy), replications=repetitions,
                  num_requests=num_requests, seed=seed, jobs=jobs, executor=executor, out=out, progress=progress)
        f["case"] = name
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    table = {case: {str(rate): {lbl: [round(g["mean_latency_s"].mean(), 3), round(g["mean_latency_s"].std(), 3)]
                                for lbl, g in part.groupby("label")}
                    for rate, part in cf.groupby("rate")}
             for case, cf in frame.groupby("case")}
    summary = {"experiment": "E5", "mean_sd_latency_s": table, "paper": PAPER["E5"]}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out / "E5.parquet", index=False)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (out / "config.json").write_text(json.dumps({"kvsched_version": __version__, "repetitions": repetitions,
                                                      "num_requests": num_requests, "seed": seed,
                                                      "capacity_tokens": CAPACITY_TOKENS, "cost_model": COST_MODEL},
                                                     indent=2) + "\n")
    return frame, summary
