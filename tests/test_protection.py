"""α-protection greedy and α-protection β-clearing (the MC-SF paper's baselines, arXiv
2502.07115), and the clearing rules they share (`kvsched.schedulers.clearing`).

Scenarios run the real simulator in theory mode (unit rounds, block size 1, one lookahead
slot: a request holds s + j tokens after its j-th output token, as in the paper's model); the expected
decisions are derived by hand in the comments. A request started at epoch p with output o
finishes at p + o.
"""

import numpy as np
import pytest
from conftest import Recorder, reqs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.decision import View
from kvsched.loop import SchedulingError
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.clearing import CLEARING_RULES, InfeasibleSchedule, clear
from kvsched.schedulers.protection import (
    AlphaProtectionScheduler,
    BetaClearingScheduler,
)
from kvsched.schedulers.vllm import STEADY
from kvsched.sim import simulate, simulate_theory
from kvsched.sim.cost import UnitCost


def _theory(name, workload, capacity, **opts):
    rec = Recorder(SCHEDULERS.create(name, **opts))
    run = simulate_theory(workload, rec, capacity_tokens=capacity, max_steps=10_000)
    by_id = {r.request_id: r for r in run.requests}
    calls = [(now, dict(d.run), d.restart, d.preempt) for now, d in rec.decisions]
    return run, by_id, calls, rec


# --- α-protection greedy -------------------------------------------------------------------

def test_greedy_admits_under_protection_fcfs_head_of_line():
    # M = 12, α = 0.25: limit floor(9) = 9. A(s2,o3), B(s3,o2), C(s3,o2), D(s1,o1) at 0.
    # t=0: A 0+3 <= 9; B 3+4 = 7 <= 9; C 7+4 = 11 > 9 stops admission, so D (7+2 = 9)
    #      waits behind it. Real round: A 3 + B 4 = 7 <= 12.
    # t=1: usage 3+4 = 7, C still misses; next round 4+5 = 9 fits.
    # t=2: B finished; usage A 4; C 4+4 = 8 <= 9; D 8+2 = 10 > 9 stops. Round A 5 + C 4 = 9.
    # t=3: A finished; usage C 4; D 4+2 = 6. Round C 5 + D 2 = 7.
    # t=4: C and D finish.
    run, by_id, calls, rec = _theory("alpha-protection", reqs((0, 2, 3), (0, 3, 2), (0, 3, 2), (0, 1, 1)), 12)
    assert calls == [
        (0.0, {0: 2, 1: 3}, (), ()),
        (1.0, {0: 1, 1: 1}, (), ()),
        (2.0, {0: 1, 2: 3}, (), ()),
        (3.0, {2: 1, 3: 1}, (), ()),
    ]
    assert [by_id[i].first_scheduled_time for i in range(4)] == [0.0, 0.0, 2.0, 3.0]
    assert [by_id[i].finish_time - by_id[i].arrival_time for i in range(4)] == [3.0, 2.0, 4.0, 4.0]
    assert run.steps["kv_used_tokens"] == [7, 9, 9, 7]
    # t=1: nothing cleared or admitted, C blocked: the decode decision repeats until an event.
    assert [d.repeat for _, d in rec.decisions] == [1, STEADY, 1, 1]


def test_greedy_overflow_raises_infeasible_naming_the_step():
    # M = 10, α = 0.4 (limit 6): A, B (s2, o7) both admitted at 0 (3, then 6 <= 6).
    # After round j each holds 2 + j; the next round needs 2 (3 + j) > 10 first at j = 3.
    with pytest.raises(InfeasibleSchedule, match=r"alpha-protection: overflow at step 3 .*needs 12 KV tokens"):
        simulate_theory(reqs((0, 2, 7), (0, 2, 7)), SCHEDULERS.create("alpha-protection", alpha=0.4),
                        capacity_tokens=10)
    assert AlphaProtectionScheduler.may_declare_infeasible is True
    assert BetaClearingScheduler().may_declare_infeasible is False
    assert BetaClearingScheduler(clearing="none").may_declare_infeasible is True


