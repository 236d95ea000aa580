"""Reproductions of the MC-SF paper's studies (arXiv 2502.07115: synthetic, trace-driven and robustness studies).

- `mcsf-synthetic-1` / `-2`: MC-SF against the hindsight optimum on the paper's random
  instances (arrival models 1 and 2), once at the paper's size (where HiGHS proves only an
  interval) and once on scaled-down instances the IP closes;
- `mcsf-trace`: the LMSYS-like trace at λ = 10 and 50 against MC-Benchmark and the six α/β
  baselines, with the smallest feasible protection α;
- `mcsf-robustness`: predictions off by ε ∈ {0.2, 0.5, 0.8}.
"""

from __future__ import annotations

import pandas as pd

from kvsched.experiments import mcsf as exp
from kvsched.experiments.reproduce import (
    Comparison,
    Context,
    Findings,
    Reproduction,
    bar_figure,
    diff,
    fmt,
    pct,
)

PAPER_ID = "2502.07115"
PAPER_TRACE_MS = {"mcsf": 32.11, "mc-benchmark": 46.47}  # "ms" in the paper; the unit is unclear (docs/conventions.md#mcsf-units)
PAPER_SLOPES = {50.0: (1 / 6, 1 / 2), 10.0: (1 / 800, 1 / 100)}  # (MC-SF, benchmarks), the paper's trace study

TRACE_REASONS = (
    ("Data: the paper samples 10,000 LMSYS-Chat-1M conversations (word counts as tokens); the data set is "
    "gated and not shipped, so kvsched draws a lognormal stand-in with the same medians and means "
    "(prompt 11 / 40.62, output 45 / 85.32; docs/conventions.md#mcsf-trace)."),
    ("Timing: the paper times rounds with Vidur (Llama-2-70B on two A100s); kvsched uses its "
    "`llama2-70b-a100-tp2` cost model (Vidur's operator profiles plus a roofline attention term) with the "
    "papers' memory ledger (block size 1, one lookahead slot). On it λ = 10 is light (requests barely queue) "
    "and λ = 50 is heavily overloaded (the queue grows for the whole run), so absolute latencies, slopes and "
    "the gap to MC-Benchmark differ; kvsched's reproduction target is the ordering."),
    ("The paper's headline 32.11 vs 46.47 is labelled ms, which cannot be right for 85-token answers on "
    "Llama-2-70B (docs/conventions.md#mcsf-units); only the ratio is compared."),
)


def entries() -> list[Reproduction]:
    synthetic_note = ("200 paper-size instances with an IP time limit of 2 s (`--ip-time-limit`; the free solvers "
                      "prove only an interval there, the paper used Gurobi) and 200 scaled-down instances the IP "
                      "closes (time limit 10 s)")
    return [
        Reproduction("mcsf-synthetic-1", PAPER_ID, "synthetic study, arrival model 1",
                     "MC-SF against the hindsight optimum, all requests at time 0", _synthetic(1),
                     {"default": 302, "quick": 34, "full": 6600}, synthetic_note,
                     "paper-size instances with an IP time limit of 60 s per instance (about 1 h 50 min on 2 "
                     "cores, estimate); the free solvers still prove none of the ones we tried optimal"),
        Reproduction("mcsf-synthetic-2", PAPER_ID, "synthetic study, arrival model 2",
                     "MC-SF against the hindsight optimum, Poisson arrivals per epoch", _synthetic(2),
                     {"default": 445, "quick": 69, "full": 6600}, synthetic_note,
                     "paper-size instances with an IP time limit of 60 s per instance (about 1 h 50 min on 2 "
                     "cores, estimate); the free solvers still prove none of the ones we tried optimal"),
        Reproduction("mcsf-trace", PAPER_ID, "trace-driven study (LMSYS-Chat-1M, Llama-2-70B on 2×A100)",
                     "LMSYS-like trace at λ = 10 and 50 req/s: MC-SF against MC-Benchmark and six α/β baselines",
                     _trace, {"default": 21, "quick": 6},
                     "the paper's settings: 10,000 requests, λ = 10 and 50, M = 16,492 tokens"),
        Reproduction("mcsf-robustness", PAPER_ID, "robustness to prediction errors",
                     "predictions off by ε ∈ {0.2, 0.5, 0.8}: MC-SF with a 10 % reserve against the baselines",
                     _robustness, {"default": 24, "quick": 7},
                     "the paper's settings: 10,000 requests, λ = 50 and 10, ε ∈ {0.2, 0.5, 0.8}, 10 % reserve"),
    ]


