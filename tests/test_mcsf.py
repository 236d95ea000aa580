"""MC-SF family (mcsf, mc-benchmark, zhou-jiang, svf, a-max, a-min) in theory mode.

Sources: the MC-SF paper (Jaillet et al., arXiv 2502.07115; docs/conventions.md): its
worked examples, the counterexamples to simpler rules, and its properties as tests. All runs use
`simulate_theory` (unit rounds, block size 1, one lookahead slot), so latencies are
`finish_time - arrival_time` in epochs and `kv_used_tokens` (with fast_forward=False) is
the papers' memory at each epoch. The optimum side of the test vectors lives in
tests/test_bounds.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from conftest import Recorder, reqs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.predictors import with_predictions
from kvsched.registry import SCHEDULERS
from kvsched.request import Request
from kvsched.schedulers.future_plan import FuturePlan, brute_force_fits
from kvsched.sim.simulate import simulate_theory

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers -------------------------------------------------------------------------------

class StateRecorder(Recorder):
    """A Recorder that also keeps, per call, the tokens each known request had produced
    (before the decision) and the inner scheduler's planned lengths (after it)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.produced: list[dict[int, int]] = []
        self.planned: list[dict[int, int]] = []

    def schedule(self, view):
        self.produced.append({
            rid: r.num_output_tokens for rid, r in (*view.resident.items(), *view.waiting.items())
        })
        d = super().schedule(view)
        self.planned.append(dict(getattr(self.inner, "_planned", {})))
        return d


def predicted(workload, model="exact", seed=0):
    return with_predictions(workload, model, np.random.default_rng(seed))


def theory(name, workload, capacity, *, fast_forward=False, **opts):
    """Run `workload` (already carrying predictions) under scheduler `name`."""
    rec = StateRecorder(SCHEDULERS.create(name, **opts))
    run = simulate_theory(workload, rec, capacity_tokens=capacity, fast_forward=fast_forward, max_steps=20_000)
    return run, rec


def by_id(run) -> dict[int, Request]:
    return {r.request_id: r for r in run.requests}


def tel(run) -> float:
    return sum(r.finish_time - r.arrival_time for r in run.requests)


def starts(run) -> list[float]:
    return [r.first_scheduled_time for r in sorted(run.requests, key=lambda r: r.request_id)]


def finishes(run) -> dict[int, float]:
    return {r.request_id: r.finish_time for r in run.requests}


def all_finished(run) -> bool:
    return all(r.finish_time is not None and r.num_output_tokens == r.output_len for r in run.requests)


@st.composite
def workloads(draw, max_n=7, max_arrival=5, max_prompt=5, max_output=8, equal_prompts=False,
              equal_outputs=False, headroom=1.0):
    """(M, requests): integer arrivals, ids in arrival order, every request fits M alone
    (s + o <= headroom * M)."""
    n = draw(st.integers(1, max_n))
    arrivals = sorted(draw(st.lists(st.integers(0, max_arrival), min_size=n, max_size=n)))
    if equal_prompts:
        prompts = [draw(st.integers(1, max_prompt))] * n
    else:
        prompts = draw(st.lists(st.integers(1, max_prompt), min_size=n, max_size=n))
    if equal_outputs:
        outputs = [draw(st.integers(1, max_output))] * n
    else:
        outputs = draw(st.lists(st.integers(1, max_output), min_size=n, max_size=n))
    need = max(s + o for s, o in zip(prompts, outputs))
    capacity = math.ceil(need / headroom) + draw(st.integers(0, 12))
    return capacity, [Request(i, float(a), s, o) for i, (a, s, o) in enumerate(zip(arrivals, prompts, outputs))]


# --- P-1: test vectors TV-1..TV-4 (spec 13.1) ---------------------------------------------------

