"""Every registered scheduler on random small workloads: all requests finish or are
reported rejected, KV never exceeds capacity, runs are deterministic, and
fast-forwarding decode runs gives the same schedule as stepping one at a time, and
a request that holds no KV is never admitted with less than its chunking rule allows.

Workloads carry noisy point predictions and interval predictions, so length-aware
schedulers are exercised with under- and over-estimates, not only exact lengths."""

import dataclasses

import numpy as np
import pytest
from conftest import create_scheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.bounds.runs import min_round_time, run_bound
from kvsched.kvcache import blocks_for
from kvsched.predictors import with_predictions
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.clearing import InfeasibleSchedule
from kvsched.schedulers.vidur import SarathiScheduler
from kvsched.schedulers.vllm import VLLMScheduler
from kvsched.schedulers.wait_cp import WaitCPScheduler
from kvsched.sim import simulate, simulate_theory
from kvsched.sim.cost import AffinePrefillCost

COST = AffinePrefillCost(d0_s=0.01, d1_s_per_token=1e-4, d2_s_per_prefill_token=1e-3)

workloads = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 60), st.integers(1, 40)), min_size=1, max_size=14
)
systems = st.tuples(st.integers(16, 160), st.sampled_from([1, 4, 16]))


def _requests(specs, seed=0):
    """Requests with a noisy point prediction (eps 0.5) and an interval (ratio 0.5)."""
    plain = [Request(i, t, p, o) for i, (t, p, o) in enumerate(specs)]
    rng = np.random.default_rng(seed)
    points = with_predictions(plain, "relative:eps=0.5", rng)
    intervals = with_predictions(plain, "interval-ratio:alpha=0.5", rng)
    return [dataclasses.replace(p, predicted_output_interval=i.predicted_output_interval)
            for p, i in zip(points, intervals)]


def _simulate(name, workload, capacity, block_size, theory=False, **opts):
    scheduler = create_scheduler(name, workload, **opts)
    try:
        if theory:
            return simulate_theory(workload, scheduler, capacity_tokens=capacity, max_steps=50_000)
        # check_oracle: a scheduler declaring itself non-clairvoyant must run blind.
        return simulate(workload, scheduler, COST, capacity_tokens=capacity, block_size=block_size,
                        max_steps=50_000, check_oracle=True)
    except InfeasibleSchedule:
        # Only policies whose own rule declares infeasibility (alpha-protection greedy) may.
        if not getattr(scheduler, "may_declare_infeasible", False):
            raise
        return None


def _check_run(name, specs, capacity, block_size, theory=False, **opts):
    workload = _requests(specs)
    run = _simulate(name, workload, capacity, block_size, theory, **opts)
    if run is None:
        return None
    lookahead = 1 if theory else 0
    if theory:
        block_size = 1
    num_blocks = capacity // block_size
    for r in run.requests:
        fits = blocks_for(r.prompt_len + r.output_len - 1 + lookahead, block_size) <= num_blocks
        if fits:
            assert r.status is RequestStatus.FINISHED, (name, r)
            assert r.num_output_tokens == r.output_len
            assert r.arrival_time <= r.first_token_time <= r.finish_time
        else:
            assert r.status is RequestStatus.REJECTED and r.reject_reason
    assert max(run.steps["kv_used_blocks"], default=0) <= num_blocks
    # The volume lower bound is a proven bound: no schedule may beat it.
    bound = run_bound(run, 1.0 if theory else min_round_time(COST), lookahead)
    assert bound["total_latency_s"] >= bound["bound_total_latency_s"] - 1e-9 * max(1.0, bound["total_latency_s"])
    assert all(u <= b * block_size for u, b in zip(run.steps["kv_used_tokens"], run.steps["kv_used_blocks"]))
    return run


def _times(run):
    return [(r.request_id, r.first_token_time, r.finish_time, r.num_evictions) for r in run.requests]


@pytest.mark.parametrize("name", SCHEDULERS.names())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=workloads, system=systems)
def test_every_scheduler_is_safe_complete_and_deterministic(name, specs, system):
    capacity, block_size = system
    a = _check_run(name, specs, capacity, block_size)
    b = _check_run(name, specs, capacity, block_size)
    if a is None or b is None:
        assert a is b is None
        return
    assert _times(a) == _times(b)
    assert a.steps == b.steps


theory_workloads = st.lists(
    st.tuples(st.integers(0, 6), st.integers(1, 8), st.integers(1, 12)), min_size=1, max_size=10
)


@pytest.mark.parametrize("name", SCHEDULERS.names())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=theory_workloads, capacity=st.integers(4, 40))
def test_every_scheduler_is_safe_in_theory_mode(name, specs, capacity):
    """Unit rounds, block size 1 and the papers' ledger (one lookahead slot)."""
    a = _check_run(name, specs, capacity, 1, theory=True)
    if a is not None:
        assert all(float(r.finish_time).is_integer() for r in a.requests if r.finish_time is not None)


