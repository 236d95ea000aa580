"""`kvsched reproduce NAME`: each experiment of the three papers, one command, one report.

A `Reproduction` names one experiment of the WAIT paper (arXiv 2504.11320), the MC-SF
paper (arXiv 2502.07115) or the GBA/GSA paper (arXiv 2601.22996), the paper's section that
describes it and how long it takes. Its `run` function runs the existing study
(`experiments.wait`, `.mcsf`, `.gsa`) and returns `Findings`: the table its numbers come
from, kvsched's numbers beside the paper's (`Comparison` rows), figures, the differences
computed from those numbers and the reasons for them. `reproduce` writes into OUT:

    report.md        what was run, kvsched beside the paper, the figure, where and why they differ
    NAME.parquet     the table (NAME.csv too when it is small)
    *.png            the figure(s)
    summary.json     the comparison rows and headline numbers
    config.json      the command, the scale, every setting
    study*/          the study's own files and cells/, the saved tasks a re-run resumes from

Scales: "default" (the paper's settings where they run in minutes on 2 cores, otherwise
the largest practical size, said so in the report), "quick" (a first look in a minute or
two), "full" (the paper's size where the default is smaller; hours) and "test" (seconds;
used by the tests). The studies run through `runner.run_tasks`, so an interrupted
reproduction resumes when re-run with the same OUT, and `executor` may be Ray.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from kvsched import __version__
from kvsched.experiments.study import Executor, StudyProgress
from kvsched.report import markdown_table
from kvsched.results import write_json

SCALES = ("default", "quick", "full", "test")
CSV_MAX_ROWS = 5000  # a table this small is also written as CSV (readable in a browser / diff)
PartProgress = Callable[[str, int, int], None]  # (part of the reproduction, done, total)


@dataclass(frozen=True)
class Context:
    """Where and how a reproduction runs."""

    out: Path
    scale: str = "default"
    jobs: int = 1
    executor: Executor | None = None
    progress: PartProgress | None = None
    # Reproductions that solve the hindsight IP (mcsf-synthetic-*): the time limit per
    # paper-size instance (None: the scale's own) and who solves it (kvsched.bounds.hindsight).
    ip_time_limit_s: float | None = None
    ip_solver: str = "auto"

    def study_dir(self, part: str = "study") -> Path:
        """The folder a study writes its own files and its resumable cells/ into."""
        return self.out / part

    def tracker(self, part: str) -> StudyProgress | None:
        """A (done, total) progress callback for one part of the reproduction."""
        if self.progress is None:
            return None
        report = self.progress
        return lambda done, total: report(part, done, total)

    def pick(self, **by_scale):
        """The value for this scale: pick(default=..., quick=..., test=..., full=...);
        a scale without its own value takes the default's."""
        return by_scale.get(self.scale, by_scale["default"])


@dataclass
class Comparison:
    """One row of the report's main table: kvsched's number beside the paper's."""

    quantity: str
    kvsched: str
    paper: str
    difference: str = ""


@dataclass
class Findings:
    """What a reproduction measured and how it compares with the paper."""

    table: pd.DataFrame  # written as NAME.parquet: the numbers of the comparison come from it
    table_note: str  # one line saying what a row of the table is
    settings: dict  # the exact settings (config.json and the report)
    comparisons: list[Comparison]
    figures: list[tuple[str, str]]  # (file name in OUT, caption)
    differences: list[str]  # computed from the numbers
    reasons: list[str]  # why they differ (the project's defaults where the paper is open, the docs)
    headline: dict  # the headline numbers for summary.json
    extra_tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    notes: list[str] = field(default_factory=list)  # caveats printed before the table


@dataclass(frozen=True)
class Reproduction:
    """One experiment of one paper, runnable with `kvsched reproduce NAME`."""

    name: str
    paper: str  # arXiv id
    section: str  # the paper's section (and figure or table) the experiment comes from
    description: str
    run: Callable[[Context], Findings]
    runtime_s: dict[str, float]  # measured wall time per scale (2 cores); "full" is an estimate
    default_note: str = "the paper's settings"  # how the default relates to the paper's size
    full_note: str = ""  # what --full runs ("" when the default is the paper's size)

    @property
    def has_full(self) -> bool:
        return bool(self.full_note)


@dataclass
class Result:
    name: str
    out: Path
    report: Path
    findings: Findings
    wall_time_s: float
    tasks_run: int
    tasks_reused: int


PAPERS = {  # arXiv id -> citation printed at the top of every report (docs/conventions.md)
    "2504.11320": ("Ao, Luo, Simchi-Levi and Wang, *Optimizing LLM Inference: Fluid-Guided Online Scheduling "
                   "with Memory Constraints*, arXiv 2504.11320 (v4)"),
    "2502.07115": ("Jaillet, Jiang, Mellou, Molinaro, Podimata and Zhou, *Online Scheduling for LLM Inference "
                   "with KV Cache Constraints*, arXiv 2502.07115"),
    "2601.22996": ("Feng, Yang and Zhang, *Competitive Non-Clairvoyant KV-Cache Scheduling for LLM Inference*, "
                   "arXiv 2601.22996 (abstract only; kvsched's GBA and GSA are reconstructions, docs/gsa.md)"),
}


