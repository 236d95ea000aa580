"""`kvsched report` on real sweeps (experiments.sweep.run_sweep) and real saved runs.

The HTML must stand alone (every image a data: URI, no scripts, no network), carry one
figure per expected plot and tables whose numbers are the results.parquet means; the
markdown must link PNGs that exist; bad inputs must fail with a message naming the path.
"""

from __future__ import annotations

import base64
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kvsched.cli import main
from kvsched.experiments.sweep import Grid, run_sweep
from kvsched.report import label_colors, render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPEC = "synthetic:n=50,rate=4,prompt=uniform(50,300),output=uniform(5,40)"
# Capacity 700 tokens: at 16 req/s vLLM and Sarathi preempt, at 2 req/s they do not.
GRID = {"schedulers": ["vllm", "sarathi"], "workload": {"trace": SPEC}, "rates": [2.0, 16.0],
        "capacities": [700], "seeds": [0, 1], "options": {"sarathi": {"chunk_size": 256}}}
LABELS = ["vllm", "sarathi chunk_size=256"]
SWEEP_FIGURES = 5  # latency vs rate, throughput, preemptions, CDFs, KV usage
RUN_FIGURES = 3  # preemptions, CDFs, KV usage


class Page(HTMLParser):
    """What a test needs from the HTML: every src/href, the images, the tables as text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        self.links += [a[k] for k in ("src", "href") if k in a]
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif re.fullmatch(r"h[1-6]", tag):
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data):
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)

    def table(self, *first_columns: str) -> list[dict[str, str]]:
        """The rows (as header -> cell) of the one table whose header starts so."""
        found = [t for t in self.tables if tuple(t[0][:len(first_columns)]) == first_columns]
        assert len(found) == 1, f"expected one table starting {first_columns}, found {len(found)}"
        return [dict(zip(found[0][0], row)) for row in found[0][1:]]


def _sweep(out: Path, **changes) -> Path:
    save_runs = changes.pop("save_runs", True)
    run_sweep(Grid.from_dict({**GRID, **changes}), out, save_runs=save_runs)
    return out


def _close(cell: str, expected: float) -> bool:
    """A table cell against the number it shows: 4 significant digits, whole numbers at 1000+."""
    return math.isclose(float(cell), expected, rel_tol=6e-4, abs_tol=0.5 if abs(expected) >= 1000 else 1e-12)


def _assert_self_contained(text: str, page: Page) -> None:
    assert text.startswith("<!DOCTYPE html>")
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert all(src.startswith("data:image/png;base64,") for src in page.links), page.links
    assert "http" not in text.lower() and "url(" not in text.lower()
    for src in page.images:
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == PNG_MAGIC and len(png) > 10_000


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """2 labels x 2 rates x 2 seeds, runs saved."""
    return _sweep(tmp_path_factory.mktemp("sweep") / "out")


@pytest.fixture(scope="module")
def sweep_html(sweep_dir) -> tuple[str, Page]:
    out = render_report(sweep_dir)
    assert out == sweep_dir / "report.html"
    text = out.read_text()
    return text, Page(text)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """`kvsched compare --output DIR`: DIR/vllm and DIR/sarathi."""
    d = tmp_path_factory.mktemp("runs") / "cmp"
    assert main(["compare", "--trace", SPEC, "--schedulers", "vllm,sarathi", "--capacity", "700",
                 "--no-progress", "--output", str(d)]) == 0
    return d


# --- sweeps ------------------------------------------------------------------------------------


def test_sweep_html_is_self_contained_with_every_figure(sweep_html):
    text, page = sweep_html
    _assert_self_contained(text, page)
    assert len(page.images) == SWEEP_FIGURES
    assert "Latency vs arrival rate" in page.headings and "Preemptions and restarts" in page.headings
    # Default CDF / KV-usage rate: the highest rate at which every label completed runs.
    assert "Distributions at 16 req/s" in page.headings
    cells = page.table("parameter", "values")
    assert {"parameter": "schedulers", "values": "vllm, sarathi"} in cells
    assert {"parameter": "rates", "values": "2.0, 16.0"} in cells
    assert "8 cells: 8 ok, 0 failed." in text


def test_sweep_metrics_table_holds_the_means_over_seeds(sweep_dir, sweep_html):
    df = pd.read_parquet(sweep_dir / "results.parquet")
    means = df.groupby(["label", "rate"]).mean(numeric_only=True)
    rows = sweep_html[1].table("label", "rate (req/s)", "runs")
    assert [(r["label"], float(r["rate (req/s)"])) for r in rows] == [(lab, x) for lab in LABELS for x in (2.0, 16.0)]
    for r in rows:
        m = means.loc[(r["label"], float(r["rate (req/s)"]))]
        assert r["runs"] == "2"
        for header, col, scale in (("E2E mean (s)", "e2e_mean", 1), ("E2E p99 (s)", "e2e_p99", 1),
                                   ("TTFT mean (s)", "ttft_mean", 1), ("TPOT mean (ms)", "tpot_mean", 1e3),
                                   ("throughput (tok/s)", "throughput_tokens_per_s", 1),
                                   ("preemptions", "num_preemptions", 1), ("latency / bound", "ratio_to_bound", 1)):
            assert _close(r[header], scale * m[col]), (r["label"], header, r[header], m[col])
    # The workload preempts at the high rate only: the table shows it.
    assert {r["preemptions"] != "0" for r in rows if r["rate (req/s)"] == "16"} == {True}
    assert {r["preemptions"] for r in rows if r["rate (req/s)"] == "2"} == {"0"}


def test_sweep_bounds_table_holds_volume_bound_and_fluid(sweep_dir, sweep_html):
    df = pd.read_parquet(sweep_dir / "results.parquet")
    rows = sweep_html[1].table("rate (req/s)", "volume lower bound on mean E2E (s)")
    assert [r["rate (req/s)"] for r in rows] == ["2", "16"]
    for r in rows:
        at = df[df["rate"] == float(r["rate (req/s)"])]
        assert _close(r["volume lower bound on mean E2E (s)"], at["bound_mean_latency_s"].mean())
        assert _close(r["fluid benchmark mean latency (s)"], at["fluid_mean_latency_s"].mean())
        assert r["fluid verdict"] in set(at["fluid_verdict"])  # one verdict per rate in this sweep
        # A lower bound: every run's mean latency is at least its own bound.
        assert (at["e2e_mean"] >= at["bound_mean_latency_s"]).all()


def test_markdown_links_pngs_that_exist(sweep_dir, tmp_path):
    out = render_report(sweep_dir, tmp_path / "sub" / "r.md", fmt="md", rate=2.0)
    text = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == SWEEP_FIGURES
    for link in links:
        assert link.startswith("r_files/") and not Path(link).is_absolute()
        assert (out.parent / link).read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "sub" / "r_files").iterdir()) == sorted(Path(x).name for x in links)
    assert "### Distributions at 2 req/s" in text
    assert "| vllm | 16 | 2 |" in text and "| sarathi chunk_size=256 | 2 | 2 |" in text


def test_rate_that_the_sweep_did_not_run_is_an_error(sweep_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--rate 3: no successful cell of .* ran at that rate \(rates: 2, 16\)"):
        render_report(sweep_dir, tmp_path / "x.html", rate=3.0)
    assert not (tmp_path / "x.html").exists()


def test_sweep_without_saved_runs_skips_cdfs_with_a_note_per_group(tmp_path):
    d = _sweep(tmp_path / "s", seeds=[0], capacities=[700, 2000], save_runs=False)
    text = render_report(d).read_text()
    page = Page(text)
    # One section per capacity of the grid (the run's own, 688 = 43 whole 16-token blocks of
    # 700, is the table's effective_capacity_tokens), each without the two figures that need
    # the saved runs.
    assert [h for h in page.headings if h.startswith("trace ")] == [
        f"trace {SPEC}, capacity 700 tokens", f"trace {SPEC}, capacity 2000 tokens"]
    assert len(page.images) == 2 * (SWEEP_FIGURES - 2)
    assert text.count("the cells&#x27; runs were not saved (the sweep ran with --no-save-runs)") == 2
    tables = [t for t in page.tables if t[0][:3] == ["label", "rate (req/s)", "runs"]]
    assert len(tables) == 2 and all([row[2] for row in t[1:]] == ["1"] * 4 for t in tables)


def test_trace_rate_sweep_draws_bars_at_the_offered_rate(tmp_path):
    # No rates: every cell replays the spec's own arrivals (rate NaN in results.parquet).
    grid = {k: v for k, v in GRID.items() if k != "rates"}
    d = tmp_path / "own"
    run_sweep(Grid.from_dict({**grid, "seeds": [0]}), d)
    df = pd.read_parquet(d / "results.parquet")
    assert df["rate"].isna().all()
    text = render_report(d).read_text()
    page = Page(text)
    assert len(page.images) == SWEEP_FIGURES
    offered = df["offered_rate_per_s"].mean()
    assert any(h.startswith("Distributions at the trace's own arrivals (about") for h in page.headings)
    rows = page.table("label", "rate (req/s)", "runs")
    assert [r["label"] for r in rows] == LABELS and all(_close(r["rate (req/s)"], offered) for r in rows)


def test_all_cells_failed_gives_a_report_that_says_so(tmp_path):
    d = _sweep(tmp_path / "bad", workload={"trace": str(tmp_path / "missing.csv")}, seeds=[0])
    text = render_report(d).read_text()
    page = Page(text)
    assert page.images == []
    assert "4 cells: 0 ok, 4 failed." in text and "No cell ran successfully: nothing to plot." in text
    failed = page.table("cell", "label", "rate (req/s)", "seed", "error")
    assert sorted(r["label"] for r in failed) == sorted(LABELS * 2)
    assert all("missing.csv" in r["error"] for r in failed)
    assert {r["cell"] for r in failed} == {p.stem for p in (d / "failed").iterdir()}


# --- runs ---------------------------------------------------------------------------------------


def test_directory_of_runs(runs_dir):
    text = render_report(runs_dir).read_text()
    page = Page(text)
    _assert_self_contained(text, page)
    assert len(page.images) == RUN_FIGURES
    rows = page.table("label", "directory")
    assert [r["label"] for r in rows] == ["sarathi", "vllm"]  # directories in name order
    for r in rows:
        summary = pd.read_json(runs_dir / r["directory"] / "summary.json", typ="series")
        assert r["completed"] == str(summary["num_completed"])
        assert _close(r["E2E mean (s)"], summary["e2e_mean"])
        assert _close(r["latency / bound"], summary["ratio_to_bound"])
        # The capacity the run had: 700 tokens rounded down to whole 16-token blocks.
        assert r["trace"] == SPEC and r["capacity (tokens)"] == str(summary["capacity_tokens"]) == "688"


def test_single_run_directory_markdown(runs_dir, tmp_path):
    out = render_report(runs_dir / "vllm", tmp_path, fmt="md")
    assert out == tmp_path / "report.md"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", out.read_text())
    assert len(links) == RUN_FIGURES and all((tmp_path / x).is_file() for x in links)


# --- bad inputs and the CLI ---------------------------------------------------------------------


def test_bad_inputs_name_the_path_and_what_was_expected(tmp_path, sweep_dir):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such file or directory"):
        render_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: nothing to report; expected a sweep directory"):
        render_report(tmp_path / "empty")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match=r"f\.txt: is a file; expected a sweep directory"):
        render_report(tmp_path / "f.txt")
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "sweep.json").write_text("{}")
    with pytest.raises(ValueError, match=r"running: sweep.json but no results.parquet"):
        render_report(tmp_path / "running")
    with pytest.raises(ValueError, match=r"format must be one of html, md, got 'pdf'"):
        render_report(sweep_dir, tmp_path / "r.pdf", fmt="pdf")
    assert not (tmp_path / "r.pdf").exists()


def test_cli_report_writes_and_reports_errors_in_one_line(tmp_path, capsys, sweep_dir):
    d = _sweep(tmp_path / "bad", workload={"trace": str(tmp_path / "missing.csv")}, seeds=[0], rates=[2.0])
    out = tmp_path / "r.md"
    assert main(["report", str(d), "--format", "md", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert "0 ok, 2 failed" in out.read_text()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kvsched: error: ") and "nowhere" in err
    assert main(["report", str(sweep_dir), "--rate", "5", "-o", str(tmp_path / "x.html")]) == 2
    assert "no successful cell" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["report", str(d), "--format", "pdf"])
    assert exc.value.code == 2


def test_label_colors_are_stable_and_distinct():
    colors = label_colors(["b", "a", "b", "c"])
    assert list(colors) == ["b", "a", "c"]
    assert len({tuple(np.round(c, 6)) for c in colors.values()}) == 3
    assert label_colors(["b", "a", "c"]) == colors
