"""Reproductions of the GBA/GSA studies (arXiv 2601.22996; kvsched's protocol, docs/gsa.md).

The paper publishes no numerical results (only its abstract was available: "numerical
experiments on real request traces demonstrate that our algorithms perform robustly"), so
these reports never put a kvsched number beside a measured paper number. They compare
kvsched's reconstructions with what is published (the constants 10.67 / 6.75 for GBA and
61.92 / 32 for GSA, used as sanity bounds), with the calibration numbers of a
reference prototype of the reconstructions (not the paper's) and with whole-trace facts, all
in docs/gsa.md.
"""

from __future__ import annotations

import pandas as pd

from kvsched.experiments import gsa as exp
from kvsched.experiments.reproduce import (
    Comparison,
    Context,
    Findings,
    Reproduction,
    bar_figure,
    fmt,
)

PAPER_ID = "2601.22996"
NO_NUMBERS = ("The paper publishes no numerical results: the abstract says only that experiments on real traces "
              "show the algorithms \"perform robustly while preserving these worst-case guarantees\". kvsched's GBA "
              "and GSA are reconstructions from the abstract's mechanisms (docs/gsa.md). The 'paper' column holds the "
              "published worst-case constants (sanity bounds, not measurements) or the calibration numbers "
              "of a reference prototype of the reconstructions (docs/gsa.md), each labelled.")
COMMON_REASONS = (
    ("There is no measured paper number to differ from. The published constants bound the worst case over all "
    "instances; on real traces any reasonable algorithm sits far below them, so 'far below' is the expected "
    "result, not a discrepancy."),
    ("kvsched's GBA and GSA are reconstructions (volume credit, reservation check, per-job geometric slices, "
    "base β* of each regime from the closed forms in docs/gsa.md); the paper's algorithms may differ in details "
    "the abstract does not fix."),
    ("The reference prototype's calibration numbers come from small synthetic instances (80 mixed jobs, M = 1000), not the "
    "Azure traces, so only their range is comparable."),
)
GBA_BOUND, GSA_BOUND = exp.PUBLISHED["gba"], exp.PUBLISHED["gsa"]


def entries() -> list[Reproduction]:
    return [
        Reproduction("gsa-sweep", PAPER_ID, "abstract (experiments on real traces); kvsched's M sweep",
                     "offline batches from the Azure 2023 traces: ratio to LB_count of GBA, GSA and 9 baselines "
                     "against the KV capacity M", _sweep, {"default": 441, "quick": 8, "full": 43000},
                     "reduced: n ∈ {100, 1000} (--full adds 5,000 and 10,000), 10 seeds, M ∈ {4k, 16k, 64k, 128k, "
                     "256k, 512k}",
                     "n ∈ {100, 1000, 5000, 10000}, 10 seeds, M ∈ {4k, 8k, 16k, 32k, 64k, 128k, 256k, 512k}: about "
                     "12 h on 2 cores (estimate; MC-SF 'scan' dominates at n = 10,000)"),
        Reproduction("gsa-ablation", PAPER_ID, "kvsched's ablations of the reconstructed mechanisms",
                     "stagger, credit bucket B, base β, V vs B, refund, kill vs resume on azure-conv batches",
                     _ablation, {"default": 119, "quick": 19},
                     "kvsched's ablations on azure-conv, n = 1,000, 5 seeds, M ∈ {16k, 128k}"),
        Reproduction("gsa-worst-case", PAPER_ID, "abstract (worst-case constants); kvsched's check against the exact optimum",
                     "tiny random instances against the exact optimum: worst ALG/OPT beside the published constants",
                     _worst_case, {"default": 5, "quick": 3},
                     "200 instances with n ≤ 6 and M ≤ 20, exact optimum from the IP (30 s limit)"),
        Reproduction("gsa-serving", PAPER_ID, "abstract (experiments on real traces); kvsched's serving metrics in seconds",
                     "GSA against vLLM-style FCFS and A_min in seconds and tokens/s on a Llama-2-7B/A100 cost model",
                     _serving, {"default": 9, "quick": 3},
                     "azure-conv, n = 1,000 at time 0, 3 seeds, M ∈ {16k, 64k}, `llama2-7b-a100`"),
    ]


