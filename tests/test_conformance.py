"""Every registered scheduler on random small workloads: all requests finish or are
reported rejected, KV never exceeds capacity, runs are deterministic, and
fast-forwarding decode runs gives the same schedule as stepping one at a time."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.kvcache import blocks_for
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.sim import simulate
from kvsched.sim.cost import AffinePrefillCost

COST = AffinePrefillCost(d0_s=0.01, d1_s_per_token=1e-4, d2_s_per_prefill_token=1e-3)

workloads = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 60), st.integers(1, 40)), min_size=1, max_size=14
)
systems = st.tuples(st.integers(16, 160), st.sampled_from([1, 4, 16]))


def _requests(specs):
    return [Request(i, t, p, o) for i, (t, p, o) in enumerate(specs)]


def _check_run(name, specs, capacity, block_size, **opts):
    workload = _requests(specs)
    run = simulate(workload, SCHEDULERS.create(name, **opts), COST, capacity_tokens=capacity,
                   block_size=block_size, max_steps=50_000)
    num_blocks = capacity // block_size
    for r in run.requests:
        fits = blocks_for(r.prompt_len + r.output_len - 1, block_size) <= num_blocks
        if fits:
            assert r.status is RequestStatus.FINISHED, (name, r)
            assert r.num_output_tokens == r.output_len
            assert r.arrival_time <= r.first_token_time <= r.finish_time
        else:
            assert r.status is RequestStatus.REJECTED and r.reject_reason
    assert max(run.steps["kv_used_blocks"], default=0) <= num_blocks
    assert all(u <= b * block_size for u, b in zip(run.steps["kv_used_tokens"], run.steps["kv_used_blocks"]))
    return run


def _times(run):
    return [(r.request_id, r.first_token_time, r.finish_time, r.num_preemptions) for r in run.requests]


@pytest.mark.parametrize("name", SCHEDULERS.names())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=workloads, system=systems)
def test_every_scheduler_is_safe_complete_and_deterministic(name, specs, system):
    capacity, block_size = system
    a = _check_run(name, specs, capacity, block_size)
    b = _check_run(name, specs, capacity, block_size)
    assert _times(a) == _times(b)
    assert a.steps == b.steps


@pytest.mark.parametrize("name", SCHEDULERS.names())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=workloads, system=systems)
def test_fast_forward_equals_stepping(name, specs, system):
    capacity, block_size = system
    workload = _requests(specs)
    runs = [
        simulate(workload, SCHEDULERS.create(name), COST, capacity_tokens=capacity, block_size=block_size,
                 fast_forward=ff, max_steps=50_000)
        for ff in (True, False)
    ]
    fast, slow = ([(r.request_id, r.num_preemptions, r.first_token_time, r.finish_time) for r in x.requests]
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
