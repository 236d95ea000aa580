"""The GBA/GSA experiment functions and the `kvsched batch` command, on small real inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kvsched.bounds.batch import lb_count
from kvsched.bounds.solvers import solver_available
from kvsched.experiments import gsa as exp


def test_sample_batch_is_seeded_and_drops_what_cannot_fit():
    s1, o1, d1 = exp.sample_batch("azure-conv", 300, 4096, seed=4)
    s2, o2, d2 = exp.sample_batch("azure-conv", 300, 4096, seed=4)
    s3, _, _ = exp.sample_batch("azure-conv", 300, 4096, seed=5)
    assert np.array_equal(s1, s2) and np.array_equal(o1, o2) and d1 == d2
    assert not np.array_equal(s1, s3)
    assert len(s1) + d1 == 300 and d1 > 0  # conversation prompts often exceed 4k tokens
    assert ((s1 + o1) <= 4096).all() and (o1 >= 1).all()


def test_run_policy_counts_kills_in_the_theory_model():
    row = exp.run_policy(exp.Policy("gsa", "gsa", {"base": 2.0}), np.array([90]), np.array([10]), 100)
    assert (row["total_latency"], row["num_kills"], row["num_discarded_tokens"]) == (25, 4, 15)
    assert row["num_recomputed_prompt_tokens"] == 360  # s = 90 per restart, not the stored prompt_len
    assert row["clairvoyant"] is False and row["num_completed"] == 1


def test_run_policy_in_seconds_with_a_cost_model():
    s, o, _ = exp.sample_batch("azure-code", 40, 8192, seed=0)
    rounds = exp.run_policy(exp.Policy("gba", "gba"), s, o, 8192)
    seconds = exp.run_policy(exp.Policy("gba", "gba"), s, o, 8192, cost_model="llama2-7b-a100")
    assert seconds["num_steps"] == rounds["num_steps"]  # the same schedule, other clock
    assert 0 < seconds["makespan"] < rounds["makespan"]  # a 7B decode round is far below 1 s


def test_every_policy_of_the_sweep_completes_and_respects_the_bound(tmp_path):
    frame, summary = exp.sweep(traces=("azure-code",), sizes=(60,), capacities=(8192,), seeds=(0,), out=tmp_path)
    assert set(frame["policy"]) == {p.label for p in exp.ALL_POLICIES}
    assert (frame["num_completed"] == frame["num_jobs"]).all()
    assert (frame["ratio_to_lb_count"] >= 1.0).all()
    assert (frame["peak_memory_utilization"] <= 1.0).all()
    assert (frame["lb_count"] >= frame["lb_mix"]).all() and (frame["lb_mix"] >= frame["lb_len"]).all()
    non = frame[~frame["clairvoyant"]]
    assert {"gsa", "b-scaling", "fcfs-restart", "a-min"} <= set(non["policy"])  # they ran blind
    saved = pd.read_parquet(tmp_path / "sweep.parquet")
    assert len(saved) == len(frame)
    assert json.loads((tmp_path / "config.json").read_text())["study"] == "gsa-sweep"
    assert "azure-code n=60 M=8192" in summary["price_of_non_clairvoyance"]


@pytest.mark.skipif(not solver_available(), reason="no MILP solver installed")
def test_worst_case_study_against_the_exact_optimum(tmp_path):
    frame, summary = exp.worst_case(instances=4, max_jobs=4, max_capacity=12, seed=1, out=tmp_path)
    assert summary["all_optima_proven"] and summary["within_sanity_bounds"]
    assert (frame["ratio_to_optimum"] >= 1.0 - 1e-9).all()
    assert (frame["optimum"] >= frame["lb_count"]).all()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvsched.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_cli_batch_on_explicit_jobs_with_the_optimum():
    args = ["batch", "--job", "0,4", "--job", "0,4", "--job", "0,4", "--capacity", "10", "--json",
            "--policies", "gba,gba stagger=off,sorted-f,gsa"]
    if solver_available():
        args.append("--ip")
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    totals = {row["policy"]: row["total_latency"] for row in out["policies"]}
    assert totals == {"gba": 15, "gba stagger=off": 14, "sorted-f": 16, "gsa": totals["gsa"]}
    assert out["bounds"]["lb_count"] == 12
    if solver_available():
        assert out["optimum"] == {"value": 14, "proven": True, "lower_bound": 14}


def test_cli_batch_samples_a_trace_and_writes_files(tmp_path):
    proc = _cli("batch", "--trace", "azure-code", "-n", "50", "--capacity", "8192", "--policies", "gsa,vllm",
                "--output", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # rich wraps lines at the terminal width
    assert "ε = " in text and "lb_count = " in text and "general regime" in text
    frame = pd.read_parquet(tmp_path / "batch.parquet")
    assert list(frame["policy"]) == ["gsa", "vllm"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    s, o, _ = exp.sample_batch("azure-code", 50, 8192, seed=0)
    assert summary["bounds"]["lb_count"] == lb_count(s, o, 8192)


@pytest.mark.parametrize(("args", "message"), [
    (["batch", "--job", "0,4", "--policies", "gsa,nope"], "unknown policy 'nope'"),
    (["batch", "--job", "4"], "expected PROMPT,OUTPUT"),
    (["batch", "--job", "3,0"], "output >= 1"),
    (["batch", "--job", "9,9", "--capacity", "10"], "no job fits the capacity 10"),
])
def test_cli_batch_bad_input_is_named(args, message):
    proc = _cli(*args)
    assert proc.returncode != 0 and message in proc.stderr