def _range(values: pd.Series) -> str:
    return f"{values.min():.2f}–{values.max():.2f}" if len(values) else "—"


# --- the M sweep --------------------------------------------------------------------------------------
def _sweep_settings(ctx: Context) -> dict:
    return ctx.pick(
        default={"traces": exp.TRACES, "sizes": (100, 1000), "seeds": tuple(range(10)),
                 "capacities": (4096, 16384, 65536, 131072, 262144, 524288)},
        quick={"traces": exp.TRACES, "sizes": (100,), "seeds": (0, 1, 2), "capacities": (4096, 16384, 131072)},
        test={"traces": ("azure-code",), "sizes": (40,), "seeds": (0,), "capacities": (8192,)},
        full={"traces": exp.TRACES, "sizes": (100, 1000, 5000, 10000), "seeds": tuple(range(10)),
              "capacities": (4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288)})


def _bound_rows(frame: pd.DataFrame) -> list[Comparison]:
    """The largest per-instance ratio to LB_count (≥ ALG/OPT) per regime beside the constants."""
    rows = []
    for policy, bound in (("gba", GBA_BOUND), ("gba-batched", GBA_BOUND), ("gsa", GSA_BOUND),
                          ("gsa-batched", GSA_BOUND)):
        for reg in ("general", "large-memory"):
            part = frame[(frame["policy"] == policy) & (frame["regime"] == reg)]["ratio_to_lb_count"]
            worst = float(part.max()) if len(part) else None
            rows.append(Comparison(f"{policy}: largest ratio to LB_count, {reg} regime (an upper bound on ALG/OPT)",
                                   fmt(worst, 2), f"≤ {bound[reg]:.4g} (published constant)",
                                   "—" if worst is None else ("below" if worst <= bound[reg] else "ABOVE")))
    return rows


def _sweep_rows(frame: pd.DataFrame, summary: dict) -> list[Comparison]:
    means = frame.groupby(["trace", "n", "capacity", "policy"])["ratio_to_lb_count"].mean().reset_index()
    gba, gsa = means[means["policy"] == "gba"], means[means["policy"] == "gsa"]
    poc = pd.Series(list(summary["price_of_non_clairvoyance"].values()), dtype=float)
    rows = _bound_rows(frame) + [
        Comparison("GBA-V mean ratio to LB_count (range over cells)", _range(gba["ratio_to_lb_count"]),
                   "1.3–1.6 (prototype calibration, docs/gsa.md; not the paper)", "—"),
        Comparison("GSA-V mean ratio to LB_count (range over cells)", _range(gsa["ratio_to_lb_count"]),
                   "1.9–5 (prototype calibration, docs/gsa.md; not the paper)", "—"),
        Comparison("price of non-clairvoyance GSA/GBA (range over cells)", _range(poc),
                   "≈ 3 mixed, ≈ 1.5 homogeneous (calibration)", "—")]
    for trace, paper_drop, paper_eps in (("azure-conv", 1612 / 19366, 0.11), ("azure-code", 1257 / 8819, 0.06)):
        at = frame[(frame["trace"] == trace) & (frame["policy"] == "gba")]
        drop = at[at["capacity"] == 4096]
        frac = float((drop["num_dropped"] / drop["n"]).mean()) if len(drop) else None
        eps = at[at["capacity"] == 131072]["job_size_ratio"]
        rows += [Comparison(f"{trace}: share of jobs dropped (s + o > M) at M = 4,096", fmt(frac),
                            f"{paper_drop:.3f} (whole trace, docs/gsa.md)", "—"),
                 Comparison(f"{trace}: ε at M = 128k (largest over samples)", fmt(float(eps.max()) if len(eps) else None),
                            f"{paper_eps} (whole trace, docs/gsa.md)", "—")]
    return rows


