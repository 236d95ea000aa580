"""GBA, GSA, b-scaling and Sorted-F (docs/gsa.md): exact vectors, pitfall
regressions, a literal reference implementation of the pseudocode, the hidden-length
oracle, kill accounting, memory safety and the published constants as sanity bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kvsched.bounds.batch import exact_optimum, lb_count
from kvsched.bounds.solvers import solver_available
from kvsched.decision import Decision, Scheduler, View
from kvsched.loop import SchedulingError
from kvsched.metrics import summarize
from kvsched.registry import SCHEDULERS
from kvsched.request import OutputLengthHidden, RequestStatus
from kvsched.schedulers.future_plan import FuturePlan, brute_force_fits
from kvsched.schedulers.geometric import (
    GOLDEN_GSA_BASE,
    geometric_budget,
    kv_area,
    volume_class,
)
from kvsched.sim import simulate_batch

GEOMETRIC = ("gba", "gba-batched", "gba-sync", "gsa", "gsa-batched", "b-scaling")


def run_batch(name, s, o, M, fast_forward=True, **options):
    return simulate_batch(s, o, SCHEDULERS.create(name, **options), capacity_tokens=M, fast_forward=fast_forward)


def total(run) -> int:
    return round(sum(r.finish_time for r in run.requests))


def kills(run) -> tuple[int, int]:
    return sum(r.num_restarts for r in run.requests), sum(r.num_discarded_tokens for r in run.requests)


MIXED = ([399] * 20 + [0] * 200, [1] * 20 + [2] * 200, 400)
HOMOGENEOUS = ([0] * 300, [64] * 300, 1024)
UNIT = ([0] * 2000, [1] * 2000, 50)


# --- §14.2 exact test vectors ----------------------------------------------------------------
@pytest.mark.parametrize(("name", "options", "instance", "expected"), [
    ("gsa", {"base": 2}, ([0], [5], 100), (12, 3, 7)),
    ("gsa", {"base": GOLDEN_GSA_BASE}, ([0], [5], 100), (9, 2, 4)),
    ("gsa", {}, ([0], [5], 100), (9, 2, 4)),  # the general-regime default base
    ("b-scaling", {}, ([0], [5], 100), (9, 2, 4)),
    ("gsa", {"base": 2}, ([90], [10], 100), (25, 4, 15)),
    ("gba", {}, UNIT, (41_000, 0, 0)),
    ("gsa", {}, UNIT, (41_000, 0, 0)),
    ("b-scaling", {}, UNIT, (41_000, 0, 0)),
    ("gba", {}, MIXED, (736, 0, 0)),
    ("gsa", {"base": 2, "refund": False}, MIXED, (956, 200, 200)),
    ("gsa", {"base": 2.3028, "refund": False}, MIXED, (1109, None, None)),
    ("b-scaling", {}, MIXED, (4944, None, None)),
    ("gba", {}, HOMOGENEOUS, (124_102, 0, 0)),
    ("gba", {"stagger": False}, HOMOGENEOUS, (189_696, 0, 0)),
    ("gba", {"credit_cap": 16}, HOMOGENEOUS, (161_344, 0, 0)),
    ("gsa", {"base": 2, "refund": False}, HOMOGENEOUS, (192_258, 1800, 18_900)),
    ("gsa", {"base": 2, "refund": False, "stagger": False}, HOMOGENEOUS, (297_396, 1800, 18_900)),
    ("gsa", {"base": 2.3028, "refund": False}, HOMOGENEOUS, (177_539, 1500, 15_600)),
    ("gsa", {"base": 2.3028}, HOMOGENEOUS, (183_288, 1500, 15_600)),
])
def test_exact_vectors(name, options, instance, expected):
    run = run_batch(name, *instance, **options)
    num_kills, discarded = kills(run)
    want_total, want_kills, want_discarded = expected
    assert total(run) == want_total
    if want_kills is not None:
        assert (num_kills, discarded) == (want_kills, want_discarded)


def test_gba_three_jobs_starts_with_and_without_stagger():
    starts = lambda run: sorted(r.admit_time for r in run.requests)
    on, off = run_batch("gba", [0] * 3, [4] * 3, 10), run_batch("gba", [0] * 3, [4] * 3, 10, stagger=False)
    assert starts(on) == [0, 1, 2] and total(on) == 15
    assert starts(off) == [0, 0, 2] and total(off) == 14


def test_sorted_f_batches_on_three_jobs():
    run = run_batch("sorted-f", [0] * 3, [4] * 3, 10)
    assert sorted((r.admit_time, r.finish_time) for r in run.requests) == [(0, 4), (0, 4), (4, 8)]
    assert total(run) == 16


def test_gsa_worked_examples_attempt_by_attempt():
    (job,) = run_batch("gsa", [0], [5], 100, base=2).requests
    assert job.attempts == [(0, 1, "restart"), (1, 2, "restart"), (3, 4, "restart"), (7, 5, "finish")]
    (capped,) = run_batch("gsa", [90], [10], 100, base=2).requests
    assert [start for start, _, _ in capped.attempts] == [0, 1, 3, 7, 15]
    assert capped.num_restarts * (capped.prompt_len - 1) == 360  # s_i = prompt_len - 1 in batch mode
    # The killed attempts reserved (and held) 90 b + b(b+1)/2 for b = 1, 2, 4, 8.
    assert capped.wasted_kv_area == sum(kv_area(90, b) for b in (1, 2, 4, 8))


# --- §14.3 pitfall regressions -----------------------------------------------------------
def test_pitfall_unit_jobs_hit_the_counting_bound():
    s, o, M = UNIT
    assert lb_count(s, o, M) == 41_000
    assert total(run_batch("gsa", s, o, M)) == 41_000


def test_pitfall_heterogeneous_prompts_stay_near_the_bound():
    s, o, M = MIXED
    lb = lb_count(s, o, M)
    assert lb == 649
    assert total(run_batch("gsa", s, o, M, base=2, refund=False)) / lb < 1.5
    assert total(run_batch("b-scaling", s, o, M)) / lb > 7  # the full-round reading fails here


def test_pitfall_staggering_beats_synchronised_starts():
    s, o, M = HOMOGENEOUS
    lb = lb_count(s, o, M)
    for name, options in (("gba", {}), ("gsa", {"base": 2, "refund": False})):
        on = total(run_batch(name, s, o, M, **options)) / lb
        off = total(run_batch(name, s, o, M, stagger=False, **options)) / lb
        assert on < 0.7 * off, (name, on, off)


# --- a literal reference implementation of §8.3 / §9.3 --------------------------------------
def reference(jobs, M, *, clairvoyant, base=2.0, stagger=True, B=1, refund=True):
    """The spec's pseudocode, step by step, with a brute-force reservation check."""
    n = len(jobs)
    level = [0] * n
    pool = set(range(n))
    running: dict[int, list[int]] = {}  # job -> [start, budget, tokens]
    done: dict[int, int] = {}
    t, credit = 0, 0.0

    def budget(i):
        s, o = jobs[i]
        return o if clairvoyant else geometric_budget(1, base, level[i], M - s)

    def fits(i, b):
        alive = [(jobs[j][0] + a[2], a[1] - a[2]) for j, a in running.items()]
        return brute_force_fits(M, alive, jobs[i][0], b)

    while pool or running:
        credit = min(credit + M, B * M) if stagger else math.inf
        for i in sorted(pool, key=lambda i: (kv_area(jobs[i][0], budget(i)), jobs[i][0], i)):
            if credit <= 0:
                break
            b = budget(i)
            if fits(i, b):
                running[i] = [t, b, 0]
                pool.discard(i)
                credit -= kv_area(jobs[i][0], b)
        for i in list(running):
            a = running[i]
            a[2] += 1
            if a[2] == jobs[i][1]:
                done[i] = t + 1
                if refund and not clairvoyant:
                    credit += kv_area(jobs[i][0], a[1]) - kv_area(jobs[i][0], a[2])
                del running[i]
            elif a[2] == a[1]:
                del running[i]
                level[i] += 1
                pool.add(i)
        t += 1
        if not running:
            credit = max(credit, 0)
    return [done[i] for i in range(n)]