TV = {
    "TV-1": (10, [(0, 2, 2), (0, 2, 8), (0, 2, 5), (0, 2, 2), (0, 2, 1)]),
    "TV-2": (8, [(0, 2, 3), (0, 2, 4), (0, 2, 6), (0, 2, 1), (0, 2, 4), (0, 2, 1), (0, 2, 3)]),
    "TV-3": (6, [(0, 4, 2), (0, 4, 2), (0, 4, 1), (0, 3, 1), (0, 1, 2)]),
    "TV-4": (12, [(0, 1, 5), (0, 1, 9), (0, 1, 8), (0, 1, 7), (0, 1, 5), (0, 1, 8)]),
}
# id -> (MC-SF TEL, starts under (õ,a,id), starts under (õ,a,s,id), MC-Benchmark TEL (a,id), (a,s,id))
TV_EXPECTED = {
    "TV-1": (26, [0, 6, 2, 0, 0], [0, 6, 2, 0, 0], 42, 42),
    "TV-2": (53, [1, 5, 13, 0, 9, 0, 3], [1, 5, 13, 0, 9, 0, 3], 76, 76),
    "TV-3": (21, [2, 4, 0, 1, 6], [4, 6, 1, 0, 2], 24, 20),
    "TV-4": (92, [0, 21, 9, 5, 0, 15], [0, 21, 9, 5, 0, 15], 103, 103),
}


def tv(name):
    capacity, spec = TV[name]
    return capacity, predicted(reqs(*spec))


@pytest.mark.parametrize("name", sorted(TV))
@pytest.mark.parametrize("order, column", [("length,arrival,prompt,id", 2), ("length,arrival,id", 1)])
def test_p1_mcsf_tel_and_starts(name, order, column):
    capacity, workload = tv(name)
    run, _ = theory("mcsf", workload, capacity, order=order)
    expected = TV_EXPECTED[name]
    assert tel(run) == expected[0]
    assert starts(run) == expected[column]
    assert all(r.num_evictions == 0 for r in run.requests)


def test_p1_mcsf_default_order_is_length_arrival_prompt_id():
    capacity, workload = tv("TV-3")
    run, _ = theory("mcsf", workload, capacity)
    assert starts(run) == TV_EXPECTED["TV-3"][2]


@pytest.mark.parametrize("name", sorted(TV))
@pytest.mark.parametrize("order, column", [(None, 3), ("arrival,prompt,id", 4)])
def test_p1_mc_benchmark_tel(name, order, column):
    capacity, workload = tv(name)
    opts = {} if order is None else {"order": order}
    run, _ = theory("mc-benchmark", workload, capacity, **opts)
    assert tel(run) == TV_EXPECTED[name][column]


def test_p1_mc_benchmark_starts_tv1():
    capacity, workload = tv("TV-1")
    run, _ = theory("mc-benchmark", workload, capacity)
    assert starts(run) == [0, 0, 8, 8, 8]


def test_p1_tv1_memory_profile():
    capacity, workload = tv("TV-1")
    run, _ = theory("mcsf", workload, capacity)
    assert run.steps["kv_used_tokens"] == [9, 8, 3, 4, 5, 6, 10, 4, 5, 6, 7, 8, 9, 10]
    assert set(run.steps["num_steps"]) == {1}


@pytest.mark.parametrize("name", sorted(TV))
def test_p1_zhou_jiang_equals_mcsf(name):
    capacity, workload = tv(name)
    zj, _ = theory("zhou-jiang", workload, capacity)
    mc, _ = theory("mcsf", workload, capacity)
    assert tel(zj) == tel(mc) == TV_EXPECTED[name][0]
    assert starts(zj) == starts(mc) == TV_EXPECTED[name][2]


def test_zhou_jiang_reads_exact_lengths_without_predictions():
    # Algorithm 1 is clairvoyant (predictor "oracle"): it needs no prediction model.
    capacity, spec = TV["TV-1"]
    run, _ = theory("zhou-jiang", reqs(*spec), capacity)
    assert tel(run) == 26


