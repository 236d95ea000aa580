"""Capacity search: the bisection's answer is checked with fresh simulator runs on both sides."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from kvsched.experiments.capacity import Criterion, run_search, search
from kvsched.experiments.runner import LocalExecutor
from kvsched.experiments.sweep import Grid, run_cell

SPEC = "synthetic:n=300,prompt=uniform(32,256),output=uniform(8,96)"


def grid(schedulers=("vllm", "mcsf"), seeds=(0,)) -> Grid:
    return Grid.from_dict({"schedulers": list(schedulers), "workload": {"trace": SPEC}, "capacities": [2048],
                           "seeds": list(seeds)})


def test_criterion_rules():
    slo = Criterion("slo", "e2e_p99", 2.0)
    assert slo.passes({"e2e_p99": 1.9}) and not slo.passes({"e2e_p99": 2.1})
    assert not slo.passes({"e2e_p99": None})  # no completed request: not sustained
    assert not slo.passes({"e2e_p99": 0.5, "num_rejected": 1})
    stable = Criterion("stable")
    ok = {"stability_ratio": 1.2, "completion_rate_per_s": 9.8, "offered_rate_per_s": 10.0}
    assert stable.passes(ok)
    assert not stable.passes({**ok, "stability_ratio": 1.6})
    assert not stable.passes({**ok, "completion_rate_per_s": 9.0})
    with pytest.raises(ValueError, match="needs slo_s"):
        Criterion("slo")
    with pytest.raises(ValueError, match="'slo' or 'stable'"):
        Criterion("fast")


def test_the_rate_found_passes_and_the_bracket_above_it_fails(tmp_path):
    crit = Criterion("slo", "e2e_p99", 3.0)
    table, probes = run_search(grid(seeds=(0, 1)), crit, tmp_path, lo=0.5, hi=2.0, rel_tol=0.02,
                               executor=LocalExecutor(2))
    assert list(table["status"]) == ["ok", "ok"] and set(table["limit"]) == {"bisection"}
    for row in table.itertuples():
        assert (row.bracket_hi - row.bracket_lo) <= 0.02 * row.bracket_lo
        cell = {**grid().cells()[0], "scheduler": row.scheduler}
        for seed in (0, 1):  # every seed meets the SLO at the answer
            assert run_cell({**cell, "rate": row.max_rate_per_s, "seed": seed}, save_runs=False)["e2e_p99"] <= 3.0
        worst = max(run_cell({**cell, "rate": row.bracket_hi, "seed": s}, save_runs=False)["e2e_p99"] for s in (0, 1))
        assert worst > 3.0  # and some seed misses it at the bracket's top
        mine = probes[probes["search_id"] == row.search_id]
        assert mine["passed"].any() and not mine["passed"].all()
    assert (tmp_path / "capacity.parquet").is_file() and len(pd.read_parquet(tmp_path / "probes.parquet")) == len(
        probes)


def test_limits_of_the_search_are_reported():
    base = {"cell": {**grid().cells()[0], "rate": None, "seed": None}, "seeds": [0], "lo": 1.0, "hi": 2.0,
            "rel_tol": 0.05}
    never = search({**base, "criterion": {"kind": "slo", "metric": "e2e_p99", "slo_s": 1e-6}, "max_rate": 64.0})
    assert never["max_rate_per_s"] is None and never["limit"] == "below lo" and never["num_probes"] == 1
    always = search({**base, "criterion": {"kind": "slo", "metric": "e2e_p99", "slo_s": 1e6}, "max_rate": 8.0})
    assert always["max_rate_per_s"] == 8.0 and always["limit"] == "max_rate"
    assert [p["rate"] for p in always["probes"]] == [1.0, 2.0, 4.0, 8.0]


def test_stability_search_on_the_command_line(tmp_path, exe):
    res = subprocess.run([exe, "capacity-search", "--schedulers", "vllm", "--trace", SPEC, "--capacities", "2048",
                          "--criterion", "stable", "--lo", "1", "--hi", "4", "--rel-tol", "0.1", "-o", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    table = pd.read_parquet(tmp_path / "capacity.parquet")
    rate = float(table["max_rate_per_s"].iloc[0])
    assert 1.0 <= rate and f"{rate:.4g}" in res.stdout
    summary = run_cell({**grid(("vllm",)).cells()[0], "rate": rate, "seed": 0}, save_runs=False)
    assert Criterion("stable").passes(summary)
    bad = subprocess.run([exe, "capacity-search", "--schedulers", "vllm", "--trace", SPEC, "-o", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "needs slo_s" in bad.stderr
