"""`kvsched report RESULTS`: one self-contained report of a sweep or of saved runs.

RESULTS is one of
  - a sweep directory (`sweep.json`, `results.parquet` with one row per cell,
    `cells/<cell_id>/` run files, `failed/<cell_id>.json`);
  - a run directory (`kvsched simulate --output DIR`: summary.json, config.json,
    requests and steps tables), or a directory whose subdirectories are run directories
    (`kvsched compare --output DIR`).

A sweep's report has, per (trace, capacity) group: latency vs arrival rate (mean and p99
end-to-end latency, mean TTFT; the volume lower bound on mean latency dashed, the fluid
benchmark's mean latency dotted), throughput vs rate, preemptions and restarts vs rate,
a table of the bounds, latency and TTFT CDFs and KV usage over time at one rate, and the
headline numbers per label and rate (means over seeds). Runs get their summary table,
CDFs, KV usage and preemption counts.

The report is built as a list of blocks (headings, paragraphs, tables, figures) and then
written as one HTML file (PNG figures as base64 data URIs, inline CSS, no scripts, nothing
fetched) or as markdown with a sibling folder of PNGs. Like plots.py it reads saved files
only. A label keeps its color in every figure of one report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kvsched import __version__
from kvsched.plots import cdf_points, kv_usage_series, plt
from kvsched.results import load_json, load_table

FORMATS = ("html", "md")
# The headline numbers of the tables: (column header, summary / results.parquet key, scale).
HEADLINE = (
    ("completed", "num_completed", 1.0),
    ("E2E mean (s)", "e2e_mean", 1.0),
    ("E2E p99 (s)", "e2e_p99", 1.0),
    ("TTFT mean (s)", "ttft_mean", 1.0),
    ("TTFT p99 (s)", "ttft_p99", 1.0),
    ("TPOT mean (ms)", "tpot_mean", 1e3),
    ("throughput (tok/s)", "throughput_tokens_per_s", 1.0),
    ("preemptions", "num_preemptions", 1.0),
    ("restarts", "num_restarts", 1.0),
    ("peak KV (tokens)", "peak_kv_tokens", 1.0),
    ("latency / bound", "ratio_to_bound", 1.0),
)
# Config columns that split a sweep into groups of comparable curves (trace and capacity
# always; the others only when the grid varies them).
GROUP_KEYS = ("trace", "capacity_tokens", "workload", "cost_model", "block_size", "theory", "predictions")
WIDE_RANGE = 30.0  # a y range wider than this factor is drawn on a log scale
BAND_NOTE = "Lines: mean over seeds; shaded band or error bar: min to max over seeds."


# --- the document -------------------------------------------------------------------------
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    name: str  # file name stem in markdown output
    caption: str
    png: bytes


def _num(value, scale: float = 1.0) -> str:
    """A table cell: integers as integers, 4 significant digits, 'n/a' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    v = float(value) * scale
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _png(draw: Callable, nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.0, 4.2),
         **kw) -> bytes:
    """Draw into a new figure's axes grid and return it as PNG bytes (the figure is closed)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, **kw)
    try:
        draw(axes)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    finally:
        plt.close(fig)


def label_colors(labels) -> dict[str, tuple]:
    """One color per label, in order of first appearance, for every figure of a report."""
    unique = list(dict.fromkeys(labels))
    cmap = plt.get_cmap("tab10" if len(unique) <= 10 else "tab20")
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(unique)}


# --- CDFs, KV usage and preemption bars: shared by sweeps and runs ------------------------------
def _legend(ax) -> None:
    """A legend when something is labelled (bars are named by their ticks instead)."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize="small")


def _has_tables(run_dir: Path) -> bool:
    return any((run_dir / f"{t}.{ext}").exists() for t in ("requests", "steps") for ext in ("parquet", "csv"))