# --- section 5.4: the counterexamples to the "competitive ratio 1" claim ---------------------

COUNTEREXAMPLES = [
    # (M, [(s, o)], MC-SF total latency); the optimum (24, 49, 84, 18) is in tests/test_bounds.py
    (10, [(2, o) for o in (2, 8, 5, 2, 1)], 26),
    (8, [(2, o) for o in (3, 4, 6, 1, 4, 1, 3)], 53),
    (12, [(1, o) for o in (5, 9, 8, 7, 5, 8)], 92),
    (6, [(4, 2), (4, 2), (4, 1), (3, 1), (1, 2)], 21),
]


@pytest.mark.parametrize("capacity, pairs, total", COUNTEREXAMPLES)
@pytest.mark.parametrize("name", ["mcsf", "zhou-jiang"])
def test_section_5_4_counterexample_totals(capacity, pairs, total, name):
    workload = predicted(reqs(*((0, s, o) for s, o in pairs)))
    run, _ = theory(name, workload, capacity)
    assert tel(run) == total


# --- P-2: over-estimates never overflow and never clear ----------------------------------------

@FAST
@given(workloads(), st.floats(1.0, 3.0), st.integers(0, 2**32 - 1))
def test_p2_overestimates_never_overflow_or_clear(case, alpha, seed):
    capacity, workload = case
    run, rec = theory("mcsf", predicted(workload, f"overestimate:alpha={alpha}", seed), capacity)
    assert max(run.steps["kv_used_tokens"]) <= capacity
    assert all(r.num_preemptions == 0 and r.num_wasted_tokens == 0 for r in run.requests)
    assert not any(d.restart or d.preempt for _, d in rec.decisions)
    assert all_finished(run)


# --- P-3: equal outputs and prompts: MC-SF is MC-Benchmark -------------------------------------

@FAST
@given(workloads(equal_prompts=True, equal_outputs=True, max_n=8))
def test_p3_equal_lengths_mcsf_equals_mc_benchmark(case):
    capacity, workload = case
    workload = predicted(workload)
    mc, _ = theory("mcsf", workload, capacity)
    bench, _ = theory("mc-benchmark", workload, capacity)
    assert finishes(mc) == finishes(bench)


# --- P-4: A_max with l = u = o is MC-SF with exact lengths ---------------------------------------

@FAST
@given(workloads())
def test_p4_amax_with_exact_intervals_equals_mcsf(case):
    capacity, workload = case
    workload = predicted(workload, "exact")  # interval (o, o)
    amax, _ = theory("a-max", workload, capacity)
    mc, _ = theory("mcsf", workload, capacity)
    assert finishes(amax) == finishes(mc)


@FAST
@given(workloads(equal_prompts=True))
def test_p4_amax_with_exact_intervals_equals_zhou_jiang(case):
    # Zhou & Jiang's tie key (o, s, a, id) orders like MC-SF's (o, a, s, id) when prompts are equal.
    capacity, workload = case
    workload = predicted(workload, "exact")
    amax, _ = theory("a-max", workload, capacity)
    zj, _ = theory("zhou-jiang", workload, capacity)
    assert finishes(amax) == finishes(zj)


def test_amax_never_clears_with_interval_predictions():
    capacity, spec = TV["TV-4"]
    run, _ = theory("a-max", predicted(reqs(*spec), "interval-ratio:alpha=0.3", 3), capacity)
    assert all_finished(run)
    assert sum(r.num_evictions for r in run.requests) == 0


# --- P-5: A_min -------------------------------------------------------------------------------

def assert_victims_keep_their_progress_bound(rec):
    """Every request restarted at a call is planned to at least g + 1 after it (spec 7.2)."""
    for produced, planned, (_, d) in zip(rec.produced, rec.planned, rec.decisions):
        for rid in (*d.restart, *d.preempt):
            assert planned[rid] >= produced[rid] + 1, (rid, produced[rid], planned[rid])


