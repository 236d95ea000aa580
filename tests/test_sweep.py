"""Sweeps: grid files, the cell runner, local vs Ray, resume after an interruption, failed
cells, the results table, and the CLI. Every cell is a real simulator run."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kvsched.experiments.runner import (
    CellStore,
    LocalExecutor,
    RayExecutor,
    TaskResult,
    run_tasks,
    task_id,
)
from kvsched.experiments.sweep import Grid, load_results, run_cell, run_sweep
from kvsched.workload import build_workload, mean_rate

SPEC = "synthetic:n=120,prompt=uniform(32,256),output=uniform(8,96)"


def small_grid(**over) -> Grid:
    raw = {"name": "t", "schedulers": ["vllm", "sarathi"], "workload": {"trace": SPEC}, "rates": [4.0, 16.0],
           "capacities": [2048], "seeds": [0, 1], "options": {"sarathi": {"chunk_size": [64, 256]}}}
    raw.update(over)
    return Grid.from_dict(raw)


def cell_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "cells").rglob("*"))
            if p.is_file() and p.name != "timing.json"}


# --- grids --------------------------------------------------------------------------------
def test_grid_from_toml_expands_axes_in_order(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(f'''
name = "demo"
schedulers = ["vllm", "sarathi"]
rates = [2, 8.5]
capacities = [4096, 8192]
seeds = [3]
[[workloads]]
trace = ["{SPEC}", "azure-conv"]
num_requests = 50
[options.sarathi]
chunk_size = [128, 512]
batch_size_cap = 64
''')
    grid = Grid.from_toml(path)
    cells = grid.cells()
    # 2 workloads x 2 capacities x (vllm + 2 sarathi variants) x 2 rates x 1 seed
    assert len(cells) == 2 * 2 * 3 * 2
    assert cells[0]["workload"] == {"trace": SPEC, "num_requests": 50} and cells[0]["scheduler"] == "vllm"
    sarathi = [c["options"] for c in cells if c["scheduler"] == "sarathi"][:4]
    assert sarathi == [{"batch_size_cap": 64, "chunk_size": 128}] * 2 + [{"batch_size_cap": 64, "chunk_size": 512}] * 2
    assert {c["rate"] for c in cells} == {2.0, 8.5} and {c["seed"] for c in cells} == {3}
    assert len({task_id(c) for c in cells}) == len(cells)


@pytest.mark.parametrize("body, message", [
    ('schedulers = ["vllm"]\nspeed = 3\n[workload]\ntrace = "azure-conv"', "unknown key(s) speed"),
    ('schedulers = ["nope"]\n[workload]\ntrace = "azure-conv"', "unknown scheduler 'nope'"),
    ('schedulers = ["vllm"]\n[workload]\ntrace = "azure-conv"\nbogus = 1', "workloads[0]: unknown key(s) bogus"),
    ('schedulers = ["vllm"]\nrates = [0]\n[workload]\ntrace = "azure-conv"', "rates must be positive"),
    ('schedulers = ["vllm"]\nseeds = [true]\n[workload]\ntrace = "azure-conv"', "seeds: True is not a int"),
    ('schedulers = ["vllm"]\n[options.sarathi]\nchunk_size = 1\n[workload]\ntrace = "azure-conv"',
     "options.sarathi: 'sarathi' is not in schedulers"),
    ('schedulers = ["vllm"]', "give exactly one of [workload] or [[workloads]]"),
    ('schedulers = ["sarathi"]\n[options.sarathi]\nchunk_sz = 1\n[workload]\ntrace = "azure-conv"',
     "options.sarathi: scheduler 'sarathi' has no option 'chunk_sz'; did you mean 'chunk_size'?"),
    ('schedulers = ["sarathi"]\n[options.sarathi]\nchunk_size = 1.5\n[workload]\ntrace = "azure-conv"',
     "options.sarathi: scheduler 'sarathi': option chunk_size wants an integer (default 512), got 1.5"),
    ('schedulers = ["vllm"]\nblock_size = "16"\n[workload]\ntrace = "azure-conv"', "block_size: '16' is not a int"),
    ('schedulers = ["vllm"\n', "not valid TOML"),
])
def test_bad_grid_files_name_the_file_and_the_key(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ValueError) as err:
        Grid.from_toml(path)
    assert str(path) in str(err.value) and message in str(err.value)


# --- workloads and rates --------------------------------------------------------------------
def test_target_rate_means_the_same_thing_for_every_kind_of_trace():
    synth, _ = build_workload(SPEC, target_rate=7.0, seed=0)
    timed, _ = build_workload("azure-conv", target_rate=7.0, num_requests=400)
    lengths_only, _ = build_workload("sharegpt-8k", target_rate=7.0, num_requests=2000, seed=1)
    assert mean_rate(timed) == pytest.approx(7.0)  # real arrivals replayed faster
    native, _ = build_workload("azure-conv", num_requests=400)
    gaps = [b.arrival_time - a.arrival_time for a, b in itertools.pairwise(native)]
    scaled = [b.arrival_time - a.arrival_time for a, b in itertools.pairwise(timed)]
    assert scaled == pytest.approx([g * mean_rate(native) / 7.0 for g in gaps])  # same shape, compressed
    for reqs in (synth, lengths_only):  # Poisson draws at the target
        assert mean_rate(reqs) == pytest.approx(7.0, rel=0.2)
    with pytest.raises(ValueError, match="not both"):
        build_workload("sharegpt-8k", rate=2.0, target_rate=7.0)


def test_a_cell_gives_the_numbers_kvsched_simulate_gives(exe):
    cell = small_grid().cells()[3]  # vllm, rate 16, seed 1
    summary, tables = run_cell(cell)
    out = subprocess.run([exe, "simulate", "--trace", SPEC.replace("n=120", "n=120,rate=16.0"), "--scheduler",
                          "vllm", "--capacity", "2048", "--seed", "1", "--json", "--no-progress"],
                         capture_output=True, text=True, check=True)
    direct = json.loads(out.stdout)
    for key in ("num_completed", "e2e_mean", "ttft_p99", "num_preemptions", "peak_kv_tokens", "ratio_to_bound"):
        assert summary[key] == pytest.approx(direct[key]), key
    assert len(tables["requests"]) == 120 and tables["steps"]["kv_used_tokens"].max() <= 2048
    assert summary["bound_mean_latency_s"] <= summary["e2e_mean"]
    assert summary["offered_rate_per_s"] == pytest.approx(16.0, rel=0.25)


# --- the runner ------------------------------------------------------------------------------
def test_local_pool_and_ray_give_identical_tables(tmp_path):
    pytest.importorskip("ray")
    grid = small_grid()
    local, _ = run_sweep(grid, tmp_path / "local", executor=LocalExecutor(2))
    on_ray, outcome = run_sweep(grid, tmp_path / "ray", executor=RayExecutor(num_cpus=2))
    assert len(outcome.ran) == len(grid.cells()) == 12 and not outcome.failed
    pd.testing.assert_frame_equal(local, on_ray)
    assert (tmp_path / "local/results.parquet").read_bytes() == (tmp_path / "ray/results.parquet").read_bytes()
    assert cell_files(tmp_path / "local") == cell_files(tmp_path / "ray")
    assert (local["status"] == "ok").all() and local["e2e_mean"].notna().all()
    assert list(local["cell_id"]) == [task_id(c) for c in grid.cells()]


def test_a_failing_cell_is_recorded_and_the_others_finish(tmp_path):
    grid = small_grid(options={"sarathi": {"chunk_size": [64, -5]}})
    table, outcome = run_sweep(grid, tmp_path, executor=LocalExecutor(2))
    assert len(outcome.failed) == 4 and len(outcome.ran) == 12
    bad = table["label"] == "sarathi chunk_size=-5"
    assert bad.sum() == 4 and (table.loc[bad, "status"] == "failed").all()
    assert table.loc[bad, "error"].str.contains("chunk_size must be >= 1").all()
    assert table.loc[bad, "e2e_mean"].isna().all()
    assert (table.loc[~bad, "status"] == "ok").all() and table.loc[~bad, "e2e_mean"].notna().all()
    record = json.loads((tmp_path / "failed" / f"{table.loc[bad, 'cell_id'].iloc[0]}.json").read_text())
    assert "Traceback" in record["traceback"] and record["config"]["options"] == {"chunk_size": -5}
    # A resume runs the failed cells again (the error may have been transient) unless told not to.
    _, again = run_sweep(grid, tmp_path, retry_failed=False)
    assert again.ran == [] and sorted(again.failed) == sorted(table.loc[bad, "cell_id"])
    _, retried = run_sweep(grid, tmp_path)
    assert sorted(retried.ran) == sorted(table.loc[bad, "cell_id"])


def test_resume_runs_only_the_cells_an_interruption_left(tmp_path):
    grid = small_grid()

    def stop_after_five(done, total, failed):
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, tmp_path, executor=LocalExecutor(1), progress=stop_after_five)
    saved = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("*/summary.json")}
    assert len(saved) == 5
    table, outcome = run_sweep(grid, tmp_path, executor=LocalExecutor(2))
    assert sorted(outcome.skipped) == sorted(saved) and len(outcome.ran) == len(grid.cells()) - 5
    assert {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "cells").glob("*/summary.json")
            if p.parent.name in saved} == saved  # untouched
    fresh, _ = run_sweep(grid, tmp_path / "fresh")
    pd.testing.assert_frame_equal(table, fresh)


def test_ctrl_c_on_the_command_line_keeps_finished_cells(tmp_path, exe):
    out = tmp_path / "run"
    cmd = [exe, "sweep", "--schedulers", "vllm,sarathi,mcsf", "--trace", SPEC.replace("n=120", "n=3000"),
           "--rates", "10,20,30,40", "--capacities", "4096", "--seeds", "0,1", "-o", str(out), "--jobs", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("cells/*/summary.json"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=60)
    done = {p.parent.name for p in out.glob("cells/*/summary.json")}
    assert proc.returncode == 2 and "run the same command again to resume" in err
    assert 2 <= len(done) < 24 and not list(out.glob("cells/.tmp-*"))
    res = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert f"{24 - len(done)} run now, {len(done)} found done, 0 failed" in res.stdout
    assert len(load_results(out)) == 24


SLOW_CELLS = """
import os, time
from pathlib import Path