# --- the registry -------------------------------------------------------------------------------
def registry() -> dict[str, Reproduction]:
    """Every reproduction by name, in the order of the papers and their sections."""
    # The family modules import this one for its helpers, so they are imported here.
    from kvsched.experiments import reproduce_gsa, reproduce_mcsf, reproduce_wait

    entries = (*reproduce_wait.entries(), *reproduce_mcsf.entries(), *reproduce_gsa.entries())
    return {e.name: e for e in entries}


def get(name: str) -> Reproduction:
    entries = registry()
    if name not in entries:
        raise KeyError(f"unknown reproduction {name!r}; known: {', '.join(entries)}")
    return entries[name]


def command(name: str, scale: str, ip_time_limit_s: float | None = None, ip_solver: str = "auto") -> str:
    """The command line that reproduces these numbers (--output, --jobs, --ray change none)."""
    flag = {"quick": " --quick", "full": " --full", "test": " --test-scale"}.get(scale, "")
    if ip_time_limit_s is not None:
        flag += f" --ip-time-limit {ip_time_limit_s:g}"
    if ip_solver != "auto":
        flag += f" --ip-solver {ip_solver}"
    return f"kvsched reproduce {name}{flag}"


def reproduce(name: str, out: str | Path, *, scale: str = "default", jobs: int = 1, executor: Executor | None = None,
              progress: PartProgress | None = None, ip_time_limit_s: float | None = None,
              ip_solver: str = "auto") -> Result:
    """Run reproduction `name` into `out` (resuming what an earlier call left there).

    `ip_time_limit_s` and `ip_solver` reach the reproductions that solve the hindsight IP."""
    entry = get(name)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if scale == "full" and not entry.has_full:
        raise ValueError(f"{name} has no --full: its default already is the paper's size")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before = _num_cells(out)
    t0 = time.perf_counter()
    findings = entry.run(Context(out, scale, jobs, executor, progress, ip_time_limit_s, ip_solver))
    wall = time.perf_counter() - t0
    ran = _num_cells(out) - before
    result = Result(name, out, out / "report.md", findings, wall, ran, before)
    write_outputs(entry, result, scale, command(name, scale, ip_time_limit_s, ip_solver))
    return result


def _num_cells(out: Path) -> int:
    return sum(1 for _ in out.glob("**/cells/*/summary.json"))


# --- writing ------------------------------------------------------------------------------------
def write_outputs(entry: Reproduction, result: Result, scale: str, cmd: str | None = None) -> None:
    """NAME.parquet (+ CSV), summary.json, config.json and report.md; `cmd` the command line run."""
    cmd = cmd or command(entry.name, scale)
    out, f = result.out, result.findings
    f.table.to_parquet(out / f"{entry.name}.parquet", index=False)
    if len(f.table) <= CSV_MAX_ROWS:
        f.table.to_csv(out / f"{entry.name}.csv", index=False)
    write_json(out / "summary.json", {
        "reproduction": entry.name, "paper": f"arXiv {entry.paper}", "section": entry.section, "scale": scale,
        "comparison": [asdict(c) for c in f.comparisons], "headline": f.headline,
        "wall_time_s": round(result.wall_time_s, 1),
        "tasks": {"run": result.tasks_run, "reused_from_earlier_run": result.tasks_reused}})
    write_json(out / "config.json", {
        "reproduction": entry.name, "paper": f"arXiv {entry.paper}", "section": entry.section, "scale": scale,
        "command": cmd, "kvsched_version": __version__, "settings": f.settings})
    (out / "report.md").write_text(render_report(entry, result, scale, cmd))


def render_report(entry: Reproduction, result: Result, scale: str, cmd: str | None = None) -> str:
    f = result.findings
    cmd = cmd or command(entry.name, scale)
    lines = [f"# `{entry.name}`: {entry.description}", "",
             (f"Paper: {PAPERS[entry.paper]}, {entry.section}. kvsched's defaults where the paper is open: "
              "`docs/conventions.md`."), "",
             "## What was run", "", f"```bash\n{cmd}\n```", "",
             f"- Scale: **{scale}** ({_scale_text(entry, scale)}).",
             f"- Runtime: {runtime_text(entry, scale)} for this scale; {_invocation_text(result)}.",
             ("- `--jobs N`, `--ray [ADDRESS]` and `--output DIR` change where and how fast it runs, "
             "not the numbers: every random choice is seeded."),
             *[f"- {k}: {_setting(v)}" for k, v in f.settings.items()], ""]
    lines += [f"> {n}" for n in f.notes] + ([""] if f.notes else [])
    lines += ["## kvsched beside the paper", "",
              markdown_table(["quantity", "kvsched", "paper", "difference"],
                             [[c.quantity, c.kvsched, c.paper, c.difference] for c in f.comparisons]), ""]
    for caption, table in f.extra_tables:
        lines += [f"**{caption}**", "", frame_markdown(table), ""]
    for name, caption in f.figures:
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    lines += ["## Where and why they differ", "", "What the numbers say:", ""]
    lines += [f"- {d}" for d in f.differences] + ["", "Why:", ""] + [f"- {r}" for r in f.reasons] + [""]
    lines += ["## Files", "", f"- `{entry.name}.parquet`: {f.table_note}",
              "- `summary.json`: the table above and the headline numbers; `config.json`: every setting",
              ("- `study*/`: the study's own files and `cells/`, one saved task each (a re-run of the same "
              "command with the same `--output` resumes from them)"), ""]
    return "\n".join(lines)