jobs_strategy = st.integers(min_value=8, max_value=60).flatmap(lambda M: st.tuples(
    st.just(M),
    st.lists(st.tuples(st.integers(0, M // 2), st.integers(1, M)), min_size=1, max_size=12).map(
        lambda js: [(s, min(o, M - s)) for s, o in js]),
))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs_strategy, st.sampled_from([2.0, GOLDEN_GSA_BASE, 3.0]), st.booleans(), st.sampled_from([1, 2]),
       st.booleans())
def test_gba_and_gsa_equal_the_literal_pseudocode(case, base, stagger, B, refund):
    M, jobs = case
    s, o = [j[0] for j in jobs], [j[1] for j in jobs]
    by_id = lambda run: [r.finish_time for r in sorted(run.requests, key=lambda r: r.request_id)]
    gba = run_batch("gba", s, o, M, stagger=stagger, credit_cap=B)
    assert by_id(gba) == reference(jobs, M, clairvoyant=True, stagger=stagger, B=B)
    gsa = run_batch("gsa", s, o, M, base=base, stagger=stagger, credit_cap=B, refund=refund)
    assert by_id(gsa) == reference(jobs, M, clairvoyant=False, base=base, stagger=stagger, B=B, refund=refund)


# --- §14.1 properties -----------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs_strategy, st.sampled_from((*GEOMETRIC, "sorted-f")))
def test_memory_safety_completion_and_fast_forward(case, name):
    M, jobs = case
    s, o = [j[0] for j in jobs], [j[1] for j in jobs]
    fast, slow = run_batch(name, s, o, M), run_batch(name, s, o, M, fast_forward=False)
    for run in (fast, slow):
        assert max(run.steps["kv_used_tokens"]) <= M
        assert all(r.status is RequestStatus.FINISHED for r in run.requests)
        assert all(r.finish_time >= r.output_len for r in run.requests)
        assert all(sum(1 for *_, how in r.attempts if how == "finish") == 1 for r in run.requests)
    # Skipping rounds (Decision.repeat) must not change a single decision's effect.
    key = lambda run: [(r.request_id, r.finish_time, r.attempts) for r in run.requests]
    assert key(fast) == key(slow)


@pytest.mark.parametrize("name", GEOMETRIC + ("sorted-f",))
@pytest.mark.parametrize(("s", "o", "M"), [
    ([0], [1], 2), ([7], [3], 10), ([5], [5], 10),  # one job, also filling the cache exactly
    ([0] * 9, [3, 1, 4, 1, 5, 9, 2, 6, 5], 20),  # all s = 0
    ([3, 0, 8, 2, 5], [1] * 5, 10),  # all o = 1
])
def test_degenerate_instances_complete(name, s, o, M):
    run = run_batch(name, s, o, M)
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)
    assert max(run.steps["kv_used_tokens"]) <= M
    if len(s) == 1:
        ok = run.requests[0]
        assert ok.finish_time >= o[0]