def _cdf_figure(name: str, series: list[tuple[str, list[Path]]], colors: dict, where: str) -> Figure:
    """E2E latency and TTFT CDFs, one curve per label, requests of all its runs pooled."""
    pooled = {lab: [load_table(d, "requests") for d in dirs] for lab, dirs in series}

    def draw(axes):
        for ax, col, xlabel in zip(axes[0], ("e2e_latency", "ttft"), ("end-to-end latency (s)", "TTFT (s)")):
            for lab, frames in pooled.items():
                x, y = cdf_points(np.concatenate([f[col].to_numpy(dtype=np.float64) for f in frames]))
                if len(x):
                    ax.plot(x, y, label=lab, color=colors[lab])
            if ax.has_data() and min(line.get_xdata().min() for line in ax.lines) > 0:
                ax.set_xscale("log")  # latencies span orders of magnitude under load
            ax.set_xlabel(xlabel)
            ax.set_ylabel("fraction of completed requests")
            ax.grid(alpha=0.3)
        _legend(axes[0][0])

    png = _png(draw, 1, 2, (11, 4.2))
    return Figure(name, f"CDFs of end-to-end latency and TTFT{where} (completed requests).", png)


def _kv_figure(name: str, series: list[tuple[str, Path]], colors: dict, where: str) -> Figure:
    """KV cache used / capacity over time, one panel per label (overlaid curves hide each other)."""
    data = [(lab, *kv_usage_series(d)) for lab, d in series]

    def draw(axes):
        for ax, (lab, end, used) in zip(axes[:, 0], data):
            ax.step(end, used, where="pre", color=colors[lab], lw=0.8)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("KV used / cap.")
            ax.set_title(lab, fontsize="small", loc="left")
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("time (s)")

    png = _png(draw, len(data), 1, (7, 1.2 + 1.5 * len(data)), sharex=True)
    return Figure(name, f"KV cache usage over time{where} (fraction of capacity after each step).", png)


def _bars(ax, labels: list[str], values: list[float], colors: dict, lo=None, hi=None) -> None:
    """One bar per label; min-max error bars when given."""
    x = np.arange(len(labels))
    ax.bar(x, values, color=[colors[lab] for lab in labels])
    if lo is not None:
        err = np.abs(np.array([np.subtract(values, lo), np.subtract(hi, values)]))
        ax.errorbar(x, values, yerr=err, fmt="none", ecolor="black", capsize=3, lw=0.8)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize="small")
    ax.grid(alpha=0.3, axis="y")


# --- rendering ----------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: .9em; color: #555; }
"""


def _html(title: str, blocks: list) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{esc(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{esc(c)}</th>" for c in b.columns)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(b.name)}">'
                       f"<figcaption>{esc(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def markdown_table(header, rows) -> str:
    """A GitHub-flavoured markdown table ('|' inside a cell escaped, newlines flattened)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _markdown(title: str, blocks: list, fig_dir: Path) -> str:
    """Markdown text; figures are written into fig_dir and linked by a relative path."""
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Table):
            out += [markdown_table(b.columns, b.rows), ""]
        else:
            fig_dir.mkdir(parents=True, exist_ok=True)
            (fig_dir / f"{b.name}.png").write_bytes(b.png)
            out += [f"![{b.name}]({fig_dir.name}/{b.name}.png)", "", f"*{b.caption}*", ""]
    return "\n".join(out)


# --- sweeps -------------------------------------------------------------------------------
def load_sweep(sweep_dir: Path) -> tuple[dict, pd.DataFrame]:
    """sweep.json (empty when absent) and results.parquet, with the x position of every cell:
    its arrival rate, or for cells replayed at the trace's own arrivals (rate NaN) the mean
    offered rate of those cells in its group."""
    meta = load_json(sweep_dir, "sweep") if (sweep_dir / "sweep.json").exists() else {}
    df = pd.read_parquet(sweep_dir / "results.parquet")
    if "label" not in df:
        df["label"] = df["scheduler"]
    df["label"] = df["label"].astype(str)
    df["rate"] = df["rate"].astype(np.float64) if "rate" in df else np.nan
    keys = [k for k in GROUP_KEYS if k in df and (k in GROUP_KEYS[:2] or df[k].astype(str).nunique() > 1)]
    df["group"] = df.groupby(keys, sort=False, dropna=False).ngroup() if keys else 0
    offered = df["offered_rate_per_s"] if "offered_rate_per_s" in df else pd.Series(np.nan, index=df.index)
    own = offered.where(df["rate"].isna()).groupby(df["group"]).transform("mean")
    # Without an offered rate the trace's own arrivals sit at x = 0 (one point per group).
    df["x"] = df["rate"].fillna(own.round(6)).fillna(0.0)
    return meta, df