@FAST
@given(workloads(), st.integers(0, 2**32 - 1))
def test_p5_amin_never_overflows_and_finishes(case, seed):
    capacity, workload = case
    run, rec = theory("a-min", predicted(workload, "interval-ratio:alpha=0.3", seed), capacity)
    assert max(run.steps["kv_used_tokens"]) <= capacity
    assert all_finished(run)
    assert_victims_keep_their_progress_bound(rec)


def test_p5_amin_must_evict_on_optimistic_bounds():
    # M = 10, two requests s = 1, o = 6, both with interval (1, 6): A_min plans L = 1, admits
    # both at 0 and raises L by one each round. The next round of epoch 4 needs 2 (1 + 4 + 1) = 12 > 10:
    # one (random tie, seeded) is evicted, restarts with L = 5 and is readmitted at once.
    workload = [dataclasses.replace(r, predicted_output_interval=(1, 6)) for r in reqs((0, 1, 6), (0, 1, 6))]
    run, rec = theory("a-min", workload, 10)
    assert all_finished(run)
    assert max(run.steps["kv_used_tokens"]) <= 10
    assert sum(r.num_evictions for r in run.requests) == 1
    assert sorted(finishes(run).values()) == [6.0, 10.0]
    restarts = [(now, d.restart) for now, d in rec.decisions if d.restart]
    assert len(restarts) == 1 and restarts[0][0] == 4.0
    victim = restarts[0][1][0]
    assert rec.decisions[4][1].run[victim] == 1  # re-enters with new_tokens = s
    assert by_id(run)[victim].num_wasted_tokens == 4  # prompt + 3 decode feeds
    assert_victims_keep_their_progress_bound(rec)


# --- P-8: the prefix rule, and what skip_infeasible changes -------------------------------------

def tie_key(r: Request, capacity: int) -> tuple:
    planned = min(max(1, r.predicted_output_len), max(1, capacity - r.prompt_len))
    return (planned, r.arrival_time, r.prompt_len, r.request_id)


@FAST
@given(workloads(max_n=8), st.floats(1.0, 3.0), st.integers(0, 2**32 - 1))
def test_p8_prefix_rule_never_starts_past_a_waiting_earlier_request(case, alpha, seed):
    capacity, workload = case
    workload = predicted(workload, f"overestimate:alpha={alpha}", seed)
    run, rec = theory("mcsf", workload, capacity, skip_infeasible=False)
    reqs_by_id = by_id(run)
    assert all(r.num_evictions == 0 for r in run.requests)  # first_scheduled_time is the start
    for now, d in rec.decisions:
        started = [rid for rid in d.run if reqs_by_id[rid].first_scheduled_time == now]
        waiting = [r for r in run.requests if r.arrival_time <= now and r.first_scheduled_time > now]
        for rid in started:
            r = reqs_by_id[rid]
            assert d.run[rid] == r.prompt_len
            for w in waiting:
                assert tie_key(w, capacity) > tie_key(r, capacity), (now, rid, w.request_id)


def test_p8_skip_infeasible_starts_a_later_request():
    # M = 10: (s, o) = (4, 2), (4, 3), (1, 4) in tie order. After the first, the second misfits
    # (planned 6 + 6 = 12 > 10 at round 2); the third fits (5 + 2, 6 + 3, then alone).
    workload = predicted(reqs((0, 4, 2), (0, 4, 3), (0, 1, 4)))
    prefix, _ = theory("mcsf", workload, 10)
    skip, rec = theory("mcsf", workload, 10, skip_infeasible=True)
    assert starts(prefix) == [0, 2, 3]
    assert starts(skip) == [0, 3, 0]
    assert dict(rec.decisions[0][1].run) == {0: 4, 2: 1}
    assert max(skip.steps["kv_used_tokens"]) <= 10


# --- P-9: clearing under under-estimates, restart and recompute ---------------------------------