def test_huge_memory_gba_starts_everything_at_once():
    rng = np.random.default_rng(3)
    s, o = rng.integers(0, 50, 40), rng.integers(1, 80, 40)
    M = int(kv_area(s, o).sum())  # every job's area fits in the first round's credit
    assert total(run_batch("gba", s, o, M)) == int(o.sum())  # = OPT: every job ends at C_i = o_i


def test_same_inputs_give_identical_results():
    rng = np.random.default_rng(5)
    s, o = rng.integers(0, 100, 200), rng.integers(1, 200, 200)
    frames = [[(r.request_id, r.finish_time, r.attempts) for r in run_batch("gsa", s, o, 2000).requests]
              for _ in range(2)]
    assert frames[0] == frames[1]


def test_kill_accounting_matches_the_attempt_log():
    rng = np.random.default_rng(11)
    s, o = rng.integers(0, 30, 60), rng.integers(1, 90, 60)
    run = run_batch("gsa", s, o, 300, base=2)
    for r in run.requests:
        killed = [(g, start) for start, g, how in r.attempts if how == "restart"]
        assert r.num_restarts == len(killed)
        # Each kill happens when the attempt used its whole budget: 1, 2, 4, ... (capped at M - s).
        assert [g for g, _ in killed] == [geometric_budget(1, 2.0, k, 300 - (r.prompt_len - 1))
                                          for k in range(len(killed))]
        assert r.num_discarded_tokens == sum(g for g, _ in killed)
        assert r.wasted_kv_area == sum(kv_area(r.prompt_len - 1, g) for g, _ in killed)
        assert r.num_output_tokens == r.output_len and r.num_preemptions == 0
    summary = summarize(run)
    # Throughput counts the tokens of completed requests once, never the discarded ones.
    assert summary["num_completed_output_tokens"] == int(o.sum())
    assert summary["num_discarded_tokens"] == sum(r.num_discarded_tokens for r in run.requests) > 0
    assert summary["num_restarts"] == sum(r.num_restarts for r in run.requests)
    assert summary["wasted_kv_area"] == sum(r.wasted_kv_area for r in run.requests)