def _group_title(g: pd.DataFrame, varies: dict[str, bool]) -> str:
    first = g.iloc[0]
    parts = [f"trace {first['trace']}"] if "trace" in g else []
    if "capacity_tokens" in g:
        parts.append(f"capacity {_num(first['capacity_tokens'])} tokens")
    for k in GROUP_KEYS[2:]:
        if k in g and varies.get(k):
            parts.append(_workload_text(first[k]) if k == "workload" else f"{k} {first[k]}")
    return ", ".join(p for p in parts if p) or "all cells"


def _workload_text(workload: str) -> str:
    """The workload settings beside the trace (num_requests, rate_scale, ...), as k=v."""
    try:
        settings = json.loads(workload)
    except (TypeError, ValueError):
        return str(workload)
    return " ".join(f"{k}={v}" for k, v in sorted(settings.items()) if k != "trace")


def _rate_text(g: pd.DataFrame, x: float) -> str:
    if not g.loc[g["x"] == x, "rate"].isna().all():
        return f"{_num(x)} req/s"
    return f"the trace's own arrivals (about {_num(x)} req/s)" if x > 0 else "the trace's own arrivals"


def _over_seeds(ok: pd.DataFrame, col: str) -> pd.DataFrame:
    """Mean, min and max of `col` over seeds per (label, x); NaN values (no completed
    request) are left out of the mean."""
    if col not in ok:
        return pd.DataFrame(columns=["label", "x", "mean", "min", "max"])
    return ok.groupby(["label", "x"], sort=True)[col].agg(["mean", "min", "max"]).reset_index()


def _mean_band(ax, x, agg, color, label: str) -> None:
    """The mean over seeds as a curve, with the min-max band where the seeds differ."""
    ax.plot(x, agg["mean"], marker="o", ms=3.5, color=color, label=label)
    if (agg["max"] > agg["min"]).any():
        ax.fill_between(x, agg["min"], agg["max"], color=color, alpha=0.15, lw=0)


def _draw_vs_rate(ax, ok: pd.DataFrame, col: str, labels: list[str], colors: dict) -> None:
    """One curve per label against the rate (band: min-max over seeds), or bars with
    min-max error bars when the group has a single rate."""
    agg = _over_seeds(ok, col)
    if ok["x"].nunique() == 1:
        rows = [agg[agg["label"] == lab] for lab in labels]
        _bars(ax, labels, [float(r["mean"].iloc[0]) if len(r) else np.nan for r in rows], colors,
              [float(r["min"].iloc[0]) if len(r) else np.nan for r in rows],
              [float(r["max"].iloc[0]) if len(r) else np.nan for r in rows])
        return
    for lab in labels:
        a = agg[agg["label"] == lab].dropna(subset=["mean"])
        if len(a):
            _mean_band(ax, a["x"], a, colors[lab], lab)
    ax.set_xlabel("arrival rate (req/s)")
    ax.grid(alpha=0.3)


def _draw_reference(ax, ok: pd.DataFrame, col: str, style: str, name: str) -> None:
    """A workload-level curve (the same for every label): its mean over the group's cells."""
    if col not in ok:
        return
    ref = ok[np.isfinite(ok[col].astype(np.float64))].groupby("x")[col].mean()
    if ref.empty:
        return
    if ok["x"].nunique() == 1:
        ax.axhline(float(ref.iloc[0]), color="black", ls=style, lw=1.2, label=name)
    else:
        ax.plot(ref.index, ref.values, color="black", ls=style, lw=1.2, label=name)


def _log_if_wide(ax) -> None:
    ys = np.concatenate([np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.lines] or [np.array([])])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    if len(ys) and ys.max() / ys.min() > WIDE_RANGE:
        ax.set_yscale("log")


def _latency_figure(name: str, ok: pd.DataFrame, labels: list[str], colors: dict) -> Figure:
    panels = (("e2e_mean", "mean end-to-end latency (s)"), ("e2e_p99", "p99 end-to-end latency (s)"),
              ("ttft_mean", "mean TTFT (s)"))

    def draw(axes):
        for ax, (col, ylabel) in zip(axes[0], panels):
            _draw_vs_rate(ax, ok, col, labels, colors)
            if col == "e2e_mean":
                _draw_reference(ax, ok, "bound_mean_latency_s", "--", "volume lower bound")
                _draw_reference(ax, ok, "fluid_mean_latency_s", ":", "fluid benchmark")
            _log_if_wide(ax)
            ax.set_ylabel(ylabel)
        _legend(axes[0][0])

    png = _png(draw, 1, 3, (15, 4.4))
    return Figure(name, "Latency vs arrival rate: mean and p99 end-to-end latency and mean TTFT per label; "
                        "dashed: volume lower bound on the mean latency (no schedule does better); dotted: "
                        "the fluid benchmark's mean latency where the fluid model is stable. " + BAND_NOTE, png)