def underestimated_pair():
    # Both arrive at 1 with s = 2, o = 6, predicted 1. M = 10.
    return [dataclasses.replace(r, predicted_output_len=1) for r in reqs((1, 2, 6), (1, 2, 6))]


def test_p9_restart_semantics_after_clearing():
    run, rec = theory("mcsf", underestimated_pair(), 10)
    assert all_finished(run)
    assert max(run.steps["kv_used_tokens"]) <= 10
    a, b = by_id(run)[0], by_id(run)[1]
    # Epoch 4 (g = 3): the next round needs 2 (2 + 3 + 1) = 12 > 10; LIFO clears the later start
    # (id 1), which is readmitted at once because id 0 is re-planned to end after g + 1 rounds.
    restarts = [(i, now, d) for i, (now, d) in enumerate(rec.decisions) if d.restart]
    assert [now for _, now, _ in restarts] == [4.0, 5.0, 6.0]
    for i, _, d in restarts:
        assert d.restart == (1,) and not d.preempt
        later = [dd.run[1] for _, dd in rec.decisions[i:] if 1 in dd.run]
        assert later[0] == b.prompt_len  # g reset to 0: a fresh prefill of the prompt only
    assert rec.produced[3][1] == 3 and rec.produced[4][1] == 1  # restarted, then one new token
    assert (a.num_evictions, a.finish_time) == (0, 7.0)
    assert (b.num_restarts, b.num_preemptions, b.num_wasted_tokens) == (3, 0, 8)
    # Kill accounting: each restart discarded the tokens its attempt had produced.
    assert b.num_discarded_tokens == sum(g for _, g, how in b.attempts if how == "restart")
    assert [how for _, _, how in b.attempts] == ["restart", "restart", "restart", "finish"]
    assert b.first_scheduled_time == 1.0 and b.finish_time == 13.0
    assert b.finish_time - b.arrival_time == 12.0  # counted from the original arrival
    assert_victims_keep_their_progress_bound(rec)


def test_p9_recompute_keeps_generated_tokens():
    run, rec = theory("mcsf", underestimated_pair(), 10, preemption="recompute")
    assert all_finished(run)
    b = by_id(run)[1]
    evictions = [(i, d) for i, (_, d) in enumerate(rec.decisions) if d.preempt]
    assert len(evictions) == 1 and not any(d.restart for _, d in rec.decisions)
    i, d = evictions[0]
    assert d.preempt == (1,)
    g = rec.produced[i][1]
    assert g == 3
    reentry = next(dd.run[1] for _, dd in rec.decisions[i:] if 1 in dd.run)
    assert reentry == b.prompt_len + g  # prompt + generated, one prefill
    assert (b.num_preemptions, b.num_wasted_tokens) == (1, 4)
    assert b.finish_time - b.arrival_time == 9.0


@FAST
@given(workloads(), st.integers(0, 2**32 - 1), st.sampled_from(["restart", "recompute"]))
def test_p9_reentry_tokens_under_relative_noise(case, seed, preemption):
    capacity, workload = case
    run, rec = theory("mcsf", predicted(workload, "relative:eps=0.8", seed), capacity, preemption=preemption)
    assert all_finished(run)
    assert max(run.steps["kv_used_tokens"]) <= capacity
    reqs_by_id = by_id(run)
    for i, (_, d) in enumerate(rec.decisions):
        for rid in (*d.restart, *d.preempt):
            g = rec.produced[i][rid] if preemption == "recompute" else 0
            reentry = next(dd.run[rid] for _, dd in rec.decisions[i:] if rid in dd.run)
            assert reentry == reqs_by_id[rid].prompt_len + g
    for r in run.requests:
        assert r.finish_time - r.arrival_time >= r.output_len
        if r.num_evictions:
            assert r.num_wasted_tokens > 0
    assert_victims_keep_their_progress_bound(rec)


