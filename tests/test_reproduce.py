"""`kvsched reproduce`: every reproduction end to end at its tiny test scale, the report's
kvsched-vs-paper table against the written table, resuming, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from kvsched.experiments import reproduce as rp
from kvsched.experiments import wait

NAMES = list(rp.registry())


def _cli(*args: str, columns: int = 250) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}  # rich wraps at the terminal width
    return subprocess.run([sys.executable, "-m", "kvsched.cli", "reproduce", *args], capture_output=True, text=True,
                          timeout=120, check=False, env=env)


def parse_markdown_table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in `text` whose first header cell is `first_header`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = _cells(line)
        if cells and cells[0] == first_header:
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(cells, _cells(row))))
            return rows
    raise ValueError(f"no markdown table starting with {first_header!r}")


def _cells(line: str) -> list[str]:
    if not line.startswith("|"):
        return []
    parts = line.strip().strip("|").replace("\\|", "\0").split("|")
    return [p.strip().replace("\0", "|") for p in parts]


def _row(report: str, quantity: str) -> dict[str, str]:
    rows = parse_markdown_table(report, "quantity")
    match = [r for r in rows if r["quantity"] == quantity]
    assert match, f"no row {quantity!r} in the report; rows: {[r['quantity'] for r in rows]}"
    return match[0]


# Per reproduction: (a quantity of the report, a paper number the spec gives for it, the kvsched
# value computed from the written table NAME.parquet, formatted as the report formats it).
def _at(table: pd.DataFrame, **where) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for col, value in where.items():
        mask &= table[col] == value
    return table[mask]


def _wait_star(label: str):
    return lambda t: rp.fmt(wait.lambda_star(t[t["label"].notna()]).get(label))


def _e5(t):
    row = _at(t, case="single", rate=23.0, label="wait").iloc[0]
    return f"{row['mean_latency_s']:.2f} ± {row['sd_latency_s']:.2f}"


def _waiting_gain(t):
    wait_cp, no_wait = (_at(t, label=lbl, rate=12.0)["mean_latency_s"].iloc[0]
                        for lbl in ("wait-cp (tuned)", "no-wait (tuned)"))
    return rp.pct((no_wait - wait_cp) / no_wait)


def _worst_small(t):
    small = t[(t["scale"] == "small") & t["proven_optimal"].astype(bool)]
    return rp.fmt(float((small["mcsf_tel"] / small["ip_upper"]).max()))


def _reduction(t):
    at = _at(t, rate=50.0)
    lat = dict(zip(at["label"], at["mean_latency_s"]))
    return rp.pct(1 - lat["mcsf"] / lat["mc-benchmark"])


def _robust(t):
    mcsf = _at(t, rate=50.0, eps=0.2, scheduler="mcsf")["mean_latency_s"].iloc[0]
    best = t[(t["rate"] == 50.0) & t["eps"].isna() & t["feasible"].astype(bool)]["mean_latency_s"].min()
    return f"{rp.fmt(mcsf, 2)} / {rp.fmt(best, 2)}"


def _serving(t):
    means = t.groupby("policy")["mean_latency"].mean()
    return f"{rp.fmt(means['gsa'], 1)} / {rp.fmt(means['fcfs-restart'], 1)} (×{means['gsa'] / means['fcfs-restart']:.2f})"


CHECKS = {
    "wait-e1": ("λ* Sarathi (req/s)", "≈ 22", _wait_star("sarathi")),
    "wait-e2": ("λ* vLLM (Vidur) (req/s)", "≈ 18", _wait_star("vidur-vllm")),
    "wait-e3": ("mean latency at λ = 4.5, Sarathi (s)", "41.7",
                lambda t: rp.fmt(_at(t, kv_pool="100 %", label="sarathi", rate=4.5)["mean_latency_s"].iloc[0])),
    "wait-e4": ("middle-50 % latency at λ = 30, Sarathi (s)", "3.141 [notes]",
                lambda t: rp.fmt(_at(t, label="sarathi", rate=30.0)["middle50_latency_s"].iloc[0])),
    "wait-e5": ("single, λ = 23, WAIT-CP (fixed): mean ± sd (s)", "1.29 ± 0.10", _e5),
    "wait-e6": ("λ = 23: gain of Nested WAIT-CP over Sarathi (range over N)", "+30 to +50 % at every N",
                lambda t: f"{rp.pct(_at(t, rate=23.0)['gain'].min())} to {rp.pct(_at(t, rate=23.0)['gain'].max())}"),
    "wait-e7": ("gain of waiting (tuned WAIT-CP vs tuned no-wait) at λ = 12",
                "waiting costs a little at low load (no number)", _waiting_gain),
    "mcsf-synthetic-1": ("worst ratio, small instances", "1.074", _worst_small),
    "mcsf-synthetic-2": ("worst ratio, small instances", "1.227", _worst_small),
    "mcsf-trace": ("MC-SF's reduction of mean latency vs MC-Benchmark at λ = 50", "≈ 31 % (32.11 vs 46.47)",
                   _reduction),
    "mcsf-robustness": ("λ = 50, ε = 0.2: MC-SF / best α/β baseline mean latency (s)",
                        "MC-SF lower (no numbers published)", _robust),
    "gsa-sweep": ("gba: largest ratio to LB_count, general regime (an upper bound on ALG/OPT)",
                  "≤ 10.67 (published constant)",
                  lambda t: rp.fmt(float(_at(t, policy="gba", regime="general")["ratio_to_lb_count"].max()), 2)),
    "gsa-ablation": ("GSA-V refund on / off (mean ratio to LB_count)",
                     "4.49 / 4.733 (β = 2.30, mixed #1), 4.17 / 4.404 (mixed #2); calibration",
                     lambda t: "M = 8,192: " + " / ".join(rp.fmt(_at(t, policy=p)["ratio_to_lb_count"].mean())
                                                          for p in ("gsa", "gsa refund=off"))),
    "gsa-worst-case": ("worst ALG/OPT, gba", "≤ 10.67 (published constant); 1.556 (calibration, n ≤ 4, M ≤ 14)",
                       lambda t: rp.fmt(float(_at(t, policy="gba")["ratio_to_optimum"].max()), 4)),
    "gsa-serving": ("M = 8,192: GSA-V / FCFS-restart mean latency (s)", "— (no numbers published)", _serving),
}


def test_every_reproduction_has_a_check_and_a_spec_section() -> None:
    assert sorted(CHECKS) == sorted(NAMES)
    for entry in rp.registry().values():
        assert entry.paper in ("2504.11320", "2502.07115", "2601.22996") and entry.section
        assert entry.has_full == ("full" in entry.runtime_s)


@pytest.mark.parametrize("name", NAMES)
def test_reproduction_end_to_end_at_test_scale(name, tmp_path) -> None:
    result = rp.reproduce(name, tmp_path, scale="test")
    for file in (f"{name}.parquet", "summary.json", "config.json", "report.md"):
        assert (tmp_path / file).stat().st_size > 0, file
    pngs = sorted(tmp_path.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    report = (tmp_path / "report.md").read_text()
    for png in pngs:  # every figure is embedded by its relative path
        assert f"]({png.name})" in report
    assert "## Where and why they differ" in report and "kvsched reproduce " + name in report
    quantity, paper, kvsched = CHECKS[name]
    row = _row(report, quantity)
    table = pd.read_parquet(tmp_path / f"{name}.parquet")
    assert row["paper"] == paper
    assert row["kvsched"] == kvsched(table)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reproduction"] == name and summary["scale"] == "test"
    assert any(c["quantity"] == quantity for c in summary["comparison"])
    assert json.loads((tmp_path / "config.json").read_text())["command"] == f"kvsched reproduce {name} --test-scale"
    assert result.tasks_run > 0


def test_resume_reruns_only_the_missing_tasks_and_gives_the_same_table(tmp_path) -> None:
    first = rp.reproduce("mcsf-trace", tmp_path, scale="test")
    table = pd.read_parquet(tmp_path / "mcsf-trace.parquet")
    cells = sorted((tmp_path / "study" / "cells").iterdir())
    assert first.tasks_run == len(cells) and first.tasks_reused == 0
    removed = cells[:3]
    for cell in removed:
        for file in cell.iterdir():
            file.unlink()
        cell.rmdir()
    kept = {c.name: (c / "summary.json").stat().st_mtime_ns for c in cells[3:]}
    second = rp.reproduce("mcsf-trace", tmp_path, scale="test")
    assert second.tasks_run == 3 and second.tasks_reused == len(cells) - 3
    assert {c.name: (c / "summary.json").stat().st_mtime_ns for c in cells[3:]} == kept  # not run again
    assert all((c / "summary.json").is_file() for c in removed)
    again = pd.read_parquet(tmp_path / "mcsf-trace.parquet")
    pd.testing.assert_frame_equal(table, again)
    assert again["mean_latency_s"].dtype == float and again["alpha"].dtype == float  # NaN, not None
    # A third run finds every task done and runs none.
    assert rp.reproduce("mcsf-trace", tmp_path, scale="test").tasks_run == 0


def test_resumed_wait_table_keeps_numeric_dtypes(tmp_path) -> None:
    """Summaries read back from disk (NaN as null, sorted keys) give the same frame as fresh ones."""
    policies = wait.experiments(quick=True)["e1"].policies
    fresh = wait.sweep("E1", "p512d20", (26.0,), policies, replications=1, num_requests=150, out=tmp_path)
    loaded = wait.sweep("E1", "p512d20", (26.0,), policies, replications=1, num_requests=150, out=tmp_path)
    pd.testing.assert_frame_equal(fresh, loaded)
    assert not fresh["designable"].all()  # `wait` refuses 26 req/s: its row has no metrics
    assert fresh["mean_latency_s"].dtype == float and fresh["total_limit"].dtype == float


def test_cli_list_names_every_reproduction() -> None:
    proc = _cli("--list")
    assert proc.returncode == 0, proc.stderr
    for name in NAMES:
        assert name in proc.stdout
    assert "arXiv 2504.11320" in proc.stdout and "--quick" in proc.stdout


def test_cli_runs_a_reproduction_and_names_user_errors(tmp_path) -> None:
    proc = _cli("gsa-worst-case", "--test-scale", "--output", str(tmp_path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "report in" in proc.stdout and (tmp_path / "report.md").is_file()
    unknown = _cli("nope")
    assert unknown.returncode == 2 and "unknown reproduction 'nope'" in unknown.stderr
    assert "wait-e1" in unknown.stderr and "Traceback" not in unknown.stderr
    no_full = _cli("wait-e1", "--full")
    assert no_full.returncode == 2 and "no --full" in no_full.stderr
    assert _cli().returncode == 2
    assert _cli("wait-e1", "--jobs", "0").returncode == 2


def test_markdown_table_round_trip() -> None:
    text = rp.markdown_table(["quantity", "kvsched"], [["a | b", "1.5"], ["c", "—"]])
    assert parse_markdown_table("intro\n\n" + text + "\n\nafter", "quantity") == [
        {"quantity": "a | b", "kvsched": "1.5"}, {"quantity": "c", "kvsched": "—"}]
    assert rp.diff(22.0, 19) == "+3" and rp.diff(1.02, 1.005, kind="ratio") == "×1.01"
    assert rp.fmt(None) == "—" and rp.fmt(23.0) == "23" and rp.fmt(1.23456) == "1.235"


@pytest.mark.skipif(not __import__("kvsched.bounds", fromlist=["cpsat_available"]).cpsat_available(),
                    reason="needs ortools")
def test_synthetic_reports_proven_share_with_the_chosen_solver(tmp_path) -> None:
    """--ip-time-limit/--ip-solver reach the study, the command line and the report's proven-share rows."""
    rp.reproduce("mcsf-synthetic-2", tmp_path, scale="test", ip_time_limit_s=0.5, ip_solver="cpsat")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["command"] == "kvsched reproduce mcsf-synthetic-2 --test-scale --ip-time-limit 0.5 --ip-solver cpsat"
    table = pd.read_parquet(tmp_path / "mcsf-synthetic-2.parquet")
    big = table[table["scale"] == "paper"]
    assert set(big["ip_solver"]) == {"cpsat"}
    report = (tmp_path / "report.md").read_text()
    row = _row(report, "paper-size instances with a proven optimum")
    proven = int(big["proven_optimal"].sum())
    assert row["kvsched"].startswith(f"{proven} of {len(big)}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["headline"]["paper_size"]["proven_share"] == proven / len(big)
