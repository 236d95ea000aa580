"""The loop: token accounting conventions, decision validation, rejection, fast-forward."""

import math

import numpy as np
import pytest
from conftest import reqs
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.decision import Decision, Scheduler
from kvsched.kvcache import KVCache
from kvsched.loop import SchedulingError, run
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.sim import SimBackend, simulate
from kvsched.sim.cost import AffineCost, UnitCost


class Scripted(Scheduler):
    """Returns a fixed list of decisions, then idles."""

    def __init__(self, decisions):
        self.decisions = list(decisions)

    def schedule(self, view):
        return self.decisions.pop(0) if self.decisions else Decision()


def _run(requests, decisions, capacity=100, block_size=1):
    return run(requests, Scripted(decisions), SimBackend(UnitCost()), KVCache(capacity, block_size))


def test_first_token_at_end_of_prefill_and_one_token_per_decode():
    # prompt 3, output 3: prefill step emits token 1, two decode steps emit tokens 2 and 3.
    r = simulate(reqs((0.0, 3, 3)), SCHEDULERS.create("vllm"), UnitCost(), capacity_tokens=100, block_size=1,
                 fast_forward=False)
    (q,) = r.requests
    assert q.first_token_time == 1.0 and q.finish_time == 3.0
    # KV held after the step emitting token j (j >= 2) is prompt + j - 1.
    assert r.steps["kv_used_tokens"] == [3, 4, 5]


def test_chunked_prefill_emits_only_when_caught_up():
    r = _run(reqs((0.0, 5, 2)), [Decision({0: 2}), Decision({0: 3}), Decision({0: 1})])
    (q,) = r.requests
    assert q.first_token_time == 2.0 and q.finish_time == 3.0 and q.status is RequestStatus.FINISHED


def test_preemption_recomputes_prompt_and_output():
    r = _run(
        reqs((0.0, 4, 4)),
        [Decision({0: 4}), Decision({0: 1}), Decision({}, preempt=(0,)), Decision({0: 6}), Decision({0: 1})],
    )
    (q,) = r.requests
    assert q.num_preemptions == 1 and q.num_wasted_tokens == 5
    assert q.finish_time == 4.0  # the recompute step emitted token 3, the next one token 4


@pytest.mark.parametrize(
    "decision, match",
    [
        (Decision({9: 1}), "request 9, which is not waiting or resident"),
        (Decision({0: 6}), "asked for 6 new tokens; it has 5 left"),
        (Decision({0: 0}), "asked for 0 new tokens"),
        (Decision({}, preempt=(0,)), "preempt names request 0, which is not resident"),
    ],
)
def test_invalid_decisions_raise(decision, match):
    with pytest.raises(SchedulingError, match=match):
        _run(reqs((0.0, 5, 2)), [decision])


def test_over_capacity_decision_raises_with_numbers():
    with pytest.raises(SchedulingError, match=r"step 0: decision needs 4 new KV blocks but only 2 of 2 are free"):
        _run(reqs((0.0, 20, 2), (0.0, 20, 2)), [Decision({0: 20, 1: 20})], capacity=32, block_size=16)


def test_idle_forever_raises():
    with pytest.raises(SchedulingError, match="would wait forever"):
        _run(reqs((0.0, 5, 2)), [])


def test_restart_discards_generated_tokens():
    r = _run(
        reqs((0.0, 4, 4)),
        [Decision({0: 4}), Decision({0: 1}), Decision({}, restart=(0,)), Decision({0: 4}), Decision({0: 1}),
         Decision({0: 1}), Decision({0: 1})],
    )
    (q,) = r.requests
    # Two tokens were generated, then thrown away: the request starts over from its prompt.
    assert (q.num_restarts, q.num_preemptions) == (1, 0)
    assert q.num_wasted_tokens == 5 and q.num_output_tokens == 4
    assert q.num_discarded_tokens == 2  # the two tokens of the killed attempt
    # The killed attempt held 4 then 5 KV tokens (block size 1, no lookahead).
    assert q.wasted_kv_area == 4 + 5
    assert q.attempts == [(0, 2, "restart"), (2, 4, "finish")]
    assert q.finish_time == 6.0
    assert q.first_token_time == 1.0  # the first attempt's first token (identical output)
    assert q.admit_time == 2.0  # the final attempt started at step 2