# --- synthetic study ----------------------------------------------------------------------------------
def _synthetic(model: int):
    def run(ctx: Context) -> Findings:
        return _synthetic_findings(ctx, model)

    return run


def _synthetic_rows(model: int, paper_size: dict, small: dict) -> list[Comparison]:
    paper = exp.PAPER["synthetic"][model]
    whole, proven = paper_size.get("all_instances", {}), small.get("proven", {})
    big_proven = paper_size.get("proven", {})
    n_big, n_small = paper_size["instances"], small["instances"]
    lo, hi = whole.get("mean_ratio_lower"), whole.get("mean_ratio_upper")
    inside = lo is not None and hi is not None and lo <= paper["mean"] <= hi
    return [
        Comparison("mean TEL(MC-SF)/TEL(OPT), paper-size instances (proven interval)",
                   f"[{fmt(lo)}, {fmt(hi)}] ({paper_size.get('proven_optimal', 0)} of {n_big} proven)",
                   fmt(paper["mean"]), "paper's value inside the interval" if inside else "outside the interval"),
        Comparison("worst ratio, paper-size instances (upper end)", f"≤ {fmt(whole.get('worst_ratio_upper'))}",
                   fmt(paper["worst"]), "—"),
        Comparison("MC-SF provably optimal, paper-size instances", f"{whole.get('mcsf_certainly_optimal', 0)} of "
                   f"{n_big}", f"{paper['optimal']}", "—"),
        Comparison("paper-size instances with a proven optimum",
                   f"{paper_size.get('proven_optimal', 0)} of {n_big} ({pct(paper_size.get('proven_share') or 0, signed=False)}; "
                   f"proved by {_proved_by(paper_size)})", "all (Gurobi)", "—"),
        Comparison("mean TEL(MC-SF)/TEL(OPT) over the proven paper-size instances",
                   f"{fmt(big_proven.get('mean'))} ({paper_size.get('proven_optimal', 0)} instances)",
                   fmt(paper["mean"]), diff(big_proven.get("mean"), paper["mean"], digits=3)),
        Comparison("mean ratio to a proven optimum, small instances", f"{fmt(proven.get('mean'))} "
                   f"({small.get('proven_optimal', 0)} of {n_small} proven)", f"{fmt(paper['mean'])} (paper size)",
                   diff(proven.get("mean"), paper["mean"], digits=3)),
        Comparison("best ratio, small instances", fmt(proven.get("best")), fmt(paper["best"]),
                   diff(proven.get("best"), paper["best"], digits=3)),
        Comparison("worst ratio, small instances", fmt(proven.get("worst")), fmt(paper["worst"]),
                   diff(proven.get("worst"), paper["worst"], digits=3)),
        Comparison("MC-SF exactly optimal, small instances", f"{proven.get('mcsf_exactly_optimal', 0)} of "
                   f"{small.get('proven_optimal', 0)}", f"{paper['optimal']} (paper size)", "—"),
        Comparison("TEL(MC-SF)/TEL(MC-Benchmark), paper-size instances", fmt(paper_size["mcsf_over_mc_benchmark_mean"]),
                   "— (not reported)", "—"),
    ]


def _proved_by(summary: dict) -> str:
    by = summary.get("proved_by") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "—"