def test_greedy_with_enough_protection_is_feasible():
    # α = 0.5 (limit 5): only A fits at 0 (3, then 6 > 5); B starts when A ends at 7.
    _, by_id, _, _ = _theory("alpha-protection", reqs((0, 2, 7), (0, 2, 7)), 10, alpha=0.5)
    assert (by_id[0].finish_time, by_id[1].first_scheduled_time, by_id[1].finish_time) == (7.0, 7.0, 14.0)


def test_greedy_admits_a_head_over_the_protected_limit_when_nothing_runs():
    # M = 10, α = 0.5 (limit 5): A (s5) needs 6 > 5 but nothing runs, so it starts alone
    # (documented deviation); B (s1, 5 + 2 > 5 while A runs) starts when A ends at 3.
    _, by_id, calls, _ = _theory("alpha-protection", reqs((0, 5, 3), (0, 1, 1)), 10, alpha=0.5)
    assert calls[0][1] == {0: 5}
    assert (by_id[0].finish_time, by_id[1].first_scheduled_time, by_id[1].finish_time) == (3.0, 3.0, 4.0)


def test_greedy_clear_all_option_restarts_every_running_request():
    # M = 10, α = 0.2 (limit 8), clearing="all". A (s3, o7) at 0, B (s1, o3) at 2.
    # t=2: usage A 5 + 2 = 7 <= 8: B starts. t=4: A holds 7, B 2; next round 8 + 4 = 12 > 10:
    #      both are cleared and, FCFS, readmitted at once (A 0 + 4, B 4 + 2 = 6 <= 8).
    # From 4 on: A holds 3 + k, B 1 + k; B finishes at 7 before the next round (7 + 5 = 12)
    # would overflow; A finishes at 11.
    _, by_id, calls, _ = _theory("alpha-protection", reqs((0, 3, 7), (2, 1, 3)), 10, alpha=0.2, clearing="all")
    assert [c for c in calls if c[2]] == [(4.0, {0: 3, 1: 1}, (0, 1), ())]
    a, b = by_id[0], by_id[1]
    assert (a.finish_time, a.num_restarts, a.num_wasted_tokens) == (11.0, 1, 6)
    assert (b.finish_time, b.num_restarts, b.num_wasted_tokens) == (7.0, 1, 2)


# --- α-protection β-clearing ---------------------------------------------------------------

def test_beta_clearing_evicts_latest_started_and_victim_restarts():
    # M = 10, α = 0.4 (limit 6), β = 0.1 (target 9). A, B (s2, o7) start at 0.
    # t=3: each holds 5; the next round needs 12 > 10: LIFO evicts B (A alone: 6 <= 9).
    #      B rejoins the queue; usage A 5 + 3 = 8 > 6 keeps it out.
    # A finishes at 7; B restarts at 7 with its whole prompt (P-9) and finishes at 14.
    run, by_id, calls, _ = _theory("beta-clearing", reqs((0, 2, 7), (0, 2, 7)), 10, alpha=0.4, beta=0.1)
    assert calls == [
        (0.0, {0: 2, 1: 2}, (), ()),
        (1.0, {0: 1, 1: 1}, (), ()),  # STEADY: fast-forwarded to t=3
        (3.0, {0: 1}, (1,), ()),
        (4.0, {0: 1}, (), ()),  # B blocked: fast-forwarded to A's finish
        (7.0, {1: 2}, (), ()),  # P-9: the victim's next batch entry has new_tokens = s
        (8.0, {1: 1}, (), ()),
    ]
    a, b = by_id[0], by_id[1]
    assert (a.finish_time, a.num_restarts) == (7.0, 0)
    # B held s + 3 = 5 tokens (4 computed) when cleared: they are computed again.
    assert (b.num_restarts, b.num_wasted_tokens, b.num_output_tokens) == (1, 4, 7)
    assert b.finish_time - b.arrival_time == 14.0  # latency from the original arrival
    assert max(run.steps["kv_used_tokens"]) == 10