def test_resume_keeps_tokens_and_wastes_none():
    run = run_batch("gsa", [0], [5], 100, base=2, resume=True)
    (job,) = run.requests
    # Budgets 1, 2, 4 count new tokens; the kept tokens are never thrown away.
    assert (job.num_restarts, job.num_discarded_tokens, job.num_preemptions) == (0, 0, 2)
    assert [g for _, g, _ in job.attempts] == [1, 2, 2]
    assert job.finish_time == 5


# --- §4.6 the oracle: non-clairvoyant schedulers never see output lengths -------------------
@pytest.mark.parametrize("name", ["gsa", "gsa-batched", "b-scaling", "vllm"])
def test_non_clairvoyant_schedulers_run_blind(name):
    assert SCHEDULERS.create(name).clairvoyant is False
    rng = np.random.default_rng(2)
    options = {"max_num_batched_tokens": 10**6, "preemption": "restart"} if name == "vllm" else {}
    run = run_batch(name, rng.integers(0, 20, 30), rng.integers(1, 40, 30), 120, **options)
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)


def test_a_scheduler_that_peeks_is_caught():
    class Peeker(Scheduler):
        clairvoyant = False

        def schedule(self, view: View) -> Decision:
            return Decision({rid: r.output_len for rid, r in view.waiting.items()})

    with pytest.raises(OutputLengthHidden, match="non-clairvoyant scheduler read 'output_len'"):
        simulate_batch([1], [3], Peeker(), capacity_tokens=10)


class _Recorder(Scheduler):
    clairvoyant = False

    def __init__(self, inner):
        self.inner, self.log = inner, []

    def schedule(self, view):
        d = self.inner.schedule(view)
        self.log.append((view.step, dict(d.run), d.restart, d.preempt))
        return d


@settings(max_examples=30, deadline=None)
@given(jobs_strategy, st.data())
def test_gsa_decisions_depend_on_a_length_only_once_it_is_observable(case, data):
    M, jobs = case
    j = data.draw(st.integers(0, len(jobs) - 1))
    s_j = jobs[j][0]
    other = data.draw(st.integers(1, M - s_j))
    runs = []
    for o_j in (jobs[j][1], other):
        o = [oi for _, oi in jobs]
        o[j] = o_j
        rec = _Recorder(SCHEDULERS.create("gsa"))
        run = simulate_batch([si for si, _ in jobs], o, rec, capacity_tokens=M, fast_forward=False)
        runs.append((rec.log, next(r for r in run.requests if r.request_id == j).finish_time))
    # Up to the first boundary at which j finished in one instance, the two are identical.
    first_difference = min(runs[0][1], runs[1][1])
    before = [[entry for entry in log if entry[0] < first_difference] for log, _ in runs]
    assert before[0] == before[1]


def test_permuting_identical_jobs_permutes_the_result():
    s, o = [4, 0, 4, 0, 9], [6, 3, 6, 3, 2]
    perm = [2, 3, 0, 1, 4]  # swap the two copies of each identical pair
    a = run_batch("gsa", s, o, 30)
    b = run_batch("gsa", [s[i] for i in perm], [o[i] for i in perm], 30)
    fa = sorted(r.finish_time for r in a.requests)
    fb = sorted(r.finish_time for r in b.requests)
    assert fa == fb


