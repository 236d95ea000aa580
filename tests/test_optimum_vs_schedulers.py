"""The hindsight optimum against real schedules: on random small instances, the IP's
optimum (HiGHS) is never above the total latency of any registered scheduler whose run is
non-preemptive or uses restarts only (a restarted attempt is wasted work, so removing it
leaves a feasible non-preemptive schedule with the same completions), and every lower
bound is never above the optimum. Replaying the optimal starts through the simulator in
theory mode reproduces the optimum and respects M at every epoch (spec P-6, P-7)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.bounds import Instance, bound_report
from kvsched.decision import Decision, Scheduler, View
from kvsched.predictors import with_predictions
from kvsched.registry import SCHEDULERS
from kvsched.request import Request
from kvsched.schedulers.clearing import InfeasibleSchedule
from kvsched.sim import simulate_theory

RESTART_ONLY = ("mcsf", "mc-benchmark", "zhou-jiang", "svf", "a-max", "a-min", "alpha-protection",
                "beta-clearing", "fcfs-static")


@st.composite
def instances(draw):
    capacity = draw(st.integers(6, 12))
    n = draw(st.integers(2, 6))
    rows = []
    for _ in range(n):
        s = draw(st.integers(1, 3))
        rows.append((draw(st.integers(0, 3)), s, draw(st.integers(1, capacity - s))))
    return Instance.from_triples(rows, capacity)


def _requests(inst: Instance) -> list[Request]:
    reqs = [Request(i, float(a), s, o) for i, (a, s, o) in
            enumerate(zip(inst.arrival, inst.prompt_len, inst.output_len))]
    return with_predictions(reqs, "interval-ratio:alpha=0.5", np.random.default_rng(0))


def _with_points(reqs):
    exact = with_predictions(reqs, "exact", np.random.default_rng(0))
    return [Request(r.request_id, r.arrival_time, r.prompt_len, r.output_len, e.predicted_output_len,
                    r.predicted_output_interval) for r, e in zip(reqs, exact)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances())
def test_optimum_is_below_every_schedule_and_above_every_bound(inst):
    report = bound_report(inst, ip=True, time_limit_s=60)
    assert report.optimum is not None and report.optimum["status"] == "optimal"
    opt = report.optimum["value"]
    for name, value in report.bounds:
        assert value <= opt + 1e-6, (name, value, opt)
    reqs = _with_points(_requests(inst))
    for name in RESTART_ONLY:
        opts = {"predictor": "oracle"} if name == "fcfs-static" else {}
        try:
            run = simulate_theory(reqs, SCHEDULERS.create(name, **opts), capacity_tokens=inst.capacity,
                                  max_steps=10_000)
        except InfeasibleSchedule:
            continue
        tel = sum(r.finish_time - r.arrival_time for r in run.requests)
        assert tel >= opt - 1e-9, (name, tel, opt)


class _Starts(Scheduler):
    """Starts request i at epoch starts[i] and runs it to the end: replays an IP schedule."""

    def __init__(self, starts):
        self.starts = starts

    def schedule(self, view: View) -> Decision:
        run = {rid: 1 for rid in view.resident}
        for rid, r in view.waiting.items():
            if self.starts[rid] == int(view.now):
                run[rid] = r.prompt_len
        if not run:  # the optimum may idle on purpose: wait for the next planned start
            return Decision(idle_until=min(self.starts[rid] for rid in view.waiting))
        return Decision(run)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances())
def test_optimal_starts_replay_through_the_simulator(inst):
    report = bound_report(inst, ip=True, lp=False, time_limit_s=60)
    starts = dict(zip(inst.request_ids, report.ip.starts))
    run = simulate_theory(_requests(inst), _Starts(starts), capacity_tokens=inst.capacity, fast_forward=False)
    assert sum(r.finish_time - r.arrival_time for r in run.requests) == report.optimum["value"]
    assert max(run.steps["kv_used_tokens"]) <= inst.capacity
    assert all(int(r.admit_time) == starts[r.request_id] for r in run.requests)


def test_replaying_starts_that_break_memory_is_refused_by_the_loop():
    # Both requests of TV-1's size started at 0 need 4 + 8 > M = 10 at epoch 2... the loop refuses.
    inst = Instance.from_triples([(0, 2, 8), (0, 2, 8)], 10)
    with pytest.raises(Exception, match="KV blocks"):
        simulate_theory(_requests(inst), _Starts({0: 0, 1: 0}), capacity_tokens=10, fast_forward=False)