def test_recompute_preemption_keeps_tokens_and_counts_separately():
    r = _run(
        reqs((0.0, 4, 4)),
        [Decision({0: 4}), Decision({0: 1}), Decision({}, preempt=(0,)), Decision({0: 6}), Decision({0: 1})],
    )
    (q,) = r.requests
    assert (q.num_restarts, q.num_preemptions) == (0, 1)
    assert q.num_discarded_tokens == 0 and q.wasted_kv_area == 0
    assert q.attempts == [(0, 2, "preempt"), (2, 2, "finish")]  # the second attempt made 2 new tokens
    assert q.finish_time == 4.0


def test_preempt_and_restart_of_one_request_is_an_error():
    with pytest.raises(SchedulingError, match=r"both preempted and restarted"):
        _run(reqs((0.0, 4, 4)), [Decision({0: 4}), Decision({}, preempt=(0,), restart=(0,))])


def test_lookahead_slot_charges_the_papers_ledger():
    r = run(reqs((0.0, 3, 3)), Scripted([Decision({0: 3}), Decision({0: 1}), Decision({0: 1})]),
            SimBackend(UnitCost()), KVCache(100, 1), lookahead_tokens=1)
    assert r.steps["kv_used_tokens"] == [4, 5, 6]  # prompt + j after the j-th output token
    # Two 2-token prompts fit 5 tokens without the slot (4), not with it (6).
    two = reqs((0.0, 2, 1), (0.0, 2, 1))
    run(two, Scripted([Decision({0: 2, 1: 2})]), SimBackend(UnitCost()), KVCache(5, 1))
    with pytest.raises(SchedulingError, match="needs 6 new KV blocks but only 5"):
        run(two, Scripted([Decision({0: 2, 1: 2})]), SimBackend(UnitCost()), KVCache(5, 1), lookahead_tokens=1)


def test_idle_until_waits_without_an_arrival():
    r = _run(reqs((0.0, 2, 1)), [Decision(idle_until=5.0), Decision({0: 2})])
    assert r.requests[0].first_scheduled_time == 5.0 and r.requests[0].finish_time == 6.0
    # An arrival before idle_until still wakes the scheduler at the arrival.
    r = _run(reqs((0.0, 2, 1), (3.0, 2, 1)), [Decision(idle_until=5.0), Decision({0: 2, 1: 2})])
    assert r.requests[0].first_scheduled_time == 3.0
    with pytest.raises(SchedulingError, match="would wait forever"):
        _run(reqs((0.0, 2, 1)), [Decision(idle_until=0.0)])


def test_request_that_never_fits_is_rejected_and_counted():
    # peak KV = 90 + 20 - 1 = 109 > 100 tokens
    r = simulate(reqs((0.0, 90, 20), (0.5, 10, 5)), SCHEDULERS.create("vllm"), UnitCost(), capacity_tokens=100,
                 block_size=1)
    big, small = sorted(r.requests, key=lambda q: q.request_id)
    assert big.status is RequestStatus.REJECTED and "needs 109 KV tokens" in big.reject_reason
    assert "prompt_len=90, output_len=20" in big.reject_reason
    assert small.status is RequestStatus.FINISHED
    assert [q.request_id for q in r.rejected] == [0]


def test_inputs_are_not_mutated():
    rs = reqs((0.0, 5, 3), (1.0, 4, 2))
    simulate(rs, SCHEDULERS.create("vllm"), UnitCost(), capacity_tokens=100)
    assert all(q.num_output_tokens == 0 and q.finish_time is None for q in rs)