# --- re-planning and the reserve ----------------------------------------------------------------

def test_outlived_prediction_is_replanned_to_g_plus_one():
    workload = [dataclasses.replace(r, predicted_output_len=2) for r in reqs((0, 1, 5))]
    run, rec = theory("mcsf", workload, 20)
    assert all_finished(run) and by_id(run)[0].finish_time == 5.0
    assert [p[0] for p in rec.planned] == [2, 2, 3, 4, 5]
    assert [g[0] for g in rec.produced] == [0, 1, 2, 3, 4]


@FAST
@given(workloads(headroom=0.9), st.floats(1.0, 3.0), st.integers(0, 2**32 - 1))
def test_reserve_keeps_overestimate_runs_within_90_percent(case, alpha, seed):
    capacity, workload = case
    run, _ = theory("mcsf", predicted(workload, f"overestimate:alpha={alpha}", seed), capacity, reserve=0.1)
    assert max(run.steps["kv_used_tokens"]) <= math.floor(0.9 * capacity)
    assert all(r.num_evictions == 0 for r in run.requests)
    assert all_finished(run)


# --- fast-forward must not change a run ------------------------------------------------------

@FAST
@given(workloads(), st.integers(0, 2**32 - 1),
       st.sampled_from([("mcsf", "relative:eps=0.8", {}), ("mcsf", "relative:eps=0.8", {"preemption": "recompute"}),
                        ("a-min", "interval-ratio:alpha=0.3", {}), ("svf", "overestimate:alpha=2", {})]))
def test_fast_forward_gives_the_same_run(case, seed, variant):
    capacity, workload = case
    name, model, opts = variant
    workload = predicted(workload, model, seed)
    stepped, _ = theory(name, workload, capacity, **opts)
    jumped, _ = theory(name, workload, capacity, fast_forward=True, **opts)
    assert finishes(stepped) == finishes(jumped)


def test_amin_double_refinement_is_independent_of_fast_forward():
    # M = 10, s = 1, o = 5 for both, intervals (1, 9) and (2, 10). Stepping: L goes 1 -> 2 -> 4 -> 8,
    # the victim at epoch 4 keeps L = 8, waits, finishes at 10. Fast-forward: the call at epoch 4
    # sees L = 2 with g = 4 and sets L = 5: the victim is readmitted at once and finishes at 9.
    workload = [Request(0, 0.0, 1, 5, None, (1, 9)), Request(1, 0.0, 1, 5, None, (2, 10))]
    stepped, _ = theory("a-min", workload, 10, refine="double")
    jumped, _ = theory("a-min", workload, 10, refine="double", fast_forward=True)
    assert finishes(stepped) == finishes(jumped)


# --- FuturePlan ------------------------------------------------------------------------------

pairs = st.tuples(st.integers(1, 12), st.integers(1, 12))


def plan_feasible(cap, alive) -> bool:
    horizon = max((r for _, r in alive), default=0)
    return all(sum(f + c for f, r in alive if r >= c) <= cap for c in range(1, horizon + 1))


def recomputed_memory(alive, c) -> int:
    return sum(f + c for f, r in alive if r >= c)


@settings(max_examples=300, deadline=None)
@given(st.lists(pairs, max_size=6), st.integers(0, 25), st.lists(pairs, min_size=1, max_size=6))
def test_future_plan_fits_equals_brute_force(alive, slack, candidates):
    # A feasible state: the capacity is the alive set's peak plus some slack.
    horizon = max((r for _, r in alive), default=0)
    cap = max((recomputed_memory(alive, c) for c in range(1, horizon + 1)), default=1) + slack
    assert plan_feasible(cap, alive)
    plan = FuturePlan(cap, alive)
    alive = list(alive)
    for f, r in candidates:
        expected = brute_force_fits(cap, alive, f, r)
        assert plan.fits(f, r) == expected, (cap, alive, f, r)
        if expected:
            plan.add(f, r)
            alive.append((f, r))
        horizon = max((r for _, r in alive), default=0)
        for c in range(1, horizon + 3):
            assert plan.memory_at(c) == recomputed_memory(alive, c), (cap, alive, c)
        assert plan.peak() == max((recomputed_memory(alive, c) for c in range(1, horizon + 1)), default=0)
        assert plan.peak() <= cap