def _sweep(ctx: Context) -> Findings:
    grid = _sweep_settings(ctx)
    frame, summary = exp.sweep(traces=grid["traces"], sizes=grid["sizes"], seeds=grid["seeds"],
                               capacities=grid["capacities"], jobs=ctx.jobs, executor=ctx.executor,
                               out=ctx.study_dir(), progress=ctx.tracker("cells"))
    exp.plot_sweep(frame, ctx.out / "gsa-sweep.png")
    means = frame.groupby(["trace", "n", "capacity", "policy"])["ratio_to_lb_count"].mean().unstack("policy")
    best = means.idxmin(axis=1)
    baseline_wins = means[["fcfs-restart", "a-min"]].min(axis=1) < means["gsa"]
    largest = max(grid["sizes"])
    table = means.reset_index()
    table = table[table["n"] == largest].drop(columns="n")
    diffs = ["Best policy per (trace, n, M) cell: " + ", ".join(f"{p} in {c}" for p, c in best.value_counts().items())
             + f" of {len(best)} cells.",
             (f"GSA-V's mean ratio to LB_count is {_range(means['gsa'])} against FCFS with restarts "
              f"{_range(means['fcfs-restart'])} and A_min {_range(means['a-min'])}; the better of those two simple "
              f"non-clairvoyant baselines beats GSA-V in {int(baseline_wins.sum())} of {len(means)} cells.")]
    reasons = [*COMMON_REASONS,
               ("LB_count is a lower bound, not the optimum: every ratio here over-states the distance to OPT by an "
                "unknown factor (gsa-worst-case measures ratios to the exact optimum on tiny instances)."),
               ("The trace facts in docs/gsa.md are over whole traces; a sample of at most 1,000 jobs rarely holds the "
                "trace's largest job, so its ε at a given M is smaller."),
               ("The theory model folds prefill into the first round, so GSA's re-prefills after kills (millions of "
                "prompt tokens per 1,000 jobs) cost nothing here; gsa-serving charges them.")]
    return Findings(table=frame, table_note="one row per (trace, n, M, seed, policy): total latency in rounds, "
                                            "bounds, ε, kills, memory use, ratio to LB_count",
                    settings={**{k: list(v) for k, v in grid.items()}, "policies": [p.label for p in exp.ALL_POLICIES],
                              "model": "offline batch, theory ledger, unit rounds"},
                    comparisons=_sweep_rows(frame, summary), figures=[("gsa-sweep.png", ("mean ratio to LB_count "
                                                                                         "against M"))],
                    differences=diffs, reasons=reasons, headline=summary, notes=[NO_NUMBERS],
                    extra_tables=[(f"Mean ratio to LB_count, n = {largest}", table)])