def test_fast_forward_stops_at_arrivals_and_matches_stepping():
    rs = reqs((0.0, 10, 50), (0.0, 20, 30), (7.3, 5, 10), (40.0, 8, 3))
    cost = AffineCost(0.01, 0.01)  # steps of varying length, arrivals land inside runs
    a = simulate(rs, SCHEDULERS.create("vllm"), cost, capacity_tokens=1000, block_size=16)
    b = simulate(rs, SCHEDULERS.create("vllm"), cost, capacity_tokens=1000, block_size=16, fast_forward=False)
    assert len(a.steps["step"]) < len(b.steps["step"])  # it did fast-forward
    for x, y in zip(a.requests, b.requests):
        assert x.first_token_time == pytest.approx(y.first_token_time, rel=1e-12)
        assert x.finish_time == pytest.approx(y.finish_time, rel=1e-12)
    assert sum(a.steps["num_steps"]) == sum(b.steps["num_steps"])


def test_an_arrival_on_a_step_boundary_counts_the_same_when_fast_forwarding():
    # Hypothesis found this: the boundary after step 49 sums to 1.1 in one order and to
    # 1.0999999999999999 in the other, so request 2 arrived before the boundary in one
    # run and after it in the other. Arrivals within TIME_EPS_S of a boundary count as
    # arrived at it.
    from kvsched.sim.cost import AffinePrefillCost

    specs = [(0.0, 2, 20), (0.0, 47, 38), (1.1, 1, 1), (0.0625, 45, 23)]
    workload = [Request(i, a, p, o) for i, (a, p, o) in enumerate(specs)]
    cost = AffinePrefillCost(d0_s=0.01, d1_s_per_token=1e-4, d2_s_per_prefill_token=1e-3)
    results = []
    for ff in (True, False):
        run = simulate(workload, SCHEDULERS.create("vidur-vllm"), cost, capacity_tokens=123, block_size=1,
                       fast_forward=ff)
        results.append([(r.request_id, r.num_evictions, r.finish_time) for r in run.requests])
    assert [x[:2] for x in results[0]] == [x[:2] for x in results[1]]
    assert [x[2] for x in results[0]] == pytest.approx([x[2] for x in results[1]], rel=1e-9)


@given(st.lists(st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_subnormal=True), max_size=300),
       st.booleans())
@settings(max_examples=300, deadline=None)
def test_python_sum_of_a_short_run_equals_numpys(values, cumulative):
    """`loop._sum` adds a fast-forwarded run's durations in Python when the run was summed
    without numpy: it must give numpy's float64 sum bit for bit (pairwise, not in order),
    for every length (below 8, up to 128, split above), or kv_token_seconds would change."""
    from kvsched.loop import _sum

    arr = np.cumsum(values) if cumulative else np.asarray(values, dtype=np.float64)
    want = float(arr.sum())
    got = _sum(arr.tolist())
    assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want)
    assert _sum(arr) == want


def test_fast_forward_in_python_gives_the_numpy_run():
    """A short fast-forwarded run (ended by the next arrival) summed in Python gives the same
    run as the numpy path for every stock cost model (the Python path is off when the backend
    has no `decode_time`)."""
    from kvsched.sim.cost import AffinePrefillCost, PiecewiseTokenCost

    rng = np.random.default_rng(3)
    workload = [Request(i, float(t), int(p), int(o)) for i, (t, p, o) in enumerate(zip(
        np.cumsum(rng.exponential(0.15, 400)), rng.integers(20, 400, 400), rng.integers(5, 120, 400), strict=True))]
    models = [UnitCost(0.01), AffineCost(0.005, 1e-6), AffinePrefillCost(0.004, 2e-6, 1e-5, 1e-4, 1e-9),
              PiecewiseTokenCost(0.006, 0.001, 2e-5, 0.002, 3e-7, 1e-5, 1e-9)]
    for cost in models:
        runs = []
        for python_path in (True, False):
            backend = SimBackend(cost)
            assert backend.decode_time is not None
            if not python_path:
                backend.decode_time = None
            kv = KVCache(40_000, 16)
            runs.append(run(workload, SCHEDULERS.create("vllm", enable_prefix_caching=False), backend, kv))
        fast, numpy_run = runs
        assert fast.end_time == numpy_run.end_time
        assert dict(fast.steps) == dict(numpy_run.steps)
        assert [repr(r) for r in fast.requests] == [repr(r) for r in numpy_run.requests]
        # runs were fast-forwarded, some past 8 steps (numpy sums those pairwise, not in order)
        assert max(fast.steps["num_steps"]) > 8