@settings(max_examples=200, deadline=None)
@given(st.lists(pairs, max_size=8))
def test_future_plan_memory_after_unchecked_adds(items):
    plan = FuturePlan(1 << 20)
    for f, r in items:
        plan.add(f, r)
    for c in range(1, 15):
        assert plan.memory_at(c) == recomputed_memory(items, c)


# --- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, opts, bad", [
    ("mcsf", {"order": "length,bogus"}, "bogus"),
    ("mc-benchmark", {"order": "arrival,deadline"}, "deadline"),
    ("mcsf", {"reserve": 1.0}, "1.0"),
    ("mcsf", {"reserve": -0.1}, "-0.1"),
    ("mcsf", {"clearing": "fifo"}, "fifo"),
    ("mcsf", {"predictor": "psychic"}, "psychic"),
    ("a-max", {"predictor": "interval-mid"}, "interval-mid"),
    ("mcsf", {"clear_to": "half"}, "half"),
    ("mcsf", {"preemption": "swap"}, "swap"),
    ("mcsf", {"beta": 1.5}, "1.5"),
    ("a-min", {"refine": "triple"}, "triple"),
])
def test_bad_options_raise_with_the_bad_value(name, opts, bad):
    with pytest.raises(ValueError, match=bad):
        SCHEDULERS.create(name, **opts)


@pytest.mark.parametrize("opts", [{"aging": -1.0}, {"max_num_seqs": -1}, {"max_num_batched_tokens": -5}])
def test_negative_limits_raise(opts):
    with pytest.raises(ValueError):
        SCHEDULERS.create("mcsf", **opts)


@pytest.mark.parametrize("name", [
    "mcsf", "mc-benchmark", "svf", "a-max", "a-min",
])
def test_request_without_predictions_points_to_with_predictions(name):
    with pytest.raises(ValueError, match="with_predictions") as err:
        theory(name, reqs((0, 2, 3), (0, 1, 1)), 10)
    assert "request 0" in str(err.value)


@pytest.mark.parametrize("name", ["a-max", "a-min"])
def test_interval_schedulers_reject_point_only_predictions(name):
    with pytest.raises(ValueError, match="predicted_output_interval"):
        theory(name, predicted(reqs((0, 2, 3)), "relative:eps=0.5"), 10)


# --- order variants --------------------------------------------------------------------------

def test_aging_lets_a_long_old_request_overtake_a_short_new_one():
    # M = 10. A blocker (s 5, o 4) runs 0..4. Long L (s 4, o 6) waits from 0, short S (s 4, o 3)
    # from 1; at 4 only one of them fits. Plain MC-SF starts S first; with aging 5 the keys are
    # L: 6 + 5·0 = 6 < S: 3 + 5·1 = 8, so L goes first.
    workload = predicted(reqs((0, 5, 4), (0, 4, 6), (1, 4, 3)))
    plain, _ = theory("mcsf", workload, 10)
    aged, _ = theory("mcsf", workload, 10, aging=5.0)
    assert starts(plain) == [0, 7, 4]
    assert starts(aged) == [0, 4, 10]


def test_svf_orders_by_volume_not_length():
    # M = 13. A: s 10, o 2 (volume 23); B: s 1, o 4 (volume 14). They do not fit together.
    workload = predicted(reqs((0, 10, 2), (0, 1, 4)))
    mc, _ = theory("mcsf", workload, 13)
    svf, _ = theory("svf", workload, 13)
    assert starts(mc) == [0, 2]
    assert starts(svf) == [4, 0]