def cell(task):
    Path(task["dir"], task["name"] + ".pid").write_text(str(os.getpid()))
    if task["block"]:
        time.sleep(600)  # busy far past the test's bound
    return {"pid": os.getpid()}
"""

LEADER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from slow_cells import cell
from kvsched.experiments import runner
from kvsched.experiments.runner import LocalExecutor, run_tasks
if sys.argv[2] == "watchdog":  # an invalid prctl option: only the portable watchdog is left
    runner.PR_SET_PDEATHSIG = -1
tasks = [{"name": name, "block": name == "slow", "dir": sys.argv[1]} for name in ("quick", "slow")]
run_tasks(tasks, cell, out=Path(sys.argv[1]) / "out", executor=LocalExecutor(2))
"""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = text.rpartition(")")[2].split()[:2]
    return state, int(ppid)


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat and stat[1] == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in "ZX"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process trees from /proc")
@pytest.mark.parametrize("guard", ["pdeathsig", "watchdog"])
def test_workers_exit_when_the_leader_alone_is_killed(tmp_path, guard):
    """Issue 15, item 5: SIGKILL of the sweep's leader process alone (not its group) must
    not leave its workers behind, neither the one busy with a long cell nor the idle one
    blocked on the task queue. "watchdog" disables the Linux prctl in the (forked) workers,
    leaving the portable parent watchdog alone to do it."""
    (tmp_path / "slow_cells.py").write_text(SLOW_CELLS)
    leader = subprocess.Popen([sys.executable, "-c", LEADER, str(tmp_path), guard], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: set[int] = set()
    try:
        quick_done = tmp_path / "out" / "cells" / task_id({"name": "quick", "block": False,
                                                            "dir": str(tmp_path)}) / "summary.json"
        deadline = time.monotonic() + 120
        # Until the slow cell runs and the quick one is saved: one worker busy, one idle.
        while not ((tmp_path / "slow.pid").is_file() and quick_done.is_file() and len(_children(leader.pid)) >= 2):
            assert leader.poll() is None, leader.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep's workers did not start"
            time.sleep(0.05)
        workers = _children(leader.pid)
        assert int((tmp_path / "slow.pid").read_text()) in workers
        os.kill(leader.pid, signal.SIGKILL)  # the leader alone: its workers get no signal from us
        leader.wait(30)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their leader"
    finally:
        for pid in [leader.pid] * (leader.poll() is None) + [pid for pid in workers if _alive(pid)]:
            os.kill(pid, signal.SIGKILL)
        leader.wait(30)
        leader.stderr.close()


def test_a_save_that_fails_mid_write_leaves_no_half_written_cell(tmp_path):
    store = CellStore(tmp_path)
    task = {"what": "x"}
    bad = pd.DataFrame({"mixed": [1, "a"]})  # pyarrow cannot store this column
    result = TaskResult(task_id(task), {"m": 1.0}, tables={"ok": pd.DataFrame({"a": [1]}), "bad": bad})
    with pytest.raises(Exception, match="mixed|Conversion|convert"):
        store.save(task, result)
    assert list((tmp_path / "cells").iterdir()) == [] and not store.is_done(task_id(task))


def test_run_tasks_rejects_duplicate_tasks():
    with pytest.raises(ValueError, match="twice"):
        run_tasks([{"a": 1}, {"a": 1}], lambda t: {})


# --- command line ----------------------------------------------------------------------------
def test_sweep_cli_with_a_grid_file_and_overrides(tmp_path, exe):
    grid = tmp_path / "g.toml"
    grid.write_text(f'schedulers = ["vllm"]\nrates = [4.0]\ncapacities = [2048]\n[workload]\ntrace = "{SPEC}"\n')
    out = tmp_path / "out"
    res = subprocess.run([exe, "sweep", str(grid), "--rates", "4,12", "--schedulers", "vllm,mcsf", "-o", str(out),
                          "--no-save-runs"], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(zip(table["scheduler"], table["rate"])) == [("mcsf", 4.0), ("mcsf", 12.0), ("vllm", 4.0),
                                                              ("vllm", 12.0)]
    assert not list(out.glob("cells/*/requests.parquet"))  # --no-save-runs
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["num_cells"] == 4 and sweep["grid"]["schedulers"] == ["vllm", "mcsf"]


@pytest.mark.parametrize("args, message", [
    (["--schedulers", "vllm"], "needs schedulers and a trace"),
    (["missing.toml"], "missing.toml: no such grid file"),
    (["--schedulers", "vllm", "--trace", "azure-conv", "--opt", "chunk_size=3"], "SCHEDULER:KEY=VALUE"),
    (["--schedulers", "vllm", "--trace", "azure-conv", "--cost-model", "nope"], "unknown cost model 'nope'"),
])
def test_sweep_cli_errors(tmp_path, exe, args, message):
    res = subprocess.run([exe, "sweep", *args, "-o", str(tmp_path / "o")], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert res.returncode == 2 and message in res.stderr


def test_sweep_cli_exits_1_when_a_cell_failed(tmp_path, exe):
    res = subprocess.run([exe, "sweep", "--schedulers", "sarathi", "--trace", SPEC, "--rates", "4",
                          "--capacities", "2048", "--opt", "sarathi:chunk_size=64,0", "-o", str(tmp_path)], capture_output=True, text=True, check=False)
    assert res.returncode == 1
    assert "1 cell(s) failed with ValueError: chunk_size must be >= 1" in res.stdout