def test_beta_clearing_victim_readmitted_at_once_when_protection_allows():
    # M = 10, α = 0.2 (limit 8), β = 0.1 (target 9). A, B (s1, o8), peak 9.
    # t=4: each holds 5, next round 12 > 10: evict B; usage A 5 + 2 = 7 <= 8, so B is
    #      restarted and readmitted in the same decision with new_tokens = s = 1.
    # t=6: A holds 7, B 3; next 8 + 4 = 12 > 10: evict B again; 7 + 2 = 9 > 8 keeps it out.
    # A finishes at 8; B restarts at 8 and finishes at 16 (two evictions: 4 + 2 wasted).
    _, by_id, calls, _ = _theory("beta-clearing", reqs((0, 1, 8), (0, 1, 8)), 10)
    evictions = [(now, run, restart) for now, run, restart, _ in calls if restart]
    assert evictions == [(4.0, {0: 1, 1: 1}, (1,)), (6.0, {0: 1}, (1,))]
    b = by_id[1]
    assert (b.num_restarts, b.num_wasted_tokens, b.first_scheduled_time, b.finish_time) == (2, 6, 0.0, 16.0)
    assert by_id[0].finish_time == 8.0


def test_beta_clearing_keep_generated_option_recomputes_prompt_plus_output():
    # As the first β-clearing scenario, preemption="recompute": B keeps its 3 tokens and
    # re-enters at 7 with s + g = 5 new tokens (usage 0 + 5 + 1 = 6 <= 6),
    # emitting token 4 at 8 and its last token (7) at 11.
    _, by_id, calls, _ = _theory("beta-clearing", reqs((0, 2, 7), (0, 2, 7)), 10, alpha=0.4,
                                 preemption="recompute")
    assert calls[2] == (3.0, {0: 1}, (), (1,))
    assert calls[4] == (7.0, {1: 5}, (), ())
    b = by_id[1]
    assert (b.num_preemptions, b.num_wasted_tokens, b.finish_time) == (1, 4, 11.0)


def test_beta_clearing_bernoulli_is_seeded_and_reproducible():
    workload = reqs(*[(t % 4, 1 + t % 3, 4 + (5 * t) % 9) for t in range(12)])

    def once(seed):
        run = simulate_theory(workload, SCHEDULERS.create("beta-clearing", clearing="bernoulli", beta=0.5,
                                                          seed=seed), capacity_tokens=16, max_steps=20_000)
        return run.steps, [(r.finish_time, r.num_evictions, r.num_wasted_tokens) for r in run.requests]

    first = once(3)
    assert once(3) == first
    assert sum(p for _, p, _ in first[1]) > 0  # the scenario does clear
    assert all(SCHEDULERS.create("beta-clearing", clearing="bernoulli", seed=s).config()["seed"] == s
               for s in (0, 7))


def test_options_are_validated_and_recorded():
    assert SCHEDULERS.create("alpha-protection").config() == {
        "alpha": 0.25, "clearing": "none", "beta": 0.0, "preemption": "restart", "seed": 0}
    assert SCHEDULERS.create("beta-clearing").config() == {
        "alpha": 0.2, "clearing": "lifo", "beta": 0.1, "preemption": "restart", "seed": 0}
    for bad in ({"alpha": 1.0}, {"alpha": -0.1}, {"beta": 1.5}, {"clearing": "fifo"}, {"preemption": "swap"}):
        with pytest.raises(ValueError):
            SCHEDULERS.create("beta-clearing", **bad)


# --- random workloads: memory safety, completion, fast-forward ------------------------------

theory_workloads = st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6), st.integers(1, 14)),
                            min_size=1, max_size=8)
block_workloads = st.lists(st.tuples(st.floats(0, 4, allow_nan=False), st.integers(1, 40), st.integers(1, 30)),
                           min_size=1, max_size=8)
MAX_STEPS = 4_000