def _replicas_blocks(ok: pd.DataFrame, gid: str, x: float | None) -> list:
    """Latency vs replicas, one curve per scheduler and router (cluster sweeps, docs/cluster.md),
    at one arrival rate: the report's --rate, else the highest rate every label ran at."""
    if x is None:
        return []
    at = ok[np.isclose(ok["x"], x, rtol=1e-9, atol=1e-12)]
    curves = list(dict.fromkeys(at["router_label"]))
    colors = label_colors(curves)
    panels = (("e2e_mean", "mean end-to-end latency (s)"), ("e2e_p99", "p99 end-to-end latency (s)"),
              ("ttft_p99", "p99 TTFT (s)"))

    def draw(axes):
        for ax, (col, ylabel) in zip(axes[0], panels):
            agg = at.groupby(["router_label", "replicas"], sort=True)[col].agg(["mean", "min", "max"]).reset_index()
            for c in curves:
                a = agg[agg["router_label"] == c].dropna(subset=["mean"])
                if len(a):
                    _mean_band(ax, a["replicas"], a, colors[c], c)
            ax.set_xlabel("replicas")
            ax.set_xscale("log", base=2)
            counts = sorted(int(n) for n in at["replicas"].unique())
            ax.set_xticks(counts, [str(n) for n in counts])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            _log_if_wide(ax)
            ax.set_ylabel(ylabel)
        _legend(axes[0][0])

    png = _png(draw, 1, 3, (15, 4.4))
    return [Heading("Latency vs replicas", 3),
            Figure(f"{gid}-replicas", f"Latency vs the number of replicas at {_rate_text(ok, x)}, one curve per "
                                      "scheduler and router (docs/cluster.md). " + BAND_NOTE, png)]


def _throughput_figure(name: str, ok: pd.DataFrame, labels: list[str], colors: dict) -> Figure:
    def draw(axes):
        _draw_vs_rate(axes[0][0], ok, "throughput_tokens_per_s", labels, colors)
        axes[0][0].set_ylabel("throughput (output tokens/s)")
        _draw_vs_rate(axes[0][1], ok, "completion_rate_per_s", labels, colors)
        axes[0][1].set_ylabel("completed requests/s")
        _draw_reference(axes[0][1], ok, "offered_rate_per_s", ":", "offered (measured)")
        for ax in axes[0]:
            _legend(ax)

    png = _png(draw, 1, 2, (11, 4.2))
    return Figure(name, "Throughput vs arrival rate, completed requests only. Dotted: the arrival rate "
                        "measured from the workload; a label far below it does not keep up (a short run sits "
                        "a little below it, since the last requests drain after the arrivals end). "
                        + BAND_NOTE, png)


def _preemption_figure(name: str, ok: pd.DataFrame, labels: list[str], colors: dict) -> Figure:
    def draw(axes):
        for ax, (col, ylabel) in zip(axes[0], (("num_preemptions", "preemptions (recompute)"),
                                               ("num_restarts", "restarts (kill-and-restart)"))):
            _draw_vs_rate(ax, ok, col, labels, colors)
            ax.set_ylabel(f"{ylabel} per run")
            ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1))  # counts: no negative axis
            _legend(ax)

    png = _png(draw, 1, 2, (11, 4.2))
    return Figure(name, "Preemptions (tokens kept, prefilled again) and restarts (tokens discarded) per run "
                        "vs arrival rate. " + BAND_NOTE, png)


def _pick_rate(ok: pd.DataFrame, rate: float | None) -> float | None:
    """The CDF / KV-usage rate of a group: `rate` when the group has it, else the highest
    rate at which every label has a run that completed requests."""
    xs = np.sort(ok["x"].unique())
    if rate is not None:
        hit = xs[np.isclose(xs, rate, rtol=1e-9, atol=1e-12)]
        return float(hit[0]) if len(hit) else None
    done = ok[ok["num_completed"] > 0]
    common = set.intersection(*(set(done.loc[done["label"] == lab, "x"]) for lab in ok["label"].unique()))
    return max(common) if common else None