def _invocation_text(result: Result) -> str:
    took = format_duration(result.wall_time_s)
    if result.tasks_run == 0:
        return f"this report was rebuilt in {took} from the {result.tasks_reused} tasks an earlier run saved"
    return (f"this invocation took {took} ({result.tasks_run} tasks run; {result.tasks_reused} saved tasks were "
            "already in the folder)")


def runtime_text(entry: Reproduction, scale: str) -> str:
    """The registry's runtime of a scale: measured on 2 cores, or estimated for --full."""
    seconds = entry.runtime_s.get(scale)
    if seconds is None:
        return "not measured"
    return f"about {format_duration(seconds)} on 2 cores (estimate)" if scale == "full" else \
        f"{format_duration(seconds)} measured on 2 cores"


def _scale_text(entry: Reproduction, scale: str) -> str:
    return {"default": entry.default_note, "quick": "a smaller version for a first look; its numbers are noisier",
            "full": entry.full_note or "the paper's size",
            "test": "the tiny scale of the tests; its numbers mean nothing"}[scale]


def _setting(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if len(value) <= 20 else f"{len(value)} values"
    return str(value) if not isinstance(value, dict) else json.dumps(value, default=str)


def frame_markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a markdown table, floats with 3 decimals, rates (λ columns) as named."""
    rates = [str(c).startswith("λ") for c in frame.columns]
    rows = [[fmt_rate(v) if is_rate else fmt(v) for v, is_rate in zip(row, rates)]
            for row in frame.itertuples(index=False)]
    return markdown_table([str(c) for c in frame.columns], rows)


# --- numbers ------------------------------------------------------------------------------------
def fmt(value, digits: int = 3) -> str:
    """A number for a report: None/NaN as "—", integers as integers, floats rounded."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def pct(value: float | None, digits: int = 1, *, signed: bool = True) -> str:
    """A fraction as a percentage: signed for gains and differences, unsigned for rates."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:+.{digits}f} %" if signed else f"{100 * value:.{digits}f} %"


def fmt_rate(value: float | None) -> str:
    """An arrival rate (req/s) as the sweep names it: 0.5, 22."""
    return "—" if value is None or not math.isfinite(value) else f"{value:g}"


def diff(kvsched: float | None, paper: float | None, *, kind: str = "abs", digits: int = 2) -> str:
    """kvsched − paper ("abs"), kvsched / paper ("ratio") or the relative gap ("rel")."""
    if kvsched is None or paper is None or not math.isfinite(kvsched):
        return "—"
    if kind == "ratio":
        return f"×{kvsched / paper:.{digits}f}" if paper else "—"
    if kind == "rel":
        return f"{100 * (kvsched - paper) / abs(paper):+.0f} %" if paper else "—"
    d = kvsched - paper
    return "0" if abs(d) < 10 ** -digits / 2 else f"{d:+.{digits}f}".rstrip("0").rstrip(".")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds / 3600:.1f} h"


# --- figures ------------------------------------------------------------------------------------
def bar_figure(path: Path, groups: dict[str, dict[str, float]], *, ylabel: str, title: str,
               log: bool = False, lines: dict[str, float] | None = None) -> None:
    """Grouped bars: one group per key of `groups` (e.g. a rate), one bar per inner key;
    `lines` draws labelled horizontal reference lines (e.g. published constants)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(dict.fromkeys(k for g in groups.values() for k in g))
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(groups) * max(1, len(labels)) / 3), 4.2))
    for k, label in enumerate(labels):
        values = [groups[g].get(label, float("nan")) for g in groups]
        ax.bar(x + (k - (len(labels) - 1) / 2) * width, values, width, label=label, color=plt.cm.tab20(k % 20))
    for k, (label, y) in enumerate((lines or {}).items()):
        ax.axhline(y, ls="--", lw=1, color=plt.cm.Set1(k % 9), label=label)
    ax.set_xticks(x, list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(labels) > 6 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = [
    "SCALES",
    "Comparison",
    "Context",
    "Findings",
    "Reproduction",
    "Result",
    "bar_figure",
    "command",
    "diff",
    "fmt",
    "format_duration",
    "frame_markdown",
    "get",
    "markdown_table",
    "pct",
    "registry",
    "reproduce",
]