def _synthetic_findings(ctx: Context, model: int) -> Findings:
    big_n = ctx.pick(default=200, quick=20, test=1)
    big_limit = ctx.ip_time_limit_s or ctx.pick(default=2.0, quick=1.0, test=0.3, full=60.0)
    from kvsched.bounds.hindsight import resolve_method

    method = resolve_method(ctx.ip_solver)
    small_n, small_limit = ctx.pick(default=200, quick=20, test=1), ctx.pick(default=10.0, quick=5.0, test=10.0)
    big, big_summary = exp.synthetic_study(model, instances=big_n, time_limit_s=big_limit, jobs=ctx.jobs,
                                           executor=ctx.executor, out=ctx.study_dir("study-paper-size"),
                                           progress=ctx.tracker("paper-size instances"), method=method)
    small, small_summary = exp.synthetic_study(model, instances=small_n, time_limit_s=small_limit, jobs=ctx.jobs,
                                               executor=ctx.executor, out=ctx.study_dir("study-small"),
                                               progress=ctx.tracker("small instances"), scale="small", method=method)
    name = f"mcsf-synthetic-{model}"
    _ratio_figure(ctx.out / f"{name}.png", big, small, model)
    rows = _synthetic_rows(model, big_summary, small_summary)
    proven = small_summary.get("proven", {})
    accept = 1.02 if model == 1 else 1.10
    mean = proven.get("mean")
    diffs = [(f"Paper-size instances: {big_summary.get('proven_optimal', 0)} of {big_n} proven optimal within "
             f"{big_limit:g} s; the true mean ratio lies in [{fmt(big_summary['all_instances']['mean_ratio_lower'])}, "
             f"{fmt(big_summary['all_instances']['mean_ratio_upper'])}], which contains the paper's "
             f"{exp.PAPER['synthetic'][model]['mean']} but cannot confirm it."),
             (f"Small instances: MC-SF's mean ratio to the proven optimum is {fmt(mean)} (kvsched's acceptance for "
             f"model {model}: ≤ {accept}), {'within' if mean is not None and mean <= accept else 'above'} it; "
             f"the worst is {fmt(proven.get('worst'))} against the paper's {exp.PAPER['synthetic'][model]['worst']}."),
             (f"MC-Benchmark's total latency is {fmt(1 / big_summary['mcsf_over_mc_benchmark_mean'], 2)}× MC-SF's "
             "on the paper-size instances.")]
    reasons = [("Solver: the paper solved its IPs with Gurobi; kvsched uses free solvers: HiGHS on the time-indexed "
               "IP, whose dual bound on paper-size instances (up to about 120k binaries) stays far below the "
               "optimum (0.7-0.9 of it after minutes), and OR-Tools CP-SAT, which finds schedules better than "
               "MC-SF's but proves even less. The best lower bound at this size is mostly the growth-waste "
               "closed form (kvsched.bounds.waste, about 0.80 of MC-SF's TEL on model 1). So only the interval "
               "[TEL/incumbent, TEL/LB] is proven (docs/bounds.md has the measured figures)."),
               ("Draws: kvsched's instances are its own seeded draws of the paper's generator (its synthetic study); the "
               "paper's draws are not published."),
               ("Small instances (M 10-16, s 1-3) are a different distribution with relatively larger, more "
               "heterogeneous prompts; MC-SF's gap to the optimum is larger there, consistent with an independent "
               "prototype's small-instance statistics (optimal on 34 of 60, worst 1.167; docs/mcsf.md).")]
    table = pd.concat([big, small], ignore_index=True)
    settings = {"arrival model": model, "paper-size instances": big_n, "paper-size IP time limit (s)": big_limit,
                "small instances": small_n, "small IP time limit (s)": small_limit,
                "small instance sizes": exp.SCALES["small"][model],
                "solver": {"highs": "HiGHS (time-indexed IP)", "cpsat": "OR-Tools CP-SAT (intervals)",
                           "best": "a CP-SAT probe, then HiGHS, then CP-SAT from the best schedule"}[method]
                + ", 1 thread",
                "base seed": 0}
    return Findings(table=table, table_note="one row per instance (column `scale`: paper or small): TELs, bounds, "
                                            "IP status, the proven ratio interval",
                    settings=settings, comparisons=rows,
                    figures=[(f"{name}.png", ("TEL(MC-SF)/TEL(OPT): proven ratios (small) and interval upper ends "
                                             "(paper size)"))],
                    differences=diffs, reasons=reasons, headline={"paper_size": big_summary, "small": small_summary})