# --- §6.2 the shared reservation check --------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.integers(5, 60), st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), max_size=6),
       st.lists(st.tuples(st.integers(0, 30), st.integers(1, 30)), min_size=1, max_size=6))
def test_vectorised_reservation_check_equals_brute_force(cap, alive, candidates):
    horizon = max((r for _, r in alive), default=0)
    assume(all(sum(f + c for f, r in alive if r >= c) <= cap for c in range(1, horizon + 1)))  # a safe plan
    plan = FuturePlan(cap, alive)
    f = np.array([c[0] for c in candidates])
    r = np.array([c[1] for c in candidates])
    assert plan.fits_many(f, r).tolist() == [brute_force_fits(cap, alive, fc, rc) for fc, rc in candidates]
    if alive:
        first_end = min(rounds for _, rounds in alive)
        # d rounds later each alive request holds d more and has d fewer rounds to go.
        for d in range(1, first_end):
            later = [(fa + d, ra - d) for fa, ra in alive]
            assert plan.fits_many(f, r, delay=d).tolist() == [brute_force_fits(cap, later, fc, rc)
                                                              for fc, rc in candidates]
        want = next((d for d in range(1, first_end)
                     if any(brute_force_fits(cap, [(fa + d, ra - d) for fa, ra in alive], fc, rc)
                            for fc, rc in candidates)), None)
        assert plan.earliest_fit(f, r, 1, first_end - 1) == want


def test_budgets_and_classes():
    assert [geometric_budget(1, 2.0, k, 100) for k in range(8)] == [1, 2, 4, 8, 16, 32, 64, 100]
    assert [geometric_budget(1, GOLDEN_GSA_BASE, k, 100) for k in range(4)] == [1, 3, 6, 13]
    assert [geometric_budget(1, 3.0, k, 20) for k in range(4)] == [1, 3, 9, 20]
    assert volume_class(16, 4, 4.0) == 1 and volume_class(17, 4, 4.0) == 2
    assert volume_class(1, 4, 4.0) == -1 and volume_class(4, 4, 4.0) == 0  # zero or negative: no clamping


def test_options_are_validated():
    with pytest.raises(ValueError, match="cannot see lengths"):
        SCHEDULERS.create("gsa", regime="auto")
    with pytest.raises(ValueError, match="credit_cap"):
        SCHEDULERS.create("gba", credit_cap=0)
    with pytest.raises(ValueError, match="batch_barrier"):
        SCHEDULERS.create("gsa", batch_barrier="end")


def test_preempting_and_restarting_one_request_is_rejected_by_the_loop():
    class Both(Scheduler):
        def schedule(self, view):
            if view.step == 0:
                return Decision({0: 2})
            return Decision({}, preempt=(0,), restart=(0,))

    with pytest.raises(SchedulingError, match="both preempted and restarted"):
        simulate_batch([1], [3], Both(), capacity_tokens=10)


# --- §14.4 sanity bounds (not guarantees) ------------------------------------------------------
@pytest.mark.skipif(not solver_available(), reason="no MILP solver installed")
def test_reconstructions_stay_below_the_published_constants_on_tiny_instances():
    rng = np.random.default_rng(7)
    worst = {"gba": 0.0, "gba-batched": 0.0, "gsa": 0.0}
    for _ in range(25):
        M = int(rng.integers(6, 21))
        n = int(rng.integers(1, 6))
        s = rng.integers(0, M // 2, n)
        o = np.minimum(rng.integers(1, M, n), M - s)
        opt = exact_optimum(s, o, M, time_limit_s=20)
        assert opt.status == "optimal"
        for name, so_far in worst.items():
            ratio = total(run_batch(name, s, o, M)) / opt.objective
            assert ratio >= 1 - 1e-9
            worst[name] = max(so_far, ratio)
    for name, bound in (("gba", 32 / 3), ("gba-batched", 32 / 3), ("gsa", 61.92)):
        assert worst[name] <= bound, f"{name}: reconstruction exceeds the published bound ({worst[name]:.2f})"
