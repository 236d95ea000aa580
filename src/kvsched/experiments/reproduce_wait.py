"""Reproductions of the WAIT paper's experiments E1-E7 (arXiv 2504.11320 v4, §6 and its appendix).

Each runs `experiments.wait` on kvsched's Llama-2-7B / A100 cost model and puts λ*, mean
latencies and gains beside the paper's v4 numbers and the authors' Llama-2 rerun notes
([notes]: the authors' May 2026 rerun notes in their repository Luoxiaogan/vidur_or). The
reasons for the differences come from kvsched's defaults where the paper is open
(docs/conventions.md) and docs/wait.md.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from kvsched.experiments import wait as exp
from kvsched.experiments.reproduce import (
    Comparison,
    Context,
    Findings,
    Reproduction,
    bar_figure,
    diff,
    fmt,
    fmt_rate,
    pct,
)

PAPER_ID = "2504.11320"
MAIN = ("vidur-vllm", "sarathi", "wait-cp (tuned)")
NAMES = {"vidur-vllm": "vLLM (Vidur)", "sarathi": "Sarathi", "wait-cp (tuned)": "WAIT-CP, tuned per λ"}

# Why kvsched's numbers differ from the paper's, shared by E1-E5 (docs/conventions.md, docs/wait.md).
COMMON_REASONS = (
    ("Simulator: the paper ran Vidur's random-forest iteration-time predictor; kvsched uses its own "
    "`llama2-7b-a100` cost model, derived from Vidur's Llama-2-7B/A100 operator profiles plus a roofline "
    "attention term. Absolute seconds therefore differ; kvsched compares the λ* ordering, the "
    "sign of the gain and whether the gain grows near overload, counting λ* within ±2 req/s as a match."),
    ("Model: several of the paper's figures were produced with Meta-Llama-3-8B (per the authors' notes); kvsched "
    "simulates Llama-2-7B (C = 137,000 tokens), for which boundaries about 1-2 req/s later are expected "
    "(docs/conventions.md#wait-model)."),
    ("Baselines: Vidur's vLLM (cap 128, 4,096 tokens, 1 % watermark) and Sarathi (chunk 512, cap 256) as "
    "kvsched's defaults (docs/conventions.md#wait-caps); v4 does not state the caps, and the paper's vLLM is far more unstable near λ* (E5: "
    "18-80 s) than a vLLM that rarely has to restart requests."),
    ("WAIT-CP's wait gate (the authors' `GeneralNestedChunked`) freezes a segment until enough requests "
    "arrive; at light load that costs up to about 0.6 s per request (docs/wait.md), while kvsched's "
    "profile-derived cost model makes Sarathi's 512-token mixed chunks cheap. That is why tuned WAIT-CP can be "
    "slower than Sarathi at light load, where the paper has it 2-6 % faster."),
)


def entries() -> list[Reproduction]:
    return [
        Reproduction("wait-e1", PAPER_ID, "§6, single type p512d20 (E1)",
                     "p512d20, one request type: mean latency and λ* of vLLM, Sarathi and WAIT-CP against the rate",
                     _e1, {"default": 207, "quick": 5},
                     "the paper's settings: 10 replications of 5,000 requests, λ = 12..26 (paper 12..24, [notes] "
                     "to 26); the tl grid {21, 25, 30, 40, 50} (paper {20..200}, Llama-2 rerun {20..50})"),
        Reproduction("wait-e2", PAPER_ID, "§6, two types with Nested WAIT (E2)",
                     "0.7·p512d20 + 0.3·p512d50 with Nested WAIT-CP: mean latency and λ* against the rate",
                     _e2, {"default": 485, "quick": 6},
                     "the paper's settings: 10 replications of 5,000 requests, λ = 12..26; tl {25, 30, 40, 50} "
                     "× cs {128, 256} plus the paper's best (tl 30, cs 128) with η = 0"),
        Reproduction("wait-e3", PAPER_ID, "§6, long decode p512d1000 and Table 1 (E3)",
                     "p512d1000 (long decode): latency against the rate, the eviction table at λ = 4, and the "
                     "[draft]'s 60 % KV pool", _e3, {"default": 867, "quick": 22},
                     "10 replications of 2,000 requests per rate (v4 gives no request count), λ = 0.5..5.0, "
                     "uniform WAIT-CP segments of 200 stages, tl {60, 90}"),
        Reproduction("wait-e4", PAPER_ID, "§6, real data lmsys-chat-1m (E4)",
                     "lmsys-like chat lengths (50 length bins): middle-50 % latency against the rate, beside the "
                     "authors' [notes] table", _e4, {"default": 943, "quick": 5, "full": 16000},
                     "reduced: 5 replications (paper 10) of 5,000 requests, λ = 10..150, tl {100, 200, 300} × "
                     "L {1, 3, 5} with chunk 128 (the authors' grid has 98 settings)",
                     "the authors' grid (tl 40..300 step 20 × L {1, 2, 3, 4, 5, 10, 20}, chunk 128) with 10 "
                     "replications: about 4.4 h on 2 cores (estimate)"),
        Reproduction("wait-e5", PAPER_ID, "appendix, repeated runs near λ* (E5)",
                     "20 repetitions at λ = 22 and 23, one and two types: mean ± sd latency",
                     _e5, {"default": 66, "quick": 7},
                     "the paper's settings: 20 repetitions of 5,000 requests; WAIT-CP at the fixed settings "
                     "tl 25 cs 256 (one type) and tl 30 cs 128 (two types)"),
        Reproduction("wait-e6", PAPER_ID, "§6, longer horizons (E6, optional)",
                     "longer horizons: two types at λ = 22 and 23 with 2,000 to 20,000 requests, Nested WAIT-CP "
                     "against Sarathi", _e6, {"default": 102, "quick": 4},
                     "N ∈ {2,000, 5,000, 10,000, 20,000}, 3 replications (v4 states none), Nested WAIT-CP tuned per "
                     "(λ, N) over wait-e2's grid"),
        Reproduction("wait-e7", PAPER_ID, "appendix, waiting ablation (E7, optional)",
                     "waiting ablation on p512d20: WAIT-CP against 'WAIT-no-wait' (same cap, no wait gate)",
                     _e7, {"default": 182, "quick": 6},
                     "E1's settings: 10 replications of 5,000 requests, λ = 12..26, tl {21, 25, 30} cs 256 with the "
                     "wait gate on and off"),
    ]


# --- running a sweep ------------------------------------------------------------------------------
def _sweep(ctx: Context, key: str, *, rates: dict, reps: dict, requests: dict, full_policies=None,
           metric: str = "mean_latency_s") -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """(runs, per-rate means with the tuned rows, the study's summary, settings) of E1-E4."""
    quick = ctx.scale in ("quick", "test")
    spec = exp.experiments(quick)[key]
    if ctx.scale == "full" and full_policies is not None:
        spec = replace(spec, policies=full_policies)
    grid = tuple(ctx.pick(**rates)) if ctx.pick(**rates) is not None else spec.rates
    n, r = ctx.pick(**requests), ctx.pick(**reps)
    frame = exp.sweep(spec.name, spec.workload, grid, spec.policies, replications=r, num_requests=n,
                      jobs=ctx.jobs, executor=ctx.executor, out=ctx.study_dir(), progress=ctx.tracker(spec.name))
    summary = exp.summarize(frame, spec.name, spec.fixed_label)
    settings = {"workload": spec.workload, "arrival rates (req/s)": list(grid), "replications": r,
                "requests per run": n, "KV capacity (tokens)": exp.CAPACITY_TOKENS, "block size": 16,
                "cost model": exp.COST_MODEL, "policies": [p.label for p in spec.policies],
                "fixed WAIT-CP setting": spec.fixed_label, "tuning metric": metric,
                "λ* rule": f"median stability ratio < {exp.STABLE_RATIO}, completion rate within "
                           f"{exp.COMPLETION_TOLERANCE:.0%} of λ, mean latency within {exp.SLO_FACTOR:g}× the best "
                           "latency at the lowest rate"}
    return frame, exp.with_tuned(frame, metric), summary, settings


def _latency_table(means: pd.DataFrame, labels, value: str = "mean_latency_s") -> pd.DataFrame:
    wide = means.pivot_table(index="rate", columns="label", values=value)
    cols = [c for c in labels if c in wide.columns]
    table = wide[cols].reset_index().rename(columns={"rate": "λ (req/s)"})
    if "sarathi" in wide.columns and "wait-cp (tuned)" in wide.columns:
        gain = ((wide["sarathi"] - wide["wait-cp (tuned)"]) / wide["sarathi"]).to_numpy()
        table["gain of tuned WAIT-CP vs Sarathi"] = [pct(g) for g in gain]
    return table


def _at(means: pd.DataFrame, label: str, rate: float, value: str = "mean_latency_s") -> float | None:
    row = means[(means["label"] == label) & (means["rate"] == rate)]
    return float(row[value].iloc[0]) if len(row) else None


def _gain(means: pd.DataFrame, rate: float, value: str = "mean_latency_s") -> float | None:
    s, w = _at(means, "sarathi", rate, value), _at(means, "wait-cp (tuned)", rate, value)
    return None if s is None or w is None else (s - w) / s


def _star_rows(star: dict, paper: dict) -> tuple[list[Comparison], list[str]]:
    """λ* per policy beside the paper's, the ordering, and the ±2 req/s match rule."""
    rows, notes = [], []
    for label in MAIN:
        k, p = star.get(label), paper.get(label)
        rows.append(Comparison(f"λ* {NAMES[label]} (req/s)", fmt(k), f"≈ {p}", diff(k, p, digits=1)))
        if k is None:
            notes.append(f"{NAMES[label]} has no λ* in the swept range (unstable at the lowest rate).")
        elif p is not None:
            verdict = "within" if abs(k - p) <= 2 else "outside"
            notes.append(f"λ* of {NAMES[label]}: {fmt(k)} against ≈ {p} ({diff(k, p, digits=1)} req/s, {verdict} "
                         "kvsched's ±2 req/s match rule).")
    ks = [star.get(label) for label in MAIN]
    order = " ≤ ".join(fmt(v) for v in ks)
    same = all(v is not None for v in ks) and ks[0] <= ks[1] <= ks[2]
    tie = same and (ks[0] == ks[1] or ks[1] == ks[2])
    rows.append(Comparison("λ* ordering vLLM ≤ Sarathi ≤ WAIT-CP", order,
                           " < ".join(str(paper[label]) for label in MAIN),
                           ("same order, with a tie" if tie else "same order") if same else "differs"))
    notes.append(f"The λ* ordering is {'the same as' if same else 'not'} the paper's ({order}).")
    return rows, notes


def _lowest_everywhere(means: pd.DataFrame) -> tuple[str, list[float]]:
    """At which rates tuned WAIT-CP has the lowest mean latency of the three main policies."""
    wide = means.pivot_table(index="rate", columns="label", values="mean_latency_s")
    cols = [c for c in MAIN if c in wide.columns]
    wins = [float(r) for r, row in wide[cols].iterrows() if row.idxmin() == "wait-cp (tuned)"]
    return f"{len(wins)} of {len(wide)} rates" + (f" ({', '.join(fmt(w, 0) for w in wins)})" if wins else ""), wins


def _pp(kvsched: float | None, paper: float) -> str:
    """Difference of two fractions in percentage points."""
    return "—" if kvsched is None else f"{100 * (kvsched - paper):+.0f} pp"


def _latency_rows(means: pd.DataFrame, notes: dict, source: str) -> list[Comparison]:
    """Mean latency of each policy at the rates the paper's notes give, kvsched / paper."""
    rows = []
    for rate, by_label in notes.items():
        for label, paper in by_label.items():
            k = _at(means, label, float(rate))
            rows.append(Comparison(f"mean latency at λ = {rate}, {NAMES[label]} (s)", fmt(k), f"{paper} {source}",
                                   diff(k, paper, kind="ratio")))
    return rows


def _gain_rows(means: pd.DataFrame, paper: dict) -> tuple[list[Comparison], dict]:
    """Gain of tuned WAIT-CP over Sarathi at the rates the paper quotes: {rate: (number, text)}."""
    rows, gains = [], {}
    for rate, (number, text) in paper.items():
        gains[rate] = _gain(means, float(rate))
        rows.append(Comparison(f"gain of tuned WAIT-CP over Sarathi at λ = {rate}", pct(gains[rate]), text,
                               _pp(gains[rate], number)))
    return rows, gains


def _sweep_findings(ctx: Context, key: str, frame, means, summary, settings, rows, diffs, reasons) -> Findings:
    """The parts E1 and E2 share: λ*, the latency table, the figure, the tuned settings."""
    name = f"wait-{key}"
    labels = ["vidur-vllm", "sarathi", "wait-cp (tuned)", settings["fixed WAIT-CP setting"], "wait-cp (auto)",
              "wait", "nested-wait"]
    exp.plot_latency(means, ctx.out / f"{name}.png", f"{name}: {settings['workload']}", labels)
    text, _ = _lowest_everywhere(means)
    diffs.append(f"Tuned WAIT-CP has the lowest mean latency of the three at {text}; the paper has it lowest "
                 "at every rate.")
    diffs.append(f"Repair evictions of the WAIT family: {summary['repair_evictions_wait_family']} (the paper: "
                 "WAIT never evicts); restarts of the baselines: vLLM "
                 f"{int(frame.loc[frame['label'] == 'vidur-vllm', 'num_restarts'].sum()):,}, Sarathi "
                 f"{int(frame.loc[frame['label'] == 'sarathi', 'num_restarts'].sum()):,} over all runs.")
    tuned = summary.get("tuned_setting", {})
    if tuned:
        diffs.append("Tuned WAIT-CP setting per λ: " + ", ".join(f"{float(r):g}: {s.removeprefix('wait-cp ')}"
                                                                for r, s in tuned.items()) + ".")
    refused = summary.get("automatic_design_refused", [])
    if refused:
        diffs.append("The automatic designs refuse as overloaded: " + ", ".join(f"{lbl} at {r:g}" for lbl, r in
                                                                               refused) + ".")
    return Findings(table=means, table_note="mean over replications per (policy, λ), plus the tuned rows "
                                             "(`tuned_from` names the grid member)",
                    settings=settings, comparisons=rows, figures=[(f"{name}.png", "mean latency against λ")],
                    differences=diffs, reasons=[*COMMON_REASONS, *reasons],
                    headline={"lambda_star": summary["lambda_star"], "gain_vs_sarathi": summary.get("gain_vs_sarathi"),
                              "latency_slo_s": summary["latency_slo_s"]},
                    extra_tables=[("Mean latency (s) per λ, averaged over replications",
                                   _latency_table(means, labels))])


QUICK_RATES = (12.0, 16.0, 20.0, 22.0, 23.0, 24.0, 25.0, 26.0)
E1_NOTES = {24: {"sarathi": 4.23, "wait-cp (tuned)": 1.85}, 25: {"sarathi": 11.09, "wait-cp (tuned)": 2.99},
            26: {"sarathi": 18.63, "wait-cp (tuned)": 4.69}}
E2_NOTES = {22: {"vidur-vllm": 56.701, "sarathi": 4.059, "wait-cp (tuned)": 2.359},
            23: {"vidur-vllm": 80.251, "sarathi": 8.408, "wait-cp (tuned)": 5.664}}


def _e1(ctx: Context) -> Findings:
    frame, means, summary, settings = _sweep(
        ctx, "e1", rates={"default": None, "quick": QUICK_RATES, "test": (20.0, 26.0)},
        reps={"default": 10, "quick": 2, "test": 1}, requests={"default": 5000, "quick": 1000, "test": 200})
    rows, diffs = _star_rows(summary["lambda_star"], exp.PAPER["E1"]["lambda_star"])
    gain_rows, gains = _gain_rows(means, {
        12: (0.02, "≈ +2 % (v4); +3.5 to +4.2 % (Llama-2 rerun)"),
        23: (0.70, "> +70 % (v4, Llama-3-8B data); +3.5 to +4.2 % (Llama-2 rerun)"),
        24: (0.349, "+34.9 % (Llama-2 rerun, 5,000 requests); +56 % (10,000 requests)")})
    rows += gain_rows + _latency_rows(means, E1_NOTES, "[notes, Llama-2, 10,000 requests]")
    text, _ = _lowest_everywhere(means)
    rows.append(Comparison("rates where tuned WAIT-CP has the lowest mean latency", text, "every λ in 12..24 (v4)"))
    if gains.get(12) is not None and gains.get(24) is not None:
        grows = gains[24] > gains[12]
        diffs.append(f"The gain of tuned WAIT-CP over Sarathi is {pct(gains[12])} at λ = 12 (paper ≈ +2 %) and "
                     f"{pct(gains[24])} at λ = 24 (Llama-2 rerun +34.9 %): it {'grows' if grows else 'does not grow'}"
                     " near overload, as in the paper; its sign at light load is "
                     f"{'the same' if gains[12] > 0 else 'the opposite'}.")
    reasons = [("The '> 70 % at λ = 23' of v4 comes from the Llama-3-8B configuration (memory margin 0.1, Sarathi "
               "cap 512, tl 21, wait gate off, 10k requests, middle-50 % window; the authors' rerun notes); the Llama-2 rerun, "
               "the closest setting to kvsched's, gives +3.5 to +4.2 % below λ = 24."),
               ("The [notes] latencies at λ = 24-26 used 10,000 requests with seed 42 and per-rate tl up to 240 with "
               "chunk 512; kvsched's runs have 5,000 requests and tl ≤ 50 with chunk 256."),
               ("v4's λ* are read off figures (≈); kvsched's λ* follow the project's rule (settings above), so "
               "a difference of 1 req/s is within the reading error.")]
    return _sweep_findings(ctx, "e1", frame, means, summary, settings, rows, diffs, reasons)


def _e2(ctx: Context) -> Findings:
    frame, means, summary, settings = _sweep(
        ctx, "e2", rates={"default": None, "quick": QUICK_RATES, "test": (18.0, 26.0)},
        reps={"default": 10, "quick": 2, "test": 1}, requests={"default": 5000, "quick": 1000, "test": 200})
    rows, diffs = _star_rows(summary["lambda_star"], exp.PAPER["E2"]["lambda_star"])
    gain_rows, gains = _gain_rows(means, {12: (0.06, "≈ +6 % at low load (v4)"),
                                          22: (0.40, "> +40 % near the boundary (v4)"),
                                          23: (0.40, "> +40 % near the boundary (v4)")})
    rows += gain_rows + _latency_rows(means, E2_NOTES, "[notes, Llama-3-era figure data]")
    best, eta0 = "wait-cp tl=30 cs=128", "wait-cp tl=30 cs=128 eta=0"
    for rate in (21.0, 22.0):
        a, b = _at(means, best, rate), _at(means, eta0, rate)
        rows.append(Comparison(f"the paper's best setting (tl 30, cs 128) at λ = {rate:g}: η = 0.05 / η = 0 (s)",
                               f"{fmt(a)} / {fmt(b)}", "η = 0 in the paper (docs/conventions.md#wait-eta)", diff(a, b, kind="ratio")))
    if gains.get(12) is not None and gains.get(23) is not None:
        diffs.append(f"The gain over Sarathi goes from {pct(gains[12])} at λ = 12 to {pct(gains.get(22))} at 22 and "
                     f"{pct(gains[23])} at 23 (paper: +6 % rising to > +40 %).")
    reasons = [("The two-type figure data (and the [notes] rows at λ = 22, 23) are from the Llama-3-8B era, with "
               "vLLM far more unstable than kvsched's (56.7 s against a few seconds)."),
               ("Nested WAIT is simulated as WAIT-CP with two segments (decode 1-20 and 21-50), as the authors did; "
               "kvsched uses η = 0.05 (docs/conventions.md#wait-eta) and also runs the paper's η = 0, which changes latency by < 1 %."),
               ("The theoretical Nested WAIT (prefix rule, full-prompt prefills) is shown in the figure; its "
               "automatic design pays at low load and refuses the highest rates.")]
    return _sweep_findings(ctx, "e2", frame, means, summary, settings, rows, diffs, reasons)


def _separation_rate(means: pd.DataFrame, tolerance: float = 0.10) -> float | None:
    """The largest λ up to which the three main policies stay within `tolerance` of each other."""
    wide = means.pivot_table(index="rate", columns="label", values="mean_latency_s")
    cols = [c for c in MAIN if c in wide.columns]
    last = None
    for rate, row in wide[cols].sort_index().iterrows():
        if row.max() > (1 + tolerance) * row.min():
            break
        last = float(rate)
    return last


def _slower_than_both(means: pd.DataFrame) -> str:
    """"k of n": at how many rates tuned WAIT-CP is slower than vLLM and Sarathi."""
    wide = means.pivot_table(index="rate", columns="label", values="mean_latency_s")[list(MAIN)].dropna()
    slower = int((wide["wait-cp (tuned)"] > wide[["vidur-vllm", "sarathi"]].max(axis=1)).sum())
    return f"{slower} of {len(wide)}"


def _e3_kv60(ctx: Context, reps: int, requests: int) -> pd.DataFrame:
    """The [draft]'s eviction table: λ = 4 with the KV pool shrunk to 60 % (tl scaled to fit)."""
    grid = tuple(exp.Policy(f"wait-cp tl={tl} seg=200", "wait-cp", {"tl": tl, "chunk_size": 256, "segment_size": 200},
                            group="wait-cp") for tl in (36, 54))
    frame = exp.sweep("E3-kv60", "p512d1000", (4.0,), (*exp.BASELINES, *grid), replications=reps,
                      num_requests=requests, capacity_tokens=int(0.6 * exp.CAPACITY_TOKENS), jobs=ctx.jobs,
                      executor=ctx.executor, out=ctx.study_dir(), progress=ctx.tracker("E3, 60 % KV"))
    return exp.with_tuned(frame)


def _e3_rows(means: pd.DataFrame, kv60: pd.DataFrame) -> list[Comparison]:
    """E3's latencies at λ = 4.5, Table 1 at λ = 4, the [draft]'s 60 % pool and where the curves separate."""
    paper = exp.PAPER["E3"]
    rows = [Comparison(f"mean latency at λ = 4.5, {NAMES[lbl]} (s)", fmt(_at(means, lbl, 4.5)), f"{v}",
                       diff(_at(means, lbl, 4.5), v, kind="ratio")) for lbl, v in paper["latency_at_4.5_s"].items()]
    for lbl, vals in paper["table1_at_4.0"].items():
        k_lat, k_rr = _at(means, lbl, 4.0), _at(means, lbl, 4.0, "restart_rate")
        rows += [Comparison(f"Table 1 (λ = 4): mean latency, {NAMES[lbl]} (s)", fmt(k_lat), f"{vals['latency_s']}",
                            diff(k_lat, vals["latency_s"], kind="ratio")),
                 Comparison(f"Table 1 (λ = 4): restart rate, {NAMES[lbl]}", pct(k_rr, signed=False),
                            pct(vals["restart_rate"], 2, signed=False),
                            _pp(k_rr, vals["restart_rate"]))]
    for lbl, vals in paper["draft_60pct_kv_at_4.0"].items():
        k_ev, k_lat = _at(kv60, lbl, 4.0, "num_restarts"), _at(kv60, lbl, 4.0)
        rows += [Comparison(f"60 % KV, λ = 4: evictions per run, {NAMES[lbl]}", fmt(k_ev, 0),
                            f"{vals['evictions']:,} [draft, 10,000 requests]", "—"),
                 Comparison(f"60 % KV, λ = 4: mean latency, {NAMES[lbl]} (s)", fmt(k_lat), f"{vals['latency_s']} [draft]",
                            diff(k_lat, vals["latency_s"], kind="ratio"))]
    sep = _separation_rate(means)
    low = float(means["rate"].min())
    rows.append(Comparison("largest λ where the three are within 10 %", fmt_rate(sep) if sep is not None else
                           f"none (apart already at λ = {low:g})", "≈ 2.5 (they separate from ≈ 3)",
                           diff(sep, 2.5, digits=1)))
    return rows


def _e3(ctx: Context) -> Findings:
    reps, requests = {"default": 10, "quick": 2, "test": 1}, {"default": 2000, "quick": 500, "test": 60}
    frame, means, summary, settings = _sweep(
        ctx, "e3", rates={"default": None, "quick": (0.5, 1.5, 2.5, 3.0, 4.0, 4.5), "test": (4.0, 4.5)},
        reps=reps, requests=requests)
    kv60 = _e3_kv60(ctx, ctx.pick(**reps), ctx.pick(**requests))
    rows = _e3_rows(means, kv60)
    sep = _separation_rate(means)
    star = summary["lambda_star"]
    diffs = [(f"λ* (project rule): vLLM {fmt_rate(star.get('vidur-vllm'))}, Sarathi {fmt_rate(star.get('sarathi'))}, "
              f"tuned WAIT-CP {fmt_rate(star.get('wait-cp (tuned)'))} req/s; the paper's curves stay finite to "
              "λ = 4.5."),
             (f"Tuned WAIT-CP restarts {pct(_at(means, 'wait-cp (tuned)', 4.0, 'restart_rate'), signed=False)} of "
              f"requests at λ = 4 against Sarathi's {pct(_at(means, 'sarathi', 4.0, 'restart_rate'), signed=False)} "
              "(paper 0 % against 2.88 %)."),
             (f"At λ = 4.5 kvsched's latencies are {_at(means, 'sarathi', 4.5) / 41.7:.1f}× (Sarathi) to "
              f"{_at(means, 'wait-cp (tuned)', 4.5) / 32.3:.1f}× (WAIT-CP) the paper's.") if _at(means, "sarathi", 4.5)
             and _at(means, "wait-cp (tuned)", 4.5) else "λ = 4.5 was not run at this scale.",
             f"Tuned WAIT-CP is slower than both baselines at {_slower_than_both(means)} rates."]
    reasons = [("On kvsched's cost model p512d1000 saturates near λ ≈ 1.5-2 (a 1,000-token decode at Llama-2-7B "
               "speed), so every policy is deep in overload from λ = 2 and latencies grow with the run; the "
               "paper's 26-54 s at λ = 4-4.5 describe a system that is not. The paper's "
               "own Table 2 constants predict instability above λ ≈ 2.5 too."),
               ("WAIT-CP's tl is capped by memory (90 requests of up to 1,512 tokens fill C), so it never evicts but "
               "admits too slowly under overload; that is what the no-eviction guarantee costs."),
               ("v4 gives no request count for E3; kvsched uses 2,000 requests per run. The [draft]'s 60 % pool run "
               "used 10,000 requests, so its eviction count is not comparable in size, only in sign.")]
    exp.plot_latency(means, ctx.out / "wait-e3.png", "wait-e3: p512d1000", ["vidur-vllm", "sarathi",
                     "wait-cp (tuned)", settings["fixed WAIT-CP setting"], "wait-cp (auto)"])
    settings["60 % KV run"] = f"λ = 4, C = {int(0.6 * exp.CAPACITY_TOKENS):,} tokens, WAIT-CP tl {{36, 54}}"
    table = pd.concat([means.assign(kv_pool="100 %"), kv60.assign(kv_pool="60 %")], ignore_index=True)
    return Findings(table=table, table_note="mean over replications per (KV pool, policy, λ), with the tuned rows",
                    settings=settings, comparisons=rows, figures=[("wait-e3.png", "mean latency against λ")],
                    differences=diffs, reasons=[*COMMON_REASONS, *reasons],
                    headline={"lambda_star": star, "eviction_table": exp.eviction_table(frame),
                              "separation_rate": sep},
                    extra_tables=[("Mean latency (s) per λ", _latency_table(means, MAIN))])


def _e4_full_grid() -> tuple:
    """The authors' lmsys grid (their repository's paper-facing configuration): tl 40..300 step 20 × L {1, 2, 3, 4, 5, 10, 20}, chunk 128."""
    return tuple(exp.Policy(f"wait-cp tl={tl} L={seg}", "wait-cp", {"tl": tl, "num_segments": seg, "chunk_size": 128},
                            group="wait-cp") for tl in range(40, 301, 20) for seg in (1, 2, 3, 4, 5, 10, 20))


def _fluid_scale() -> float:
    """α*: the rate at which the fluid M* of the lmsys types reaches C, with (d0, d1) fitted to
    kvsched's cost model (the paper's Table 2 puts it at λ ≈ 74.1)."""
    from kvsched.bounds.fluid import fluid_benchmark
    from kvsched.sim.cost import design_coefficients, llama2_7b_a100

    types = exp.lmsys_bin_types(1.0)
    fit = design_coefficients(llama2_7b_a100(), [t.prompt_len for t in types], [t.output_len for t in types]).model
    return fluid_benchmark(types, fit.d0_s, fit.d1_s_per_token, exp.CAPACITY_TOKENS,
                           first_token_in_prefill=True).rate_scale_to_capacity


def _e4_rows(means: pd.DataFrame, star: dict, alpha: float) -> list[Comparison]:
    notes = exp.PAPER["E4"]["notes_table"]
    rows = []
    for rate in (10, 30, 50, 60, 80, 150):
        for k, lbl in enumerate(("sarathi", "wait-cp (tuned)")):
            v = _at(means, lbl, float(rate), "middle50_latency_s")
            rows.append(Comparison(f"middle-50 % latency at λ = {rate}, {NAMES[lbl]} (s)", fmt(v),
                                   f"{notes[rate][k]} [notes]", diff(v, notes[rate][k], kind="ratio")))
    g60 = _gain(means, 60.0, "middle50_latency_s")
    rows.append(Comparison("gain of tuned WAIT-CP over Sarathi at λ = 60", pct(g60), "+41.78 % [notes]",
                           _pp(g60, 0.4178)))
    for lbl, paper in (("vidur-vllm", 35), ("sarathi", 55), ("wait-cp (tuned)", 65)):
        rows.append(Comparison(f"λ* {NAMES[lbl]} (req/s)", fmt(star.get(lbl)), f"≈ {paper} [draft, 50,000 prompts]",
                               diff(star.get(lbl), paper, digits=1)))
    rows.append(Comparison("fluid: λ at which M* reaches C (req/s)", fmt(alpha, 1), "≈ 74.1 (Table 2)",
                           diff(alpha, 74.1, digits=1)))
    return rows


def _e4_table(means: pd.DataFrame) -> pd.DataFrame:
    notes = exp.PAPER["E4"]["notes_table"]
    rates = sorted(means["rate"].unique())
    rows = []
    for rate in rates:
        s, w = _at(means, "sarathi", rate, "middle50_latency_s"), _at(means, "wait-cp (tuned)", rate,
                                                                     "middle50_latency_s")
        ps, pw = notes.get(int(rate), (None, None))
        rows.append({"λ (req/s)": rate, "Sarathi": s, "Sarathi [notes]": ps, "WAIT-CP tuned": w,
                     "WAIT-CP [notes]": pw, "gain": pct(_gain(means, rate, "middle50_latency_s")),
                     "gain [notes]": pct((ps - pw) / ps) if ps else "—"})
    return pd.DataFrame(rows)


def _e4(ctx: Context) -> Findings:
    auto = exp.Policy("wait-cp (auto)", "wait-cp", {})
    _, means, _, settings = _sweep(
        ctx, "e4", rates={"default": None, "quick": (10.0, 30.0, 50.0, 60.0, 80.0, 150.0), "test": (30.0,)},
        reps={"default": 5, "quick": 1, "test": 1, "full": 10}, requests={"default": 5000, "quick": 1000, "test": 200},
        full_policies=(*exp.BASELINES, *_e4_full_grid(), auto), metric="middle50_latency_s")
    star, alpha = exp.lambda_star(means), _fluid_scale()
    rows = _e4_rows(means, star, alpha)
    tuned = means[means["label"] == "wait-cp (tuned)"]
    diffs = [(f"λ* (project rule): vLLM {fmt_rate(star.get('vidur-vllm'))}, Sarathi {fmt_rate(star.get('sarathi'))}, tuned "
             f"WAIT-CP {fmt(star.get('wait-cp (tuned)'))} req/s; the [notes]' Sarathi is still at 4.7 s at λ = 50."),
             "Tuned WAIT-CP setting per λ: " + ", ".join(f"{r:g}: {s.removeprefix('wait-cp ')}" for r, s in
                                                        zip(tuned["rate"], tuned["tuned_from"])) + " ([notes]: L = 1, "
             "tl = 300 from λ = 60).",
             (f"The fluid model with kvsched's fitted (d0, d1) reaches M* = C at λ ≈ {alpha:.1f} against "
             f"74.1 in Table 2: kvsched's system has about {alpha / 74.1:.0%} of the paper's capacity for this "
             "workload.")]
    reasons = [("Lengths: the paper's lmsys lengths are whitespace word counts of a licensed data set (docs/conventions.md#wait-words); kvsched "
               "uses an lmsys-like stand-in with the reported statistics (decode median 116, 31 % ≤ 50, 14 % > 300; "
               "prefill median 21), drawn from the authors' 50 length bins (docs/conventions.md#wait-bins)."),
               ("Capacity: kvsched's cost model charges 6.8e-7 s per KV token and 6.4e-5 s per prefill token "
               "(fitted, R² 0.99), against the paper's 4.0e-7 s (Table 2, word units): the workload overloads "
               "between λ = 30 and 50 here, where the authors' Sarathi is still light."),
               ("Grid: the default tunes over 9 settings (tl {100, 200, 300} × L {1, 3, 5}); the [notes]' winner from "
               "λ = 60 on (tl 300, L 1) is one of them, the rest of the authors' 98-setting grid is `--full`."),
               ("The latency statistic is the middle-50 % mean of the authors' lmsys runs (docs/conventions.md#wait-window); tuning picks the "
               "setting with the lowest middle-50 % mean per λ.")]
    exp.plot_latency(means.assign(mean_latency_s=means["middle50_latency_s"]), ctx.out / "wait-e4.png",
                     "wait-e4: lmsys-like (middle-50 % mean)", ["vidur-vllm", "sarathi", "wait-cp (tuned)",
                                                                  settings["fixed WAIT-CP setting"], "wait-cp (auto)"])
    return Findings(table=means, table_note="mean over replications per (policy, λ), tuned by the middle-50 % mean",
                    settings=settings, comparisons=rows, figures=[("wait-e4.png", "middle-50 % mean latency against λ")],
                    differences=diffs, reasons=[*COMMON_REASONS, *reasons],
                    headline={"lambda_star": star, "fluid_rate_at_capacity": alpha},
                    extra_tables=[("Middle-50 % mean latency (s) per λ beside the [notes] table", _e4_table(means))])


def _e5(ctx: Context) -> Findings:
    reps, n = ctx.pick(default=20, quick=5, test=2), ctx.pick(default=5000, quick=2000, test=200)
    frame, _ = exp.repeated_runs(out=ctx.study_dir(), repetitions=reps, num_requests=n, jobs=ctx.jobs,
                                 executor=ctx.executor, progress=ctx.tracker("E5"))
    table = (frame.groupby(["case", "rate", "label"])["mean_latency_s"].agg(["mean", "std", "count"])
             .reset_index().rename(columns={"mean": "mean_latency_s", "std": "sd_latency_s", "count": "runs"}))
    names = {"vidur-vllm": "vLLM", "sarathi": "Sarathi", "wait": "WAIT-CP (fixed)"}
    rows, groups, diffs = [], {}, []
    for row in table.itertuples():
        paper_m, paper_sd = exp.PAPER["E5"][row.case][int(row.rate)][row.label]
        rows.append(Comparison(f"{row.case}, λ = {row.rate:g}, {names[row.label]}: mean ± sd (s)",
                               f"{row.mean_latency_s:.2f} ± {row.sd_latency_s:.2f}", f"{paper_m:.2f} ± {paper_sd:.2f}",
                               diff(row.mean_latency_s, paper_m, kind="ratio")))
        group = groups.setdefault(f"{row.case} λ={row.rate:g}", {})
        group[f"{names[row.label]}"], group[f"{names[row.label]} (paper)"] = row.mean_latency_s, paper_m
    for case_rate, g in groups.items():
        best = min((k for k in g if not k.endswith("(paper)")), key=g.get)
        diffs.append(f"{case_rate}: lowest mean latency {best} (paper: WAIT).")
    bar_figure(ctx.out / "wait-e5.png", groups, ylabel="mean latency (s)", log=True,
               title="wait-e5: mean latency over repetitions, kvsched beside the paper")
    restarts = int(frame.loc[frame["label"] == "vidur-vllm", "num_restarts"].sum())
    reasons = [(f"kvsched's Vidur-vLLM is far less unstable at these rates than the paper's (2-5 s against 18-80 s): "
                f"its prefill batches are cheaper on the profile-derived cost model, and it restarted {restarts:,} "
                f"requests in all {reps} × 4 runs."),
               ("WAIT-CP runs at one fixed setting for every rate here, as in the paper's table; with per-rate tuning "
               "(E1, E2) it wins from λ = 23 (one type) and 22 (two types)."),
               "The two-type rows of the paper are the Llama-3-8B-era figure values ([notes])."]
    return Findings(table=table, table_note="mean and sd of the per-run mean latency over repetitions per (case, λ, "
                                            "policy)",
                    settings={"repetitions": reps, "requests per run": n, "arrival rates (req/s)": [22.0, 23.0],
                              "KV capacity (tokens)": exp.CAPACITY_TOKENS, "cost model": exp.COST_MODEL,
                              "WAIT-CP": "tl 25 cs 256 (one type), tl 30 cs 128 (two types)"},
                    comparisons=rows, figures=[("wait-e5.png", "mean latency, kvsched beside the paper")],
                    differences=diffs, reasons=[*COMMON_REASONS, *reasons],
                    headline={"mean_sd_latency_s": {f"{r.case} {r.rate:g} {r.label}": [r.mean_latency_s, r.sd_latency_s]
                                                    for r in table.itertuples()}})


# --- optional experiments E6 and E7 -------------------------------------------------------------------
def _e6(ctx: Context) -> Findings:
    sizes = ctx.pick(default=(2000, 5000, 10000, 20000), quick=(2000, 5000), test=(100, 200))
    reps = ctx.pick(default=3, quick=1, test=1)
    # Nested WAIT-CP tuned per (λ, N) on E2's grid, as the paper tunes per rate; Sarathi as in E2.
    grid = tuple(p for p in exp.experiments(ctx.scale in ("quick", "test"))["e2"].policies if p.group == "wait-cp")
    parts = []
    for n in sizes:
        frame = exp.sweep("E6", "two-type", (22.0, 23.0), (exp.BASELINES[1], *grid), replications=reps,
                          num_requests=n, jobs=ctx.jobs, executor=ctx.executor, out=ctx.study_dir(),
                          progress=ctx.tracker(f"N = {n:,}"))
        means = exp.with_tuned(frame)
        parts.append(means[means["label"].isin(["sarathi", "wait-cp (tuned)"])].assign(num_requests=n))
    long = pd.concat(parts, ignore_index=True).replace({"label": {"wait-cp (tuned)": "nested wait-cp"}})
    table = long.pivot_table(index=["rate", "num_requests"], columns="label", values="mean_latency_s").reset_index()
    tuned = long.loc[long["label"] == "nested wait-cp", ["rate", "num_requests", "tuned_from"]]
    table = table.merge(tuned, on=["rate", "num_requests"], how="left")
    table["gain"] = (table["sarathi"] - table["nested wait-cp"]) / table["sarathi"]
    rows, diffs = [], []
    for rate, part in table.groupby("rate"):
        part = part.sort_values("num_requests")
        growth = {c: part[c].iloc[-1] / part[c].iloc[0] for c in ("sarathi", "nested wait-cp")}
        rows.append(Comparison(f"λ = {rate:g}: latency growth from N = {sizes[0]:,} to {sizes[-1]:,}, Sarathi / "
                               "Nested WAIT-CP", f"×{growth['sarathi']:.2f} / ×{growth['nested wait-cp']:.2f}",
                               "Sarathi keeps growing, Nested WAIT levels off" if rate == 22 else "both keep growing",
                               "—"))
        rows.append(Comparison(f"λ = {rate:g}: gain of Nested WAIT-CP over Sarathi (range over N)",
                               f"{pct(part['gain'].min())} to {pct(part['gain'].max())}",
                               "—" if rate == 22 else "+30 to +50 % at every N", "—"))
        diffs.append(f"λ = {rate:g}: Nested WAIT-CP's mean latency goes from {fmt(part['nested wait-cp'].iloc[0])} to "
                     f"{fmt(part['nested wait-cp'].iloc[-1])} s, Sarathi's from {fmt(part['sarathi'].iloc[0])} to "
                     f"{fmt(part['sarathi'].iloc[-1])} s.")
    groups = {f"λ={r['rate']:g} N={int(r['num_requests']):,}": {"Sarathi": r["sarathi"],
                                                                 "Nested WAIT-CP": r["nested wait-cp"]}
              for _, r in table.iterrows()}
    bar_figure(ctx.out / "wait-e6.png", groups, ylabel="mean latency (s)", log=True,
               title="wait-e6: two types, latency against the number of requests")
    reasons = [("v4 describes E6 only qualitatively (no numbers, no replication count); the figure data are of "
               "the Llama-3-8B era."),
               ("Nested WAIT-CP is tuned per (λ, N) over wait-e2's grid (tl {25, 30, 40, 50} × cs {128, 256}), as "
                "the paper tunes per rate; the chosen settings are in the table's `tuned_from` column.")]
    return Findings(table=table, table_note="mean latency over replications per (λ, N) and policy, and the gain",
                    settings={"workload": "two-type", "arrival rates (req/s)": [22.0, 23.0], "requests": list(sizes),
                              "replications": reps, "Nested WAIT-CP": [p.label for p in grid],
                              "Sarathi": "chunk 512, cap 256", "cost model": exp.COST_MODEL},
                    comparisons=rows, figures=[("wait-e6.png", "mean latency against the number of requests")],
                    differences=diffs, reasons=[*COMMON_REASONS, *reasons],
                    headline={"table": table.to_dict("records")})


def _e7(ctx: Context) -> Findings:
    rates = ctx.pick(default=tuple(float(r) for r in range(12, 27)), quick=QUICK_RATES, test=(12.0, 24.0))
    reps, n = ctx.pick(default=10, quick=2, test=1), ctx.pick(default=5000, quick=1000, test=200)
    policies = tuple(exp.Policy(f"wait-cp tl={tl}{' no-wait' if not gate else ''}", "wait-cp",
                                {"tl": tl, "chunk_size": 256, "wait_gate": gate},
                                group="wait-cp" if gate else "no-wait") for gate in (True, False) for tl in (21, 25, 30))
    frame = exp.sweep("E7", "p512d20", rates, policies, replications=reps, num_requests=n, jobs=ctx.jobs,
                      executor=ctx.executor, out=ctx.study_dir(), progress=ctx.tracker("E7"))
    means = exp.with_tuned(frame)
    wide = means.pivot_table(index="rate", columns="label", values="mean_latency_s")
    effect = (wide["no-wait (tuned)"] - wide["wait-cp (tuned)"]) / wide["no-wait (tuned)"]
    low, high = float(min(rates)), float(max(rates))
    star = exp.lambda_star(means)
    rows = [Comparison(f"gain of waiting (tuned WAIT-CP vs tuned no-wait) at λ = {low:g}", pct(effect.get(low)),
                       "waiting costs a little at low load (no number)", "—"),
            Comparison("largest gain of waiting over λ", f"{pct(effect.max())} at λ = {fmt(effect.idxmax())}",
                       "waiting helps near the overload boundary", "—"),
            Comparison(f"gain of waiting at λ = {high:g}", pct(effect.get(high)), "alike once overloaded", "—"),
            Comparison("λ* with / without the wait gate (req/s)",
                       f"{fmt(star.get('wait-cp (tuned)'))} / {fmt(star.get('no-wait (tuned)'))}", "—", "—")]
    exp.plot_latency(means, ctx.out / "wait-e7.png", "wait-e7: waiting ablation on p512d20",
                     ["wait-cp (tuned)", "no-wait (tuned)", "wait-cp tl=25", "wait-cp tl=25 no-wait"])
    diffs = ["Gain of waiting per λ: " + ", ".join(f"{r:g}: {pct(v)}" for r, v in effect.items()) + "."]
    reasons = [("The paper states E7 only qualitatively. kvsched's WAIT-CP gate freezes a segment until its entry "
               "holds the current limit; at light load that wait is not paid back (docs/wait.md), which is the "
               "cost the paper describes as small.")]
    return Findings(table=means, table_note="mean over replications per (policy, λ), plus the tuned rows",
                    settings={"workload": "p512d20", "arrival rates (req/s)": list(rates), "replications": reps,
                              "requests per run": n, "policies": [p.label for p in policies],
                              "cost model": exp.COST_MODEL, "KV capacity (tokens)": exp.CAPACITY_TOKENS},
                    comparisons=rows, figures=[("wait-e7.png", "mean latency against λ, with and without waiting")],
                    differences=diffs, reasons=[*COMMON_REASONS, *reasons],
                    headline={"gain_of_waiting": {str(r): v for r, v in effect.items()}, "lambda_star": star})