def _requests(specs):
    return [Request(i, t, p, o) for i, (t, p, o) in enumerate(specs)]


def _run(workload, rule, capacity, block_size, fast_forward=True):
    """The run, or None when clearing="all" livelocks (the spec's rule can re-create the
    same overflow forever; the loop's max_steps guard reports it)."""
    scheduler = SCHEDULERS.create("beta-clearing", clearing=rule, beta=0.3, seed=1)
    try:
        if block_size is None:
            return simulate_theory(workload, scheduler, capacity_tokens=capacity, max_steps=MAX_STEPS,
                                   fast_forward=fast_forward)
        return simulate(workload, scheduler, UnitCost(), capacity_tokens=capacity, block_size=block_size,
                        max_steps=MAX_STEPS, fast_forward=fast_forward)
    except SchedulingError as e:
        assert rule == "all" and "exceeded max_steps" in str(e), e
        return None


def _check(run, capacity):
    assert max(run.steps["kv_used_tokens"], default=0) <= capacity
    assert all(u <= b * run.block_size for u, b in zip(run.steps["kv_used_tokens"], run.steps["kv_used_blocks"]))
    for r in run.requests:
        if r.status is not RequestStatus.REJECTED:
            assert r.status is RequestStatus.FINISHED and r.num_output_tokens == r.output_len
            assert r.arrival_time <= r.first_scheduled_time <= r.finish_time