# --- ablations ----------------------------------------------------------------------------------------
ABLATIONS = (  # (quantity, labels compared, the reference: prototype calibration or closed-form constants, docs/gsa.md)
    ("GBA-V stagger on / off", ("gba", "gba stagger=off"),
     "1.555 / 1.377 (mixed #1), 1.435 / 1.337 (mixed #2), 1.337 / 2.044 (homogeneous); calibration"),
    ("GSA-V stagger on / off", ("gsa", "gsa stagger=off"),
     "5.021 / 4.259 (β = 2, no refund, mixed #1); 2.071 / 3.204 (homogeneous); calibration"),
    ("GBA-V credit bucket B = 1 / 2 / 4 / 16", ("gba", "gba B=2", "gba B=4", "gba B=16"),
     "1.56 / — / — / 1.44 (mixed #1), 1.34 / — / — / 1.74 (homogeneous); calibration"),
    ("GSA-V credit bucket B = 1 / 2 / 4 / 16", ("gsa", "gsa B=2", "gsa B=4", "gsa B=16"), "—"),
    ("GSA-V refund on / off", ("gsa", "gsa refund=off"),
     "4.49 / 4.733 (β = 2.30, mixed #1), 4.17 / 4.404 (mixed #2); calibration"),
    ("GSA-V β = 2 / 2.3 / 3 / 4", ("gsa base=2", "gsa base=2.3", "gsa base=3", "gsa base=4"),
     "worst-case constants 64.0 / 61.9 / 67.5 / 85.3 (general regime, closed forms): β* = 2.3028 minimises the bound"),
    ("GBA-B β = 2 / 2.3 / 3 / 4", ("gba-batched base=2", "gba-batched base=2.3", "gba-batched base=3",
                                   "gba-batched base=4"),
     "worst-case constants 16.0 / 13.4 / 11.25 / 10.67 (general regime, closed forms): β* = 4 minimises the bound"),
    ("V vs B: GBA-V / GBA-B", ("gba", "gba-batched"), "—"),
    ("V vs B: GSA-V / GSA-B", ("gsa", "gsa-batched"), "—"),
    ("GBA-V / GBA-sync (admissions only into an empty cache)", ("gba", "gba-sync"), "—"),
    ("GSA-V kill / resume (recompute, tokens kept)", ("gsa", "gsa resume"), "—"),
)


def _ablation_settings(ctx: Context) -> dict:
    return ctx.pick(default={"n": 1000, "seeds": tuple(range(5)), "capacities": (16384, 131072)},
                    quick={"n": 300, "seeds": (0, 1), "capacities": (16384, 131072)},
                    test={"n": 40, "seeds": (0,), "capacities": (8192,)})


def _ablation(ctx: Context) -> Findings:
    grid = _ablation_settings(ctx)
    frame, summary = exp.ablation(n=grid["n"], seeds=grid["seeds"], capacities=grid["capacities"], jobs=ctx.jobs,
                                  executor=ctx.executor, out=ctx.study_dir(), progress=ctx.tracker("cells"))
    means = frame.groupby(["capacity", "policy"])["ratio_to_lb_count"].mean()
    caps = list(grid["capacities"])
    rows, diffs = [], []
    for quantity, labels, spec in ABLATIONS:
        text = "; ".join(f"M = {m:,}: " + " / ".join(fmt(means.get((m, lbl)), 3) for lbl in labels) for m in caps)
        best = [min(labels, key=lambda lbl, m=m: means.get((m, lbl), float("inf"))) for m in caps]
        rows.append(Comparison(quantity + " (mean ratio to LB_count)", text, spec,
                               "best: " + ", ".join(f"{b}" for b in dict.fromkeys(best))))
    for m in caps:
        diffs.append(f"M = {m:,}: stagger {'helps' if means[(m, 'gba')] < means[(m, 'gba stagger=off')] else 'hurts'}"
                     f" GBA-V and {'helps' if means[(m, 'gsa')] < means[(m, 'gsa stagger=off')] else 'hurts'} GSA-V; "
                     f"refund {'helps' if means[(m, 'gsa')] < means[(m, 'gsa refund=off')] else 'hurts'}; resuming "
                     f"instead of killing changes GSA-V from {fmt(means[(m, 'gsa')], 2)} to "
                     f"{fmt(means[(m, 'gsa resume')], 2)}.")
    for family in ("gba", "gsa"):
        groups = {f"M = {m:,}": {lbl: means[(m, lbl)] for lbl in dict.fromkeys(frame["policy"])
                                if lbl.startswith(family) and (m, lbl) in means} for m in caps}
        bar_figure(ctx.out / f"gsa-ablation-{family}.png", groups, ylabel="mean ratio to LB_count",
                   title=f"gsa-ablation: {family.upper()} variants, azure-conv n = {grid['n']}")
    reasons = [*COMMON_REASONS, ("The calibration's strong staggering gain is on uniform decode-heavy jobs "
               "(300 × (0, 64)); on mixed traces it costs a little at B = 1, which is what the conversation "
               "trace is."), ("Each regime's β* minimises the worst-case constant, not the average case: on traces "
               "larger slices (fewer kills) can win for GSA.")]
    return Findings(table=frame, table_note="one row per (M, seed, variant)",
                    settings={"trace": "azure-conv", **{k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in grid.items()},
                              "variants": [p.label for p in exp.ablation_policies()]},
                    comparisons=rows, figures=[("gsa-ablation-gba.png", "GBA variants"),
                                               ("gsa-ablation-gsa.png", "GSA variants")],
                    differences=diffs, reasons=reasons, headline=summary, notes=[NO_NUMBERS])