def _ratio_figure(path, big: pd.DataFrame, small: pd.DataFrame, model: int) -> None:
    """Histograms: proven ratios on small instances, interval upper ends on paper-size ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    proven = small[small["proven_optimal"].astype(bool)]
    axes[0].hist(proven["mcsf_tel"] / proven["ip_upper"], bins=20, color="tab:blue")
    axes[0].set_title(f"small instances, proven optima ({len(proven)})", fontsize=9)
    axes[1].hist(big["ratio_upper"].dropna(), bins=20, color="tab:orange")
    axes[1].set_title("paper-size instances: upper end TEL/LB", fontsize=9)
    paper = exp.PAPER["synthetic"][model]
    for ax, xlabel in zip(axes, ("TEL(MC-SF) / TEL(OPT)", "TEL(MC-SF) / best lower bound (≥ TEL/OPT)")):
        ax.axvline(paper["mean"], ls="--", color="k", lw=1, label=f"paper mean {paper['mean']}")
        ax.axvline(paper["worst"], ls=":", color="k", lw=1, label=f"paper worst {paper['worst']}")
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"mcsf-synthetic-{model}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- trace study --------------------------------------------------------------------------------------
def _trace_sizes(ctx: Context) -> dict:
    return {"num_requests": ctx.pick(default=10_000, quick=2_000, test=300), "rates": (10.0, 50.0)}


def _slope_rows(frame: pd.DataFrame, rate: float) -> list[Comparison]:
    at = frame[(frame["rate"] == rate) & frame["feasible"].astype(bool)]
    mcsf = at.loc[at["scheduler"] == "mcsf", "cum_avg_latency_slope"]
    others = at.loc[at["scheduler"] != "mcsf", "cum_avg_latency_slope"]
    paper_mcsf, paper_others = PAPER_SLOPES[rate]
    k = float(mcsf.iloc[0]) if len(mcsf) else None
    span = f"{others.min():.3g} to {others.max():.3g}" if len(others) else "—"
    return [Comparison(f"growth of the cumulative mean latency at λ = {rate:g}, MC-SF (s per s)",
                       "—" if k is None else f"{k:.3g}",
                       f"≈ {paper_mcsf:.4g}", diff(k, paper_mcsf, kind="ratio")),
            Comparison(f"growth at λ = {rate:g}, the benchmarks (s per s)", span, f"≈ {paper_others:.4g}", "—")]


def _trace_rows(frame: pd.DataFrame, summary: dict) -> list[Comparison]:
    rows = []
    for rate in (10.0, 50.0):
        s = summary.get(f"rate_{rate:g}")
        if s is None:
            continue
        red = s["reduction_vs_mc_benchmark"]
        rows += [Comparison(f"MC-SF lowest mean latency at λ = {rate:g}", fmt(s["mcsf_lowest"]), "yes",
                            "same" if s["mcsf_lowest"] else "differs"),
                 Comparison(f"MC-SF's reduction of mean latency vs MC-Benchmark at λ = {rate:g}", pct(red),
                            "≈ 31 % (32.11 vs 46.47)", f"{100 * (red - 0.31):+.0f} pp" if red is not None else "—"),
                 *_slope_rows(frame, rate)]
        alpha = s["smallest_feasible_alpha"]
        paper_alpha = exp.PAPER["trace"]["smallest_feasible_alpha"][rate]
        rows.append(Comparison(f"smallest feasible protection α at λ = {rate:g}", fmt(alpha, 2), f"{paper_alpha}",
                               diff(alpha, paper_alpha)))
    lat = summary.get("rate_50", {}).get("mean_latency_s", {})
    for name, paper in PAPER_TRACE_MS.items():
        rows.append(Comparison(f"mean latency at λ = 50, {name}", f"{fmt(lat.get(name), 2)} s",
                               f"{paper} (labelled ms, unit unclear)", "—"))
    return rows


def _trace(ctx: Context) -> Findings:
    sizes = _trace_sizes(ctx)
    frame, summary = exp.trace_study(**sizes, jobs=ctx.jobs, executor=ctx.executor, out=ctx.study_dir(),
                                     progress=ctx.tracker("runs and α bisections"))
    groups = {f"λ = {rate:g}": dict(zip(part.loc[part["feasible"].astype(bool), "label"],
                                        part.loc[part["feasible"].astype(bool), "mean_latency_s"]))
              for rate, part in frame.groupby("rate")}
    bar_figure(ctx.out / "mcsf-trace.png", groups, ylabel="mean end-to-end latency (s)", log=True,
               title="mcsf-trace: LMSYS-like stand-in, M = 16,492")
    diffs = []
    for rate in sizes["rates"]:
        s = summary[f"rate_{rate:g}"]
        diffs.append(f"λ = {rate:g}: MC-SF is {'the lowest' if s['mcsf_lowest'] else 'not the lowest'} of all "
                     f"feasible configurations; its reduction against MC-Benchmark is {pct(s['reduction_vs_mc_benchmark'])}"
                     f" (paper ≈ 31 %); infeasible: {', '.join(s['infeasible']) or 'none'}; smallest feasible α "
                     f"{fmt(s['smallest_feasible_alpha'], 2)} (paper {exp.PAPER['trace']['smallest_feasible_alpha'][rate]}).")
    at50 = frame[(frame["rate"] == 50.0) & frame["scheduler"].isin(["mcsf", "mc-benchmark"])].set_index("scheduler")
    if len(at50) == 2:
        m, b = at50.loc["mcsf"], at50.loc["mc-benchmark"]
        diffs.append(f"At λ = 50, MC-SF's p99 latency is {fmt(m['p99_latency_s'], 0)} s against MC-Benchmark's "
                     f"{fmt(b['p99_latency_s'], 0)} s and its throughput {fmt(m['throughput_tokens_per_s'], 0)} against "
                     f"{fmt(b['throughput_tokens_per_s'], 0)} tokens/s (paper: MC-SF processes more tokens per second "
                     "in most intervals); shortest-first defers long requests to the end of the run.")
    reasons = [*TRACE_REASONS, ("The smallest feasible α follows the load: on kvsched's λ = 10 almost nothing queues, so "
               "protection greedy rarely overflows even with a small α.")]
    settings = {**sizes, "KV capacity (tokens)": exp.PAPER_CAPACITY_TOKENS, "cost model": exp.TRACE_COST_MODEL,
                "memory ledger": "papers' (block size 1, one lookahead slot)", "seed": 0,
                "baselines": [exp.label(n, o) for n, o in exp.BASELINES], "α search": "bisection to 0.01"}
    return Findings(table=frame, table_note="one row per (λ, scheduler configuration): latency, throughput, slope, "
                                            "feasibility", settings=settings, comparisons=_trace_rows(frame, summary),
                    figures=[("mcsf-trace.png", "mean latency per configuration at each rate (log scale)")],
                    differences=diffs, reasons=reasons, headline=summary)


# --- robustness study ---------------------------------------------------------------------------------
def _robustness(ctx: Context) -> Findings:
    n = ctx.pick(default=10_000, quick=2_000, test=300)
    frame, summary = exp.robustness_study(num_requests=n, jobs=ctx.jobs, executor=ctx.executor,
                                          out=ctx.study_dir(), progress=ctx.tracker("runs"))
    rows, groups, diffs = [], {}, []
    for key, s in summary.items():
        if not key.startswith("rate_"):
            continue
        rate, eps = key.removeprefix("rate_").split("_eps_")
        best = s["best_baseline_mean_latency_s"]
        rows.append(Comparison(f"λ = {rate}, ε = {eps}: MC-SF / best α/β baseline mean latency (s)",
                               f"{fmt(s['mcsf_mean_latency_s'], 2)} / {fmt(best, 2)}",
                               "MC-SF lower (no numbers published)",
                               "same" if s["mcsf_beats_every_feasible_baseline"] else "differs"))
        rows.append(Comparison(f"λ = {rate}, ε = {eps}: MC-SF evictions / recomputed tokens",
                               f"{s['mcsf_evictions']:,} / {s['mcsf_recomputed_tokens']:,}", "— (to be reported)", "—"))
        groups[f"λ={rate} ε={eps}"] = {"MC-SF": s["mcsf_mean_latency_s"],
                                        "MC-Benchmark": s["mc_benchmark_mean_latency_s"], "best α/β": best}
        if not s["mcsf_beats_every_feasible_baseline"]:
            diffs.append(f"λ = {rate}, ε = {eps}: MC-SF does not beat the best α/β baseline.")
    beaten = sum(r.difference == "same" for r in rows)
    cases = sum(r.quantity.endswith("mean latency (s)") for r in rows)
    diffs.insert(0, f"MC-SF beats every feasible α/β baseline in {beaten} of {cases} (λ, ε) cases (the paper: at every ε).")
    bar_figure(ctx.out / "mcsf-robustness.png", groups, ylabel="mean end-to-end latency (s)", log=True,
               title="mcsf-robustness: predictions off by ε, 10 % reserve")
    reasons = [*TRACE_REASONS, ("Noise model: õ = round(o(1 + εU)), U ~ U[-1, 1] (docs/conventions.md#mcsf-noise); "
               "the paper's own noise model is not stated exactly. The 10 % reserve absorbs ε = 0.2 entirely."),
               ("The paper gives no numeric table for this study, only the claim that MC-SF still beats the "
               "FCFS-type benchmarks at every ε, so only that claim is compared.")]
    settings = {"requests": n, "rates (req/s)": [50.0, 10.0], "ε": [0.2, 0.5, 0.8], "reserve": 0.1,
                "clearing": "LIFO, restart semantics", "KV capacity (tokens)": exp.PAPER_CAPACITY_TOKENS,
                "cost model": exp.TRACE_COST_MODEL, "seed": 0}
    return Findings(table=frame, table_note="one row per run (λ, ε or None for the baselines, configuration)",
                    settings=settings, comparisons=rows,
                    figures=[("mcsf-robustness.png", "mean latency per (λ, ε): MC-SF, MC-Benchmark, best α/β baseline")],
                    differences=diffs, reasons=reasons, headline=summary)