@pytest.mark.parametrize("rule", ["lifo", "all", "bernoulli"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=theory_workloads, capacity=st.integers(6, 30))
def test_beta_clearing_theory_mode_is_safe_and_complete(rule, specs, capacity):
    workload = _requests(specs)
    run = _run(workload, rule, capacity, None)
    if run is None:
        return
    _check(run, capacity)
    assert all(float(r.finish_time).is_integer() for r in run.requests if r.finish_time is not None)
    stepped = _run(workload, rule, capacity, None, fast_forward=False)
    assert [(r.finish_time, r.num_evictions) for r in stepped.requests] == \
        [(r.finish_time, r.num_evictions) for r in run.requests]


@pytest.mark.parametrize("rule", ["lifo", "all", "bernoulli"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=block_workloads, capacity=st.integers(16, 96), block_size=st.sampled_from([4, 16]))
def test_beta_clearing_with_blocks_is_safe_and_complete(rule, specs, capacity, block_size):
    run = _run(_requests(specs), rule, capacity, block_size)
    if run is not None:
        _check(run, capacity)


def test_lifo_clearing_never_livelocks_where_clear_all_does():
    # A, B (s1, o9), M = 10, α = 0.2: both start at 0 and overflow together at t=4.
    # "all" restarts both, which re-creates the same overflow forever; LIFO keeps A.
    workload = reqs((0, 1, 9), (0, 1, 9))
    assert _run(workload, "all", 10, None) is None
    run = _run(workload, "lifo", 10, None)
    assert [r.finish_time for r in run.requests] == [9.0, 18.0]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=theory_workloads, capacity=st.integers(6, 30), alpha=st.sampled_from([0.3, 0.25]))
def test_greedy_is_safe_or_declares_infeasible(specs, capacity, alpha):
    try:
        run = simulate_theory(_requests(specs), SCHEDULERS.create("alpha-protection", alpha=alpha),
                              capacity_tokens=capacity, max_steps=MAX_STEPS)
    except InfeasibleSchedule as e:
        assert "overflow at step" in str(e)
        return
    _check(run, capacity)
    assert all(r.num_evictions == 0 for r in run.requests)


# --- clearing.clear ------------------------------------------------------------------------

def _running(*specs):
    """Running requests in start order from (prompt_len, generated) pairs."""
    out = []
    for i, (s, g) in enumerate(specs):
        r = Request(i, 0.0, s, 20)
        r.num_output_tokens = g
        r.num_computed_tokens = s + g - 1
        r.status = RequestStatus.RUNNING
        out.append(r)
    return out


def _view(num_blocks, block_size=1, lookahead=1, step=7):
    return View(now=3.0, step=step, waiting={}, resident={}, arrived=(), finished=(), num_free_blocks=0,
                num_blocks=num_blocks, block_size=block_size, arrivals_pending=False, lookahead_tokens=lookahead)


def _ids(victims):
    return [r.request_id for r in victims]


# Theory ledger: next round of (s, g) needs s + g + 1: (3,2) -> 6, (2,1) -> 4, (1,1) -> 3; total 13.
RUNNING = ((3, 2), (2, 1), (1, 1))


@pytest.mark.parametrize("rule", CLEARING_RULES)
def test_clear_returns_nothing_when_the_next_round_fits(rule):
    assert clear(_view(13), _running(*RUNNING), rule, target_tokens=0, beta=1.0, rng=None) == []


@pytest.mark.parametrize(("target", "victims"), [(12, [2]), (10, [2]), (9, [1, 2]), (6, [1, 2]),
                                                  (5, [1, 2]), (0, [1, 2])])
def test_clear_lifo_evicts_from_the_end_down_to_the_target(target, victims):
    # Capacity 12 < 13. Evicting 2 leaves 10, then 1 leaves 6. The earliest-started
    # request is kept even when it alone exceeds the target (5, 0): it fits the capacity.
    assert _ids(clear(_view(12), _running(*RUNNING), "lifo", target_tokens=target)) == victims


def test_clear_lifo_target_never_above_capacity_and_counts_blocks():
    # A target above the capacity is capped at the capacity.
    assert _ids(clear(_view(12), _running(*RUNNING), "lifo", target_tokens=100)) == [2]
    # Blocks of 4, no lookahead: (3,2) 5 tokens -> 2 blocks, (2,1) 3 -> 1, (1,1) 2 -> 1, (6,2) 8 -> 2.
    running = _running((3, 2), (2, 1), (1, 1), (6, 2))
    assert clear(_view(6, block_size=4, lookahead=0), running, "lifo", target_tokens=0) == []
    assert _ids(clear(_view(5, block_size=4, lookahead=0), running, "lifo", target_tokens=17)) == [3]
    assert _ids(clear(_view(5, block_size=4, lookahead=0), running, "lifo", target_tokens=15)) == [2, 3]


def test_clear_all_and_none():
    running = _running(*RUNNING)
    assert _ids(clear(_view(12), running, "all", target_tokens=12)) == [0, 1, 2]
    with pytest.raises(InfeasibleSchedule, match=r"greedy: overflow at step 7 .*needs 13 KV tokens, capacity is 12"):
        clear(_view(12), running, "none", target_tokens=12, who="greedy")


def test_clear_bernoulli():
    running = _running(*RUNNING)
    # beta = 1: every draw clears; beta = 0: no draw clears, LIFO only down to the capacity.
    assert _ids(clear(_view(12), running, "bernoulli", target_tokens=0, beta=1.0,
                      rng=np.random.default_rng(0))) == [0, 1, 2]
    assert _ids(clear(_view(12), running, "bernoulli", target_tokens=0, beta=0.0,
                      rng=np.random.default_rng(0))) == [2]
    draws = [_ids(clear(_view(12), running, "bernoulli", target_tokens=0, beta=0.5,
                        rng=np.random.default_rng(s))) for s in range(20)]
    assert draws == [_ids(clear(_view(12), running, "bernoulli", target_tokens=0, beta=0.5,
                                rng=np.random.default_rng(s))) for s in range(20)]
    assert len({tuple(d) for d in draws}) > 1
    with pytest.raises(ValueError, match="seeded generator"):
        clear(_view(12), running, "bernoulli", target_tokens=0, beta=0.5)


def test_clear_rejects_an_unknown_rule_even_when_it_fits():
    for capacity in (12, 13):
        with pytest.raises(ValueError, match="unknown clearing rule 'fifo'"):
            clear(_view(capacity), _running(*RUNNING), "fifo", target_tokens=0)