# --- worst case against the exact optimum --------------------------------------------------------------
APPENDIX_EXHAUSTIVE = {"mcsf-break": 1.316, "gba": 1.556, "gsa": 2.767}  # n ≤ 4, M ≤ 14 (prototype calibration, docs/gsa.md)


def _worst_case(ctx: Context) -> Findings:
    size = ctx.pick(default={"instances": 200, "max_jobs": 6, "max_capacity": 20, "time_limit_s": 30.0},
                    quick={"instances": 40, "max_jobs": 6, "max_capacity": 20, "time_limit_s": 30.0},
                    test={"instances": 3, "max_jobs": 4, "max_capacity": 12, "time_limit_s": 30.0})
    frame, summary = exp.worst_case(**size, jobs=ctx.jobs, executor=ctx.executor, out=ctx.study_dir(),
                                    progress=ctx.tracker("instances"))
    worst = frame.groupby("policy")["ratio_to_optimum"].max()
    mean = frame.groupby("policy")["ratio_to_optimum"].mean()
    bounds = {"gba": GBA_BOUND["general"], "gba-batched": GBA_BOUND["general"], "gsa": GSA_BOUND["general"],
              "gsa-batched": GSA_BOUND["general"]}
    rows = []
    for policy in worst.index:
        paper = [f"≤ {bounds[policy]:.4g} (published constant)"] if policy in bounds else []
        if policy in APPENDIX_EXHAUSTIVE:
            paper.append(f"{APPENDIX_EXHAUSTIVE[policy]} (calibration, n ≤ 4, M ≤ 14)")
        verdict = ("below" if worst[policy] <= bounds[policy] else "ABOVE") if policy in bounds else "—"
        rows.append(Comparison(f"worst ALG/OPT, {policy}", fmt(float(worst[policy]), 4), "; ".join(paper) or "—",
                               verdict))
    rows.append(Comparison("optima proven", f"{int(frame.drop_duplicates('instance')['optimum_proven'].sum())} of "
                           f"{size['instances']}", "—", "—"))
    groups = {p: {"worst": float(worst[p]), "mean": float(mean[p])} for p in worst.index}
    bar_figure(ctx.out / "gsa-worst-case.png", groups, ylabel="ALG / OPT", log=True,
               title="gsa-worst-case: tiny instances against the exact optimum",
               lines={"GBA constant 10.67": GBA_BOUND["general"], "GSA constant 61.92": GSA_BOUND["general"]})
    diffs = [(f"Every reconstruction stays {'below' if summary['within_sanity_bounds'] else 'ABOVE'} the published "
             f"constants: worst GBA-V {fmt(float(worst.get('gba', float('nan'))), 3)} (≤ 10.67), worst GSA-V "
             f"{fmt(float(worst.get('gsa', float('nan'))), 3)} (≤ 61.92)."),
             ("The worst ratios are close to the calibration's exhaustive row (GBA 1.556, GSA 2.7-2.8, MC-SF 1.316 "
             "on n ≤ 4, M ≤ 14); kvsched's instances are slightly larger (n ≤ 6, M ≤ 20).")]
    return Findings(table=frame, table_note="one row per (instance, policy): the instance, its exact optimum, the "
                                            "policy's total latency and ratio",
                    settings={**size, "seed": 0, "GSA base": "(1 + √13)/2 ≈ 2.3028 (general β*)",
                              "GBA-B base": 4.0, "optimum": "time-indexed IP, HiGHS"},
                    comparisons=rows, figures=[("gsa-worst-case.png", ("worst and mean ALG/OPT per policy, with the "
                                                                      "published constants"))],
                    differences=diffs, reasons=list(COMMON_REASONS), headline=summary, notes=[NO_NUMBERS])