def _distribution_blocks(sweep_dir: Path, ok: pd.DataFrame, labels, colors, x: float | None,
                         gid: str, rate_given: bool) -> list:
    if x is None:
        why = ("no successful cell of this group ran at --rate" if rate_given
               else "no rate has completed runs for every label")
        return [Para(f"CDFs and KV usage skipped: {why}.")]
    at = ok[ok["x"] == x].sort_values("seed" if "seed" in ok else "cell_id")
    cells = {lab: [sweep_dir / "cells" / str(c) for c in at.loc[at["label"] == lab, "cell_id"]] for lab in labels}
    series = [(lab, [d for d in dirs if _has_tables(d)]) for lab, dirs in cells.items()]
    series = [(lab, dirs) for lab, dirs in series if dirs]
    where = f" at {_rate_text(ok, x)}"
    blocks: list = [Heading(f"Distributions at {_rate_text(ok, x)}", 3)]
    if not series:
        return blocks + [Para("CDFs and KV usage skipped: the cells' runs were not saved "
                              "(the sweep ran with --no-save-runs).")]
    missing = [lab for lab in labels if lab not in dict(series)]
    if missing:
        blocks.append(Para(f"No saved run at this rate for: {', '.join(missing)}."))
    blocks.append(_cdf_figure(f"{gid}-cdf", series, colors, where + ", all seeds pooled"))
    blocks.append(_kv_figure(f"{gid}-kv-usage", [(lab, dirs[0]) for lab, dirs in series], colors,
                             where + ", first seed"))
    return blocks


def _metrics_table(ok: pd.DataFrame, labels: list[str]) -> Table:
    """Headline numbers per label and rate, each the mean over the seeds that ran."""
    cols = [(h, k, s) for h, k, s in HEADLINE if k in ok]
    means = ok.groupby(["label", "x"])[[k for _, k, _ in cols]].mean()
    seeds = ok.groupby(["label", "x"]).size()
    rows = []
    for lab in labels:
        for x in sorted(ok.loc[ok["label"] == lab, "x"].unique()):
            m = means.loc[(lab, x)]
            rows.append((lab, _num(x), str(int(seeds.loc[(lab, x)])), *(_num(m[k], s) for _, k, s in cols)))
    return Table(("label", "rate (req/s)", "runs", *(h for h, _, _ in cols)), tuple(rows))


def _verdicts(verdicts: pd.Series) -> str:
    """The fluid verdict of a rate's cells; seeds can draw workloads on either side of a
    threshold, so a mixed rate shows how many cells got each verdict."""
    counts = verdicts.dropna().astype(str).replace("", np.nan).dropna().value_counts().sort_index()
    if len(counts) <= 1:
        return str(counts.index[0]) if len(counts) else "n/a"
    return ", ".join(f"{v} ({n} of {len(verdicts)})" for v, n in counts.items())


def _bounds_table(ok: pd.DataFrame) -> Table | None:
    cols = [c for c in ("bound_mean_latency_s", "fluid_mean_latency_s") if c in ok]
    if not cols:
        return None
    rows = []
    for x, g in ok.groupby("x"):
        verdicts = _verdicts(g["fluid_verdict"]) if "fluid_verdict" in g else "n/a"
        rows.append((_num(x), *(_num(g[c].astype(np.float64).mean()) for c in cols), verdicts))
    names = {"bound_mean_latency_s": "volume lower bound on mean E2E (s)",
             "fluid_mean_latency_s": "fluid benchmark mean latency (s)"}
    return Table(("rate (req/s)", *(names[c] for c in cols), "fluid verdict"), tuple(rows))


