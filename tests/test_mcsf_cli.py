"""`kvsched bound`, `kvsched experiment` and the theory-mode CLI, run as a user runs them.

Every test goes through the installed console script (a real subprocess, the real HiGHS
solver, real files read back with pandas). Instances are tiny so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from kvsched.bounds import cpsat_available

TV1 = "arrival_time,prompt_len,output_len\n0,2,2\n0,2,8\n0,2,5\n0,2,2\n0,2,1\n"



def kvsched(exe: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=600, check=False)
    if ok and proc.returncode != 0:
        pytest.fail(f"kvsched {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.csv"
    path.write_text(TV1)
    return path


def test_bound_json_names_every_bound_and_the_proven_optimum(exe, tiny):
    out = json.loads(kvsched(exe, "bound", "--trace", str(tiny), "--capacity", "10", "--theory", "--json").stdout)
    values = {b["name"]: b["value"] for b in out["bounds"]}
    assert values["sum-output"] == 18 and values["volume"] == 20
    assert values["lemma-4.7"] == pytest.approx(5.8833, abs=1e-4)
    assert values["lp"] >= 21.6444 - 1e-4  # ceil(LP) or LP itself, never below the LP value
    cert = out["optimum"].pop("certificate")
    assert out["optimum"] == {"status": "optimal", "value": 24}
    assert cert["proved_by"] in ("highspy", "cpsat") and cert["upper_bound"] == cert["lower_bound"] == 24
    assert out["best_lower_bound"]["value"] == 24
    heur = {h["scheduler"]: h["total_latency"] for h in out["heuristics"]}
    assert heur == {"mcsf": 26, "mc-benchmark": 42, "zhou-jiang": 26}  # spec TV-1: MC-SF is not optimal


def test_bound_table_says_optimal(exe, tiny):
    text = kvsched(exe, "bound", "--trace", str(tiny), "--capacity", "10", "--theory").stdout
    assert "optimum: 24 (proven optimal by " in text and "mcsf: total latency 26" in text


@pytest.mark.parametrize("solver", ["highs", "cpsat", "best"])
def test_bound_names_the_solver_that_proved_it(exe, tiny, solver):
    if solver != "highs" and not cpsat_available():
        pytest.skip("needs ortools")
    out = json.loads(kvsched(exe, "bound", "--trace", str(tiny), "--capacity", "10", "--theory", "--json",
                             "--solver", solver).stdout)
    cert = out["optimum"]["certificate"]
    assert out["optimum"]["value"] == 24
    assert cert["proved_by"] == {"highs": "highspy", "cpsat": "cpsat"}.get(solver, cert["proved_by"])
    assert cert["proved_by"] in ("highspy", "cpsat")
    text = kvsched(exe, "bound", "--trace", str(tiny), "--capacity", "10", "--theory", "--solver", solver).stdout
    assert f"proven optimal by {cert['proved_by']}" in text


def test_bound_with_a_tiny_time_limit_reports_a_proven_interval(exe, tmp_path):
    # 14 requests, M = 12: HiGHS cannot close it in 0.05 s; the answer is an interval.
    rows = ["arrival_time,prompt_len,output_len"] + [f"0,{1 + i % 3},{3 + (5 * i) % 8}" for i in range(14)]
    path = tmp_path / "mid.csv"
    path.write_text("\n".join(rows) + "\n")
    out = json.loads(kvsched(exe, "bound", "--trace", str(path), "--capacity", "12", "--theory", "--json",
                             "--time-limit", "0.05").stdout)
    opt = out["optimum"]
    if opt["status"] == "interval":
        assert opt["lower"] <= opt["upper"]
        assert opt["upper"] <= min(h["total_latency"] for h in out["heuristics"])
        cert = opt["certificate"]
        assert cert["lower_bound"] == opt["lower"] and cert["lower_bound_solver"] and cert["upper_bound_from"]
    else:
        assert opt["status"] == "optimal"


def test_bound_without_solvers_gives_the_closed_forms(exe, tiny):
    out = json.loads(kvsched(exe, "bound", "--trace", str(tiny), "--capacity", "10", "--theory", "--json",
                             "--no-ip", "--no-lp").stdout)
    assert [b["name"] for b in out["bounds"]] == ["sum-output", "volume", "waste", "lemma-4.7"]
    assert out["optimum"] is None and out["ip"] is None and out["lp"] is None


def _spawned_children(pid: int) -> list[int]:
    """Processes that `multiprocessing` spawned from `pid` to run calls (its resource tracker is not one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # the process left while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"--multiprocessing-fork" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the solver's process in /proc")
def test_bound_whose_solver_process_dies_fails_with_one_line(exe, tmp_path):
    """The solver runs in a child process: killing it (as the OOM killer would) ends `kvsched bound`
    with a one-line error and exit code 1, not with the command itself killed."""
    from kvsched.experiments.mcsf_instances import instance_rng, model1_instance

    inst = model1_instance(instance_rng(0, 1, 0))  # paper size (n = 58, M = 40): no solver closes it in 600 s
    path = tmp_path / "paper.csv"
    path.write_text("arrival_time,prompt_len,output_len\n"
                    + "".join(f"{a},{s},{o}\n" for a, s, o in zip(*inst.arrays(), strict=True)))
    proc = subprocess.Popen([exe, "bound", "--trace", str(path), "--capacity", str(inst.capacity), "--theory",
                             "--json", "--no-lp", "--time-limit", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (children := _spawned_children(proc.pid)):
            assert proc.poll() is None, f"kvsched bound ended before its solver started: {proc.communicate()}"
            assert time.monotonic() < deadline, "no solver process appeared within 300 s"
            time.sleep(0.05)
        os.kill(children[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kvsched: error: the solver's process died (signal SIGKILL) before it answered"), err


def test_bound_in_trace_mode_gives_the_volume_bound_in_seconds(exe, tiny):
    out = json.loads(kvsched(exe, "bound", "--trace", str(tiny), "--capacity", "10", "--json").stdout)
    assert out["mode"] == "trace" and out["optimum"] is None
    assert out["bounds"][0]["name"] == "volume" and out["bounds"][0]["value"] > 0
    assert any("--theory" in n for n in out["notes"])


def test_bound_rejects_fractional_arrivals_in_theory_mode(exe, tmp_path):
    path = tmp_path / "frac.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0,2,2\n0.5,2,3\n")
    proc = kvsched(exe, "bound", "--trace", str(path), "--capacity", "10", "--theory", ok=False)
    assert proc.returncode == 2 and "id 1" in proc.stderr and "0.5" in proc.stderr and "Traceback" not in proc.stderr


def test_bound_leaves_out_requests_that_never_fit(exe, tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("arrival_time,prompt_len,output_len\n0,2,2\n0,9,5\n")
    out = json.loads(kvsched(exe, "bound", "--trace", str(path), "--capacity", "10", "--theory", "--json").stdout)
    assert out["optimum"]["status"] == "optimal" and out["optimum"]["value"] == 2
    assert any("never fit" in n for n in out["notes"])


def test_theory_mode_simulation_reproduces_tv1_and_reports_its_bound_ratio(exe, tiny):
    out = json.loads(kvsched(exe, "simulate", "--trace", str(tiny), "--capacity", "10", "--theory",
                             "--scheduler", "mcsf", "--json").stdout)
    assert out["total_latency_s"] == 26 and out["peak_kv_tokens"] == 10
    assert out["bound_name"] == "volume" and out["ratio_to_bound"] == pytest.approx(26 / 20)


def test_noisy_predictions_reach_the_scheduler(exe):
    args = ["compare", "--trace", "synthetic:n=300,rate=400,prompt=20,output=uniform(5,60)", "--capacity", "600",
            "--schedulers", "mcsf", "--json", "--block-size", "1"]
    exact = json.loads(kvsched(exe, *args).stdout)[0]
    noisy = json.loads(kvsched(exe, *args, "--predictions", "relative:eps=0.8").stdout)[0]
    assert exact["e2e_mean"] != noisy["e2e_mean"]
    bad = kvsched(exe, *args, "--predictions", "relative:alpha=2", ok=False)
    assert bad.returncode == 2 and "does not take 'alpha'" in bad.stderr


def test_alpha_protection_overflow_is_a_clear_error(exe):
    proc = kvsched(exe, "simulate", "--trace", "synthetic:n=50,rate=100,prompt=4,output=40", "--capacity", "120",
                   "--theory", "--scheduler", "alpha-protection", "-o", "alpha=0", ok=False)
    assert proc.returncode == 2 and "overflow at step" in proc.stderr and "Traceback" not in proc.stderr


def test_synthetic_experiment_writes_files_pandas_reads(exe, tmp_path):
    out = tmp_path / "syn"
    kvsched(exe, "experiment", "mcsf-synthetic", "--model", "2", "--scale", "small", "--instances", "3",
            "--time-limit", "30", "--output", str(out), "--no-progress")
    frame = pd.read_parquet(out / "instances.parquet")
    assert len(frame) == 3 and set(frame["scale"]) == {"small"}
    assert (frame["ip_lower"] <= frame["ip_upper"]).all()
    assert (frame["ip_upper"] <= frame[["mcsf_tel", "mc_benchmark_tel"]].min(axis=1)).all()
    assert (frame["volume_bound"] <= frame["ip_upper"]).all()
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert summary["paper"]["mean"] == 1.047 and config["model"] == 2 and config["scale"] == "small"


def test_trace_experiment_is_deterministic(exe, tmp_path):
    args = ["experiment", "mcsf-trace", "--rates", "40", "--num-requests", "300", "--no-alpha-search",
            "--no-progress"]
    for name in ("a", "b"):
        kvsched(exe, *args, "--output", str(tmp_path / name))
    # Same seed, same bytes: no wall-clock time is written.
    for name in ("runs.parquet", "summary.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a = pd.read_parquet(tmp_path / "a" / "runs.parquet")
    assert len(a) == 8 and set(a["scheduler"]) == {"mcsf", "mc-benchmark", "alpha-protection", "beta-clearing"}
    assert (a.loc[a["feasible"], "peak_kv_tokens"] <= 16_492).all()


def test_simulate_summary_can_compare_with_the_ip_bound(exe, tiny):
    out = json.loads(kvsched(exe, "simulate", "--trace", str(tiny), "--capacity", "10", "--theory",
                             "--scheduler", "mcsf", "--bound", "ip", "--json").stdout)
    assert out["bound_name"] == "ip-dual" and out["bound_total_latency_s"] == 24
    assert out["ratio_to_bound"] == pytest.approx(26 / 24) and out["optimum"]["status"] == "optimal"
    bad = kvsched(exe, "simulate", "--trace", str(tiny), "--capacity", "10", "--bound", "ip", ok=False)
    assert bad.returncode == 2 and "--theory" in bad.stderr