# --- serving: seconds and throughput -------------------------------------------------------------------
def _serving(ctx: Context) -> Findings:
    grid = ctx.pick(default={"n": 1000, "seeds": (0, 1, 2), "capacities": (16384, 65536)},
                    quick={"n": 300, "seeds": (0,), "capacities": (16384, 65536)},
                    test={"n": 30, "seeds": (0,), "capacities": (8192,)})
    frame, summary = exp.serving(n=grid["n"], seeds=grid["seeds"], capacities=grid["capacities"], jobs=ctx.jobs,
                                 executor=ctx.executor, out=ctx.study_dir(), progress=ctx.tracker("cells"))
    cols = ["mean_latency", "makespan", "throughput_tokens", "num_kills", "num_recomputed_prompt_tokens",
            "num_preemptions"]
    means = frame.groupby(["capacity", "policy"])[cols].mean()
    rows, diffs = [], []
    for m in grid["capacities"]:
        at = means.loc[m]
        g, f = at.loc["gsa"], at.loc["fcfs-restart"]
        rows += [Comparison(f"M = {m:,}: GSA-V / FCFS-restart mean latency (s)",
                            f"{fmt(g['mean_latency'], 1)} / {fmt(f['mean_latency'], 1)} (×{g['mean_latency'] / f['mean_latency']:.2f})",
                            "— (no numbers published)", "—"),
                 Comparison(f"M = {m:,}: GSA-V / FCFS-restart throughput (tokens/s)",
                            f"{fmt(g['throughput_tokens'], 0)} / {fmt(f['throughput_tokens'], 0)}", "—", "—"),
                 Comparison(f"M = {m:,}: GSA-V kills / prompt tokens re-prefilled",
                            f"{fmt(g['num_kills'], 0)} / {fmt(g['num_recomputed_prompt_tokens'], 0)}", "—", "—"),
                 Comparison(f"M = {m:,}: GBA-V (clairvoyant) / FCFS-restart mean latency",
                            f"×{at.loc['gba (clairvoyant)', 'mean_latency'] / f['mean_latency']:.2f}", "—", "—")]
        diffs.append(f"M = {m:,}: GSA-V's mean latency is {g['mean_latency'] / f['mean_latency']:.1f}× FCFS-restart's "
                     f"and its throughput {g['throughput_tokens'] / f['throughput_tokens']:.2f}× (every kill re-prefills "
                     "the prompt, which the theory model does not charge).")
    groups = {f"M = {m:,}": {p: float(means.loc[(m, p), "mean_latency"]) for p in means.loc[m].index}
              for m in grid["capacities"]}
    bar_figure(ctx.out / "gsa-serving.png", groups, ylabel="mean latency (s)",
               title="gsa-serving: azure-conv batch on llama2-7b-a100")
    reasons = [*COMMON_REASONS, ("This study measures kvsched's reconstruction on one trace and one cost model; "
               "it says nothing about the paper's algorithm, whose experiments are not published.")]
    return Findings(table=frame, table_note="one row per (M, seed, policy), latency and makespan in seconds",
                    settings={"trace": "azure-conv", "n": grid["n"], "seeds": list(grid["seeds"]),
                              "capacities": list(grid["capacities"]), "cost model": "llama2-7b-a100", "block size": 1},
                    comparisons=rows, figures=[("gsa-serving.png", "mean latency per policy")],
                    differences=diffs, reasons=reasons, headline=summary, notes=[NO_NUMBERS])