def _group_blocks(sweep_dir: Path, g: pd.DataFrame, gid: str, colors: dict, rate: float | None,
                  varies: dict[str, bool]) -> list:
    ok = g[g["status"] == "ok"]
    blocks: list = [Heading(_group_title(g, varies))]
    if ok.empty:
        return blocks + [Para("No cell of this group ran successfully: nothing to plot.")]
    labels = list(dict.fromkeys(ok["label"]))
    rates = sorted(ok["x"].unique())
    blocks.append(Para(f"{len(ok)} successful runs; labels: {', '.join(labels)}; "
                       f"rates: {', '.join(_rate_text(g, x) for x in rates)}."))
    if "replicas" in ok and ok["replicas"].nunique() > 1:
        blocks += _replicas_blocks(ok, gid, _pick_rate(ok, rate))
    blocks += [Heading("Latency vs arrival rate", 3), _latency_figure(f"{gid}-latency", ok, labels, colors),
               Heading("Throughput", 3), _throughput_figure(f"{gid}-throughput", ok, labels, colors),
               Heading("Preemptions and restarts", 3),
               _preemption_figure(f"{gid}-preemptions", ok, labels, colors)]
    bounds = _bounds_table(ok)
    if bounds is not None:
        blocks += [Heading("Bounds", 3), Para("Per rate, means over the cells (they depend on the workload, "
                                              "not on the scheduler)."), bounds]
    blocks += _distribution_blocks(sweep_dir, ok, labels, colors, _pick_rate(ok, rate), gid, rate is not None)
    blocks += [Heading("Metrics (mean over seeds)", 3), _metrics_table(ok, labels)]
    return blocks


def _grid_value(value) -> str:
    """A list of plain values as 'a, b, c'; anything nested as compact JSON."""
    if isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) or v is None for v in value):
        return ", ".join("trace's own" if v is None else str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _cells_blocks(meta: dict, df: pd.DataFrame) -> list:
    grid = meta.get("grid", {})
    blocks: list = []
    if grid:
        rows = tuple((str(k), _grid_value(v)) for k, v in grid.items())
        blocks += [Heading("Grid"), Table(("parameter", "values"), rows)]
    failed = df[df["status"] != "ok"]
    blocks += [Heading("Cells"), Para(f"{len(df)} cells: {len(df) - len(failed)} ok, {len(failed)} failed.")]
    if len(failed):
        rows = tuple(_failed_row(r) for _, r in failed.iterrows())
        blocks.append(Table(("cell", "label", "rate (req/s)", "seed", "error"), rows))
    return blocks


def _failed_row(r: pd.Series) -> tuple[str, ...]:
    # The error's last line names the exception; a traceback lives in failed/<cell_id>.json.
    lines = [ln for ln in str(r.get("error") or "").splitlines() if ln.strip()]
    rate = _num(r["rate"]) if np.isfinite(r["rate"]) else "trace"
    return (str(r["cell_id"]), str(r["label"]), rate, _num(r.get("seed")),
            lines[-1][:300] if lines else "(no message)")


def sweep_report(sweep_dir: Path, rate: float | None = None) -> tuple[str, list]:
    """Title and blocks of a sweep's report."""
    meta, df = load_sweep(sweep_dir)
    if df.empty:
        raise ValueError(f"{sweep_dir}/results.parquet has no rows: the sweep ran no cell")
    ok = df[df["status"] == "ok"]
    if rate is not None and not ok.empty and not np.isclose(ok["x"].unique(), rate, rtol=1e-9, atol=1e-12).any():
        known = ", ".join(_num(x) for x in sorted(ok["x"].unique()))
        raise ValueError(f"--rate {rate:g}: no successful cell of {sweep_dir} ran at that rate (rates: {known})")
    version = meta.get("kvsched_version", "unknown")
    blocks: list = [Para(f"Sweep {sweep_dir} (written by kvsched {version}); report by kvsched {__version__}.")]
    blocks += _cells_blocks(meta, df)
    if ok.empty:
        return f"kvsched sweep report: {sweep_dir.name}", blocks + [Para("No cell ran successfully: nothing to plot.")]
    colors = label_colors(ok["label"])
    varies = {k: df[k].astype(str).nunique() > 1 for k in GROUP_KEYS if k in df}
    for i, (_, g) in enumerate(df.groupby("group", sort=True)):
        blocks += _group_blocks(sweep_dir, g, f"group{i + 1}", colors, rate, varies)
    return f"kvsched sweep report: {sweep_dir.name}", blocks


# --- runs ---------------------------------------------------------------------------------
def _is_run(d: Path) -> bool:
    return (d / "summary.json").is_file() and (d / "config.json").is_file()


def _run_labels(dirs: list[Path]) -> list[str]:
    """The run's label (scheduler and options, as `kvsched compare` writes it) or, in older runs,
    the scheduler's name; the directory's name when two runs share one."""
    configs = [load_json(d, "config") for d in dirs]
    names = [str(c.get("label") or c.get("scheduler", {}).get("name", d.name)) for c, d in zip(configs, dirs)]
    return names if len(set(names)) == len(names) else [d.name for d in dirs]


def _runs_table(dirs: list[Path], labels: list[str]) -> Table:
    rows = []
    for d, lab in zip(dirs, labels):
        s, cfg = load_json(d, "summary"), load_json(d, "config")
        trace = cfg.get("workload", {}).get("trace", "") if isinstance(cfg.get("workload"), dict) else ""
        rows.append((lab, d.name, str(trace), _num(s.get("capacity_tokens")), _num(s.get("num_requests")),
                     *(_num(s.get(k), sc) for _, k, sc in HEADLINE)))
    return Table(("label", "directory", "trace", "capacity (tokens)", "requests", *(h for h, _, _ in HEADLINE)),
                 tuple(rows))


def _runs_preemption_figure(dirs: list[Path], labels: list[str], colors: dict) -> Figure:
    summaries = [load_json(d, "summary") for d in dirs]

    def draw(axes):
        for ax, (key, ylabel) in zip(axes[0], (("num_preemptions", "preemptions (recompute)"),
                                               ("num_restarts", "restarts (kill-and-restart)"))):
            _bars(ax, labels, [float(s.get(key) or 0) for s in summaries], colors)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1))

    png = _png(draw, 1, 2, (11, 4.0))
    return Figure("preemptions", "Preemptions (tokens kept, prefilled again) and restarts (tokens "
                                 "discarded) per run.", png)