def _prefill_limits(scheduler):
    """(per-request chunk cap, per-step token budget) of a scheduler's documented chunking
    rule; None where it has none. The theory papers' model (and every scheduler without a
    chunking rule) admits a request's whole prompt in one round."""
    if isinstance(scheduler, VLLMScheduler):  # vllm, sjf, srpt, fcfs-static
        return (scheduler.long_prefill_token_threshold or None,
                scheduler.max_num_batched_tokens if scheduler.enable_chunked_prefill else None)
    if isinstance(scheduler, SarathiScheduler):
        return None, scheduler.chunk_size
    if isinstance(scheduler, WaitCPScheduler):
        return scheduler.chunk_size, (scheduler.design.token_budget if scheduler.token_gate else None)
    return None, None


class _PrefillAudit:
    """Wraps a scheduler and checks every decision: a request that holds no KV (waiting)
    and is scheduled gets all its remaining tokens (its prompt, plus the output a
    recompute preemption kept), unless its chunk equals the scheduler's per-request cap
    or the step uses up the scheduler's per-step token budget."""

    def __init__(self, inner):
        self.inner = inner
        self.clairvoyant = getattr(inner, "clairvoyant", True)
        self.admissions = self.partial = 0

    def schedule(self, view):
        remaining = {rid: r.num_tokens - r.num_computed_tokens for rid, r in view.waiting.items()}
        d = self.inner.schedule(view)
        cap, budget = _prefill_limits(self.inner)
        total = sum(d.run.values())
        for rid, n in d.run.items():
            if rid not in remaining:
                continue
            self.admissions += 1
            if n >= remaining[rid]:
                continue
            self.partial += 1
            assert n == cap or total == budget, (
                f"t={view.now}: request {rid} holds no KV and got {n} of its {remaining[rid]} tokens "
                f"(decision {dict(d.run)}; chunk cap {cap}, token budget {budget})")
        return d


def _audit_prefills(name, specs, capacity, **opts):
    workload = _requests(specs)
    audit = _PrefillAudit(create_scheduler(name, workload, **opts))
    try:
        simulate_theory(workload, audit, capacity_tokens=capacity, fast_forward=False, max_steps=50_000)
    except InfeasibleSchedule:
        assert getattr(audit.inner, "may_declare_infeasible", False)
    return audit


@pytest.mark.parametrize("name", SCHEDULERS.names())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=theory_workloads, capacity=st.integers(4, 40))
def test_no_partial_prefill_without_a_chunking_rule(name, specs, capacity):
    """In theory mode every scheduler, with its defaults, admits a request's whole prompt
    in one round unless its own chunking rule (token budget, chunk cap) says otherwise."""
    _audit_prefills(name, specs, capacity)


@pytest.mark.parametrize(("name", "opts"), [
    ("vllm", {"max_num_batched_tokens": 6}),
    ("vllm", {"long_prefill_token_threshold": 3}),
    ("sarathi", {"chunk_size": 5}),
    ("wait-cp", {"chunk_size": 3}),
])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=theory_workloads, capacity=st.integers(4, 40))
def test_partial_prefills_follow_the_chunking_rule(name, opts, specs, capacity):
    """The same audit where small budgets make the chunking schedulers split prompts."""
    _audit_prefills(name, specs, capacity, **opts)


@pytest.mark.parametrize("name", SCHEDULERS.names())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=workloads, system=systems)
def test_fast_forward_equals_stepping(name, specs, system):
    capacity, block_size = system
    workload = _requests(specs)
    runs = []
    for ff in (True, False):
        scheduler = create_scheduler(name, workload)
        try:
            runs.append(simulate(workload, scheduler, COST, capacity_tokens=capacity, block_size=block_size,
                                 fast_forward=ff, max_steps=50_000))
        except InfeasibleSchedule:
            assert getattr(scheduler, "may_declare_infeasible", False)
            runs.append(None)
    if None in runs:
        assert runs == [None, None]  # infeasible either way
        return
    fast, slow = ([(r.request_id, r.num_evictions, r.first_token_time, r.finish_time) for r in x.requests]
                  for x in runs)
    for f, s in zip(fast, slow):
        assert f[:2] == s[:2]
        if s[2] is None:  # rejected: never scheduled in either run
            assert f[2:] == s[2:] == (None, None)
        else:
            assert f[2:] == pytest.approx(s[2:], rel=1e-9, abs=1e-12)
    assert sum(runs[0].steps["num_steps"]) == sum(runs[1].steps["num_steps"])


@pytest.mark.parametrize("opts", [{"policy": "priority"}, {"enable_chunked_prefill": False},
                                  {"long_prefill_token_threshold": 8, "max_num_batched_tokens": 24}])
@settings(max_examples=30, deadline=None)
@given(specs=workloads, system=systems)
def test_vllm_variants_are_safe(opts, specs, system):
    _check_run("vllm", specs, *system, **opts)
