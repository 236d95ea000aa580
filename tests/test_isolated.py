"""kvsched.bounds.isolated: solver calls in a child process survive the child's death."""

from __future__ import annotations

import os
import signal

import pytest

from kvsched.bounds import Instance, IsolatedWorker, SolverCrashed, check_result, solve_hindsight, solver_available
from kvsched.bounds.isolated import describe_exit


def test_calls_run_in_one_other_process_and_return_their_results() -> None:
    with IsolatedWorker() as worker:
        assert worker.pid is None
        child = worker.call(os.getpid)
        assert child != os.getpid() and child == worker.pid
        assert worker.call(pow, 2, 10) == 1024
        assert worker.call(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
        assert worker.call(os.getpid) == child  # one long-lived child, not one per call
    assert worker.pid is None


def test_an_exception_in_the_child_is_raised_as_itself_and_the_child_lives_on() -> None:
    with IsolatedWorker() as worker:
        child = worker.call(os.getpid)
        with pytest.raises(ValueError, match="invalid literal"):
            worker.call(int, "not a number")
        assert worker.call(os.getpid) == child


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_child_killed_by_a_signal_is_a_clear_error_and_the_next_call_gets_a_fresh_child(sig: int) -> None:
    with IsolatedWorker() as worker:
        child = worker.call(os.getpid)
        with pytest.raises(SolverCrashed, match=f"kill died in its child process \\(signal {signal.Signals(sig).name}\\)") as info:
            worker.call(os.kill, child, sig)
        assert info.value.how == f"signal {signal.Signals(sig).name}"
        assert worker.pid is None
        fresh = worker.call(os.getpid)
        assert fresh != child
        assert worker.call(pow, 3, 2) == 9


def test_a_child_that_exits_is_reported_with_its_status() -> None:
    with IsolatedWorker() as worker:
        with pytest.raises(SolverCrashed, match=r"_exit died in its child process \(exit status 3\)") as info:
            worker.call(os._exit, 3)
        assert info.value.how == "exit status 3"
        assert worker.call(abs, -4) == 4


def test_describe_exit() -> None:
    assert describe_exit(-11) == "signal SIGSEGV"
    assert describe_exit(2) == "exit status 2"
    assert describe_exit(None) == "no exit status"


@pytest.mark.skipif(not solver_available(), reason="needs HiGHS")
def test_an_isolated_solve_is_the_same_solve() -> None:
    """The fast path (in process) and the isolated one give the same certified answer."""
    inst = Instance.from_triples([(0, 2, 3), (0, 1, 4), (1, 3, 2), (2, 1, 5)], 9)
    here = solve_hindsight(inst, method="highs", time_limit_s=20)
    with IsolatedWorker() as worker:
        there = worker.call(solve_hindsight, inst, method="highs", time_limit_s=20)
    check_result(inst, there)
    assert there.status == here.status == "optimal"
    assert (there.objective, there.lower_bound, there.starts) == (here.objective, here.lower_bound, here.starts)
    assert there.lower_bound_source == here.lower_bound_source


def test_an_unpicklable_result_is_an_error_not_a_hang() -> None:
    with IsolatedWorker() as worker:
        with pytest.raises(RuntimeError, match="could not send back its result"):
            worker.call(make_a_lambda)
        assert worker.call(len, "abc") == 3


def make_a_lambda():  # module-level, so the child can import it by name; its result cannot be pickled
    return lambda: None



def _load_bench_ip():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ip.py"
    spec = importlib.util.spec_from_file_location("bench_ip", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not solver_available(), reason="needs HiGHS")
def test_bench_ip_reports_a_crashed_solve_as_a_row_and_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    """The second solve's child is killed for real; the run keeps the other rows and the table says so."""
    import argparse

    bench = _load_bench_ip()
    args = argparse.Namespace(model=[1], first=0, instances=2, seed=0, size="small", time_limit=[5.0], threads=1)
    solves = 0
    with IsolatedWorker() as worker:
        def call(fn, *a, **kw):
            nonlocal solves
            solves += 1
            if solves == 2:
                return worker.call(os.kill, worker.call(os.getpid), signal.SIGKILL)
            return worker.call(fn, *a, **kw)

        rows = bench._solve_all(args, ["default"], call, lambda msg: None)
    assert [r["status"] for r in rows] == ["optimal", "crashed"]
    assert "signal SIGKILL" in rows[1]["error"]
    (summary,) = bench.summarize(rows, ["default"], 5.0)
    assert (summary["instances"], summary["crashed"], summary["solved"]) == (2, 1, 1)
    assert summary["median_time_s"] == pytest.approx((min(rows[0]["solve_time_s"], 5.0) + 5.0) / 2)  # crash = limit
    assert summary["mean_heuristic_over_optimum"] == rows[0]["heuristic_tel"] / rows[0]["objective"]
    (only_crashed,) = bench.summarize(rows[1:], ["default"], 5.0)
    assert (only_crashed["instances"], only_crashed["crashed"], only_crashed["solved"]) == (1, 1, 0)
    bench.print_table([{"model": 1, "time_limit_s": 5.0, **s} for s in (summary, only_crashed)], "t")
    out = capsys.readouterr().out
    assert "1/2 (1 crashed)" in out and "0/1 (1 crashed)" in out


# (factor, capacity range, request count or arrival epochs, largest prompt): the paper's M 30-50,
# n or T 40-60 and s 1-5, times the factor, rounded half up.
SCALED = [(0.25, (8, 13), (10, 15), 1), (0.5, (15, 25), (20, 30), 3), (0.75, (23, 38), (30, 45), 4)]


@pytest.mark.parametrize(("factor", "capacity", "count", "prompt_max"), SCALED)
def test_bench_ip_scaled_families_draw_the_papers_instances_scaled_down(factor, capacity, count, prompt_max) -> None:
    bench = _load_bench_ip()
    for model in (1, 2):
        insts = [bench.make_instance(model, 0, i, f"paper-{factor}") for i in range(30)]
        assert {inst.capacity for inst in insts} <= set(range(capacity[0], capacity[1] + 1))
        assert max(max(inst.prompt_len, default=1) for inst in insts) <= prompt_max
        if model == 1:
            assert {inst.n for inst in insts} <= set(range(count[0], count[1] + 1))
        else:  # arrivals fall in the first T epochs, T <= the count's upper end
            assert max(max(inst.arrival, default=0) for inst in insts) < count[1]


@pytest.mark.parametrize("size", ["paper-2", "paper-0", "paper-x", "huge"])
def test_bench_ip_names_a_size_it_cannot_draw(size: str) -> None:
    import argparse

    bench = _load_bench_ip()
    with pytest.raises(argparse.ArgumentTypeError, match=f"'{size}' is not one of paper, medium, small or paper-F"):
        bench.family(size)