def runs_report(results: Path, dirs: list[Path]) -> tuple[str, list]:
    """Title and blocks of the report of one run or of several runs side by side."""
    labels = _run_labels(dirs)
    colors = label_colors(labels)
    blocks: list = [Para(f"{len(dirs)} run(s) under {results}; report by kvsched {__version__}."),
                    Heading("Summary"), _runs_table(dirs, labels),
                    Heading("Preemptions and restarts"), _runs_preemption_figure(dirs, labels, colors)]
    saved = [(lab, d) for lab, d in zip(labels, dirs) if _has_tables(d)]
    blocks.append(Heading("Distributions"))
    if saved:
        blocks.append(_cdf_figure("cdf", [(lab, [d]) for lab, d in saved], colors, ""))
        blocks.append(_kv_figure("kv-usage", saved, colors, ""))
    else:
        blocks.append(Para("CDFs and KV usage skipped: no run has its requests and steps tables."))
    return f"kvsched report: {results.name}", blocks


# --- entry point --------------------------------------------------------------------------
def _classify(results: Path) -> tuple[str, list[Path]]:
    """('sweep', []), ('runs', run directories), or an error saying what was expected."""
    if not results.exists():
        raise FileNotFoundError(f"{results}: no such file or directory")
    expected = ("expected a sweep directory (sweep.json and results.parquet), a run directory "
                "(summary.json and config.json, from `kvsched simulate --output`) or a directory of run "
                "directories (`kvsched compare --output`)")
    if not results.is_dir():
        raise ValueError(f"{results}: is a file; {expected}")
    if (results / "results.parquet").is_file():
        return "sweep", []
    if (results / "sweep.json").is_file():
        raise ValueError(f"{results}: sweep.json but no results.parquet (is the sweep still running?)")
    if _is_run(results):
        return "runs", [results]
    subruns = sorted(d for d in results.iterdir() if d.is_dir() and _is_run(d))
    if subruns:
        return "runs", subruns
    raise ValueError(f"{results}: nothing to report; {expected}")


def render_report(results: Path, out: Path | None = None, fmt: str = "html", rate: float | None = None) -> Path:
    """Write the report of a sweep, a run or a directory of runs; return the file written.

    fmt: "html" (one self-contained file) or "md" (markdown plus a folder `<name>_files`
    of PNGs beside it). out: the file (default RESULTS/report.html or report.md; a
    directory gets report.<fmt> inside). rate: the arrival rate (req/s) of a sweep's
    CDFs and KV usage (default: the highest rate at which every label completed runs)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    results = Path(results)
    kind, dirs = _classify(results)
    if kind == "sweep":
        title, blocks = sweep_report(results, rate)
    else:
        title, blocks = runs_report(results, dirs)
    out = Path(out) if out is not None else results / f"report.{fmt}"
    if out.is_dir():
        out = out / f"report.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        text = _html(title, blocks)
    else:
        text = _markdown(title, blocks, out.with_name(f"{out.stem}_files"))
    out.write_text(text, encoding="utf-8")
    return out
