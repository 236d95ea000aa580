"""The decode pool (kvsched.pool) against the per-request path: same requests, same steps.

Every scheduler that opts in (`uses_pool`) is run twice on the same workload, once with
`decode_pool=False` (every request visited every step) and once with the pool, and the
two runs must agree exactly: every request field (times, counters, attempt log, KV
area), every column of the steps table and the end time. Workloads are random
(hypothesis, small KV capacities so that preemptions and restarts happen) and slices of
the shipped traces, with and without prefix caching and lookahead slots.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.kvcache import PrefixCachingKVCache, make_kv_cache
from kvsched.loop import _Loop
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers import future_plan
from kvsched.schedulers.proxy import SchedulerProxy
from kvsched.sim.backend import SimBackend
from kvsched.sim.cost import AffinePrefillCost
from kvsched.traces import load_trace, scale_rate

COST = AffinePrefillCost(d0_s=0.01, d1_s_per_token=1e-4, d2_s_per_prefill_token=1e-3)
FIELDS = [f.name for f in dataclasses.fields(Request)]

# (registry name, options, supports prefix caching)
POOL_SCHEDULERS = [
    ("vllm", {}, True),
    ("vllm", {"policy": "priority"}, True),
    ("vllm", {"preemption": "restart"}, True),
    ("vllm", {"max_num_batched_tokens": 64, "max_num_seqs": 24, "long_prefill_token_threshold": 24}, True),
    ("vllm", {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}, True),
    ("sjf", {"key": "remaining"}, True),
    ("fcfs-static", {"predictor": "predicted"}, True),
    ("sarathi", {"chunk_size": 64, "batch_size_cap": 8}, False),
    ("sarathi", {}, False),
    ("vidur-vllm", {}, False),
    ("vidur-vllm", {"batch_size_cap": 6, "max_tokens_in_batch": 2048}, False),
    # The MC-SF family: short predictions overflow (clearing: the per-request pass on
    # those steps), outlived requests are re-planned one round at a time.
    ("mcsf", {}, False),
    ("mcsf", {"predictor": "oracle", "preemption": "recompute"}, False),
    ("mcsf", {"preemption": "recompute", "clearing": "bernoulli", "beta": 0.3, "clear_to": "capacity"}, False),
    ("mcsf", {"clearing": "all", "preemption": "recompute", "reserve": 0.1, "max_num_seqs": 24,
              "max_num_batched_tokens": 4096, "aging": 0.5}, False),
    ("mc-benchmark", {}, False),
    ("zhou-jiang", {}, False),
    ("svf", {"preemption": "recompute"}, False),
    ("a-max", {}, False),
    ("a-min", {}, False),
]


def never_overflows(name, options):
    """MC-SF's family planning with true lengths or upper bounds never clears."""
    predictor = options.get("predictor", SCHEDULERS.create(name, **options).predictor
                            if name in MCSF_FAMILY else None)
    return predictor in ("oracle", "interval-high")


MCSF_FAMILY = ("mcsf", "mc-benchmark", "zhou-jiang", "svf", "a-max", "a-min")


def run_both(reqs, name, options, *, capacity, block_size, lookahead=0, prefix_caching=False, cost=COST,
             check_oracle=False):
    """(old run, pool run, pool counter at the end): both loops on copies of `reqs`."""
    out = []
    for pool in (False, True):
        reqs_in = sorted((r.copy_fresh() for r in reqs), key=lambda r: (r.arrival_time, r.request_id))
        kv = make_kv_cache(capacity, block_size, prefix_caching=prefix_caching)
        loop = _Loop(reqs_in, SCHEDULERS.create(name, **options), SimBackend(cost), kv, None, 2048, 100_000,
                     lookahead, check_oracle, pool)
        out.append((loop.run(), loop.pool))
    (old, _), (new, pool) = out
    return old, new, pool


def assert_same(old, new):
    assert new.end_time == old.end_time
    for col, values in old.steps.items():
        assert new.steps[col] == values, col
    assert len(new.requests) == len(old.requests)
    for a, b in zip(old.requests, new.requests, strict=True):
        for f in FIELDS:
            assert getattr(b, f) == getattr(a, f), (a.request_id, f)


def with_short_predictions(reqs):
    """Predictions of about half the true length: fcfs-static and MC-SF then preempt too.
    The interval (for a-max, a-min) runs from a third of the length to the length."""
    return [Request(r.request_id, r.arrival_time, r.prompt_len, r.output_len, predicted_output_len=r.output_len // 2 + 1,
                    predicted_output_interval=(r.output_len // 3 + 1, r.output_len),
                    prefix_block_ids=r.prefix_block_ids, prefix_block_size=r.prefix_block_size) for r in reqs]


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 30))
    docs = draw(st.integers(1, 3))
    reqs = []
    for i in range(n):
        prompt = draw(st.integers(1, 120))
        output = draw(st.integers(1, 80))
        ids = None
        if draw(st.booleans()):  # a shared document prefix, maybe covering part of the output
            doc = draw(st.integers(0, docs - 1))
            ids = tuple(1000 * doc + k for k in range(draw(st.integers(1, (prompt + output) // 8 + 1))))
        low = draw(st.integers(1, 100))
        reqs.append(Request(i, draw(st.integers(0, 40)) / 8, prompt, output,
                            predicted_output_len=draw(st.integers(1, 100)),
                            predicted_output_interval=(low, low + draw(st.integers(0, 60))),
                            prefix_block_ids=ids, prefix_block_size=8 if ids else 0))
    return reqs


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=workloads(),
    which=st.integers(0, len(POOL_SCHEDULERS) - 1),
    block_size=st.sampled_from([1, 4, 8, 16]),
    capacity_blocks=st.integers(14, 60),
    lookahead=st.integers(0, 2),
    prefix_caching=st.booleans(),
    check_oracle=st.booleans(),
)
def test_pool_equals_per_request_path_on_random_workloads(reqs, which, block_size, capacity_blocks, lookahead,
                                                          prefix_caching, check_oracle):
    name, options, apc = POOL_SCHEDULERS[which]
    capacity = max(capacity_blocks * block_size, 208)  # a few requests at once: preemption pressure
    old, new, _ = run_both(reqs, name, options, capacity=capacity, block_size=block_size, lookahead=lookahead,
                           prefix_caching=prefix_caching and apc, check_oracle=check_oracle)
    assert_same(old, new)


# skip_infeasible scans the whole waiting heap on a misfit (slow on a trace): random workloads only.
MCSF_SCHEDULERS = [(n, o) for n, o, _ in POOL_SCHEDULERS if n in MCSF_FAMILY] + [
    ("mcsf", {"skip_infeasible": True, "reserve": 0.2, "order": "volume,id"}),
    ("a-min", {"skip_infeasible": True, "preemption": "recompute"}),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=workloads(),
    which=st.integers(0, len(MCSF_SCHEDULERS) - 1),
    block_size=st.sampled_from([1, 4, 8, 16]),
    capacity_blocks=st.integers(14, 60),
    lookahead=st.integers(0, 2),
    check_oracle=st.booleans(),
    prefix_caching=st.booleans(),
)
def test_mcsf_family_pool_equals_per_request_path(reqs, which, block_size, capacity_blocks, lookahead, check_oracle,
                                                  prefix_caching):
    """MC-SF keeps its future-memory plan in absolute rounds while running requests are pool
    members: predictions both too long and too short (overflows cleared by the per-request
    pass, outlived requests re-planned one round at a time), admissions under reserve, caps
    and skip_infeasible. With prefix caching every step takes the per-request pass."""
    name, options = MCSF_SCHEDULERS[which]
    capacity = max(capacity_blocks * block_size, 208)
    old, new, pool = run_both(reqs, name, options, capacity=capacity, block_size=block_size, lookahead=lookahead,
                              prefix_caching=prefix_caching, check_oracle=check_oracle)
    assert_same(old, new)
    assert pool is not None


# Each configuration without prefix caching, and with it where the scheduler supports it.
TRACE_SLICE_CASES = [(n, o, pc) for n, o, apc in POOL_SCHEDULERS for pc in ((False, True) if apc else (False,))]


@pytest.mark.parametrize(("name", "options", "prefix_caching"), TRACE_SLICE_CASES)
def test_pool_equals_per_request_path_on_a_trace_slice(name, options, prefix_caching):
    # 600 Azure conversation requests at 4x their rate into a small cache: hundreds of
    # preemptions, and long decode runs that the pool advances as a group.
    reqs = with_short_predictions(scale_rate(load_trace("azure-conv")[:600], 4.0))
    old, new, pool = run_both(reqs, name, options, capacity=8_000, block_size=16,
                              prefix_caching=prefix_caching, cost=COST_MODELS.create("llama2-7b-a100"))
    assert_same(old, new)
    if not never_overflows(name, options):
        assert sum(r.num_evictions for r in old.requests) > 0  # the slice does exercise preemption
    assert pool is not None and pool.t > 0  # and the pool did run


@pytest.mark.parametrize(("name", "options"), [("mcsf", {}), ("mcsf", {"predictor": "oracle"}), ("a-min", {})])
def test_mcsf_pool_with_the_numpy_plan_equals_per_request_path(name, options, monkeypatch):
    """The absolute plan's numpy arrays (normally from 128 planned ends, here from 4) give
    the same run as the per-request pass's FuturePlan."""
    monkeypatch.setattr(future_plan, "NUMPY_FROM_CHECKPOINTS", 4)
    switches = []
    to_numpy = future_plan.AbsolutePlan._to_numpy
    monkeypatch.setattr(future_plan.AbsolutePlan, "_to_numpy", lambda plan: switches.append(1) or to_numpy(plan))
    reqs = with_short_predictions(scale_rate(load_trace("azure-conv")[:600], 4.0))
    old, new, pool = run_both(reqs, name, options, capacity=8_000, block_size=16,
                              cost=COST_MODELS.create("llama2-7b-a100"))
    assert_same(old, new)
    assert switches and pool is not None and pool.t > 0  # the numpy plan and the pool did run


@pytest.mark.parametrize("name", ["vllm", "sarathi"])
def test_pool_feeds_skew_aware_cost_models_the_same_decode_lengths(name):
    """LLMServingSim's skew correction reads the longest and shortest decode KV of a step:
    the pool gives them from its heaps, the per-request path from its scan."""
    reqs = with_short_predictions(scale_rate(load_trace("azure-conv")[:300], 4.0))
    old, new, pool = run_both(reqs, name, {}, capacity=8_000, block_size=16,
                              cost=COST_MODELS.create("llama3.1-8b-rtxpro6000"))
    assert_same(old, new)
    assert pool.t > 0


def test_pool_with_shared_prefixes_from_a_trace():
    """Mooncake's conversation prefix ids (shared documents): hits, evictions and the pool together."""
    reqs = load_trace("mooncake-conv")[:300]
    old, new, pool = run_both(reqs, "vllm", {}, capacity=30_000, block_size=16, prefix_caching=True,
                              cost=COST_MODELS.create("llama2-7b-a100"))
    assert_same(old, new)
    assert sum(r.num_cached_tokens for r in old.requests) > 0
    assert pool.t > 0


# --- lazily keyed own blocks (PrefixCachingKVCache.lazy_own_keys) against eager keys ----------


class _CheckedKV(PrefixCachingKVCache):
    """Invariants after every mutation (its type keeps the loop on the per-request path)."""

    __slots__ = ()

    def allocate_many(self, totals, num_new_blocks):
        PrefixCachingKVCache.allocate_many(self, totals, num_new_blocks)
        self.check()

    def free(self, request_id):
        PrefixCachingKVCache.free(self, request_id)
        self.check()


class _Counted(SchedulerProxy):
    """The scheduler, counting its `schedule` calls, with `reuse_steady_pool` as given."""

    def __init__(self, inner, reuse_steady_pool):
        super().__init__(inner)
        self.reuse_steady_pool, self.calls = reuse_steady_pool, 0

    def schedule(self, view):
        self.calls += 1
        return self.inner.schedule(view)


def run_reuse_on_and_off(reqs, name, options, *, capacity, block_size, lookahead=0, prefix_caching=False,
                         cost=COST):
    """(run calling `schedule` every step, run reusing steady pool-only decisions, calls made in
    each): the pool path twice, `reuse_steady_pool` turned off on the first scheduler."""
    out = []
    for reuse in (False, True):
        reqs_in = sorted((r.copy_fresh() for r in reqs), key=lambda r: (r.arrival_time, r.request_id))
        kv = make_kv_cache(capacity, block_size, prefix_caching=prefix_caching)
        scheduler = _Counted(SCHEDULERS.create(name, **options), reuse)
        loop = _Loop(reqs_in, scheduler, SimBackend(cost), kv, None, 2048, 100_000, lookahead, False, True)
        out.append((loop.run(), scheduler.calls))
    (every, every_calls), (reused, reused_calls) = out
    return every, reused, every_calls, reused_calls


REUSE_SCHEDULERS = [(n, o) for n, o, _ in POOL_SCHEDULERS if SCHEDULERS.create(n, **o).reuse_steady_pool]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=workloads(),
    which=st.integers(0, len(REUSE_SCHEDULERS) - 1),
    block_size=st.sampled_from([1, 4, 8, 16]),
    capacity_blocks=st.integers(14, 60),
    lookahead=st.integers(0, 2),
    prefix_caching=st.booleans(),
)
def test_reused_steady_decisions_equal_calling_the_scheduler(reqs, which, block_size, capacity_blocks, lookahead,
                                                             prefix_caching):
    """A scheduler with `reuse_steady_pool` gives the same run whether the loop reapplies its
    steady pool-only decision or asks it every step (preemptions, prefix hits and evictions
    of cached blocks between the two: the loop must notice each)."""
    name, options = REUSE_SCHEDULERS[which]
    capacity = max(capacity_blocks * block_size, 208)
    every, reused, every_calls, reused_calls = run_reuse_on_and_off(
        reqs, name, options, capacity=capacity, block_size=block_size, lookahead=lookahead,
        prefix_caching=prefix_caching)
    assert_same(every, reused)
    assert reused_calls <= every_calls


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_reused_steady_decisions_on_a_trace_slice(prefix_caching):
    reqs = scale_rate(load_trace("azure-conv")[:600], 4.0)
    every, reused, every_calls, reused_calls = run_reuse_on_and_off(
        reqs, "vllm", {}, capacity=8_000, block_size=16, prefix_caching=prefix_caching,
        cost=COST_MODELS.create("llama2-7b-a100"))
    assert_same(every, reused)
    assert every_calls == every.steps.num_rows  # one call per row without reuse
    assert reused_calls < every_calls - 100  # the reuse did happen, and often


def run_lazy_and_eager(reqs, name, options, *, capacity, block_size, lookahead=0, pool=False, checked=False,
                       cost=COST):
    """(eager run, lazy run, eager KV, lazy KV) on copies of `reqs`."""
    out = []
    for lazy in (False, True):
        reqs_in = sorted((r.copy_fresh() for r in reqs), key=lambda r: (r.arrival_time, r.request_id))
        cls = _CheckedKV if checked and lazy else PrefixCachingKVCache
        kv = cls(capacity, block_size, lookahead_tokens=lookahead, lazy_own_keys=lazy)
        loop = _Loop(reqs_in, SCHEDULERS.create(name, **options), SimBackend(cost), kv, None, 2048, 100_000,
                     lookahead, False, pool)
        out.append((loop.run(), kv))
    (eager, kv_eager), (lazy, kv_lazy) = out
    return eager, lazy, kv_eager, kv_lazy


def assert_same_kv(a, b):
    """Same block pool: free queue (block ids, LRU order), evictions, findable blocks, usage."""
    assert b.free_queue() == a.free_queue()
    assert b.num_evicted_blocks == a.num_evicted_blocks
    assert b.num_cached_blocks == a.num_cached_blocks
    assert (b.num_free_blocks, b.num_used_tokens) == (a.num_free_blocks, a.num_used_tokens)


APC_SCHEDULERS = [(n, o) for n, o, apc in POOL_SCHEDULERS if apc]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=workloads(),
    which=st.integers(0, len(APC_SCHEDULERS) - 1),
    block_size=st.sampled_from([1, 4, 8, 16]),
    capacity_blocks=st.integers(14, 60),
    lookahead=st.integers(0, 2),
    pool=st.booleans(),
    drop_ids=st.booleans(),
)
def test_lazy_own_keys_equal_eager_keys_on_random_workloads(reqs, which, block_size, capacity_blocks, lookahead,
                                                            pool, drop_ids):
    """Preemption pressure, requests with and without prefix ids (all without when
    `drop_ids`): the lazy KV model must give the same requests, steps and block pool."""
    if drop_ids:
        reqs = [Request(r.request_id, r.arrival_time, r.prompt_len, r.output_len,
                        predicted_output_len=r.predicted_output_len) for r in reqs]
    name, options = APC_SCHEDULERS[which]
    capacity = max(capacity_blocks * block_size, 208)
    eager, lazy, kv_eager, kv_lazy = run_lazy_and_eager(reqs, name, options, capacity=capacity,
                                                        block_size=block_size, lookahead=lookahead, pool=pool,
                                                        checked=not pool)
    assert_same(eager, lazy)
    assert_same_kv(kv_eager, kv_lazy)


@pytest.mark.parametrize("pool", [False, True])
def test_lazy_own_keys_equal_eager_keys_on_trace_slices(pool):
    """Azure (no prefix ids, hundreds of preemptions and re-admission hits) and Mooncake (shared ids)."""
    cost = COST_MODELS.create("llama2-7b-a100")
    azure = with_short_predictions(scale_rate(load_trace("azure-conv")[:600], 4.0))
    eager, lazy, kv_eager, kv_lazy = run_lazy_and_eager(azure, "vllm", {}, capacity=8_000, block_size=16,
                                                        pool=pool, cost=cost)
    assert_same(eager, lazy)
    assert_same_kv(kv_eager, kv_lazy)
    assert sum(r.num_evictions for r in eager.requests) > 0
    assert sum(r.num_reused_tokens for r in eager.requests) > 0  # re-admissions hit their own blocks
    assert kv_eager.num_evicted_blocks > 0
    mooncake = load_trace("mooncake-conv")[:300]
    eager, lazy, kv_eager, kv_lazy = run_lazy_and_eager(mooncake, "vllm", {}, capacity=30_000, block_size=16,
                                                        pool=pool, cost=cost)
    assert_same(eager, lazy)
    assert_same_kv(kv_eager, kv_lazy)
    assert sum(r.num_cached_tokens for r in eager.requests) > 0


def _step_own_keys(kv, r, kind, amount):
    """One operation of `test_own_runs_equal_eager_keys_under_repeated_preemption` on one model."""
    bs, la = kv.block_size, kv.lookahead_tokens
    rid = r.request_id
    if r.status is RequestStatus.FINISHED:
        return
    most = r.prompt_len + r.output_len - 1 + la  # the loop never allocates past this
    if rid not in kv.block_counts:  # admit with its hit (kind 3: a cut of it), then compute
        hit = kv.lookup(r)
        if kind == 3:
            hit = hit[:amount % (len(hit) + 1)]
        kv.admit(r, hit)
        r.status = RequestStatus.RUNNING
        amount += 1
    elif kind == 1:  # preempted: keeps its output, comes back with the same token count
        r.status = RequestStatus.WAITING
        kv.free(rid)
        return
    elif kind == 2:  # restarted: its output is dropped, so its hit is capped below its keys
        r.status = RequestStatus.WAITING
        r.num_output_tokens = 0
        kv.free(rid)
        return
    elif kind == 3 and amount < 4:  # finished (rarely: the others are what is tested)
        r.status = RequestStatus.FINISHED
        kv.free(rid)
        return
    have = kv.num_tokens_of(rid)
    room = (kv.num_blocks_of(rid) + kv.num_free_blocks) * bs
    total = min(have + amount, most, room)
    if total > have:
        kv.allocate(rid, total)
        r.num_output_tokens = max(r.num_output_tokens, min(r.output_len, total - la - r.prompt_len + 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompts=st.lists(st.integers(1, 60), min_size=5, max_size=5),
    ops=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 40)), min_size=30, max_size=120),
    block_size=st.sampled_from([1, 4, 16]),
    capacity_blocks=st.integers(4, 24),
    lookahead=st.integers(0, 2),
)
def test_own_runs_equal_eager_keys_under_repeated_preemption(prompts, ops, block_size, capacity_blocks, lookahead):
    """The KV model driven directly: requests without prefix ids (the last one with ids shorter
    than a block when blocks are larger) grow, are preempted, partly evicted by the others'
    growth, restarted (a hit capped below their cached keys), re-admitted with their hit or a
    cut of it, again and again, or finish. Lazy own keys and own runs against eager keys."""
    models, reqs = [], []
    for lazy in (False, True):
        models.append(PrefixCachingKVCache(capacity_blocks * block_size, block_size, lookahead_tokens=lookahead,
                                           lazy_own_keys=lazy))
        reqs.append([Request(i, 0.0, p, 50, prefix_block_ids=(7,) if i == 4 else None,
                             prefix_block_size=1 if i == 4 else 0) for i, p in enumerate(prompts)])
    eager, lazy = models
    for kind, i, amount in ops:
        for kv, rs in zip(models, reqs, strict=True):
            _step_own_keys(kv, rs[i], kind, amount)
        lazy.check()
        assert_same_kv(eager, lazy)
        for a, b in zip(*reqs, strict=True):
            if a.status is RequestStatus.WAITING:
                assert lazy.lookup(b) == eager.lookup(a), a.request_id
                assert lazy.lookup_hit(b) == eager.lookup_hit(a), a.request_id


def test_a_scheduler_that_does_not_opt_in_gets_no_pool():
    """a-min with doubling bounds re-plans from its previous bound every round: no pool."""
    reqs = [Request(i, 0.0, 10, 5 + i, predicted_output_len=5, predicted_output_interval=(2, 9)) for i in range(4)]
    old, new, pool = run_both(reqs, "a-min", {"refine": "double"}, capacity=400, block_size=4)
    assert pool is None
    assert_same(old, new)


# --- the packed tables ----------------------------------------------------------------------


class _Recorder:
    """Wraps a scheduler and keeps every finished request object the loop reports."""

    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, {}
        self.uses_pool, self.clairvoyant = inner.uses_pool, inner.clairvoyant

    def schedule(self, view):
        for r in view.finished:
            self.seen[r.request_id] = r
        return self.inner.schedule(view)


def test_packed_requests_equal_the_live_objects():
    reqs = with_short_predictions(scale_rate(load_trace("azure-conv")[:300], 4.0))
    rec = _Recorder(SCHEDULERS.create("vllm"))
    kv = make_kv_cache(8_000, 16)
    res = _Loop(sorted(reqs, key=lambda r: (r.arrival_time, r.request_id)), rec,
                SimBackend(COST_MODELS.create("llama2-7b-a100")), kv, None, 2048, None).run()
    rebuilt = list(res.requests)
    assert [r.request_id for r in rebuilt] == [r.request_id for r in sorted(reqs, key=lambda r: r.arrival_time)]
    assert sum(r.num_evictions for r in rebuilt) > 0
    for r in rebuilt:
        live = rec.seen.get(r.request_id)
        if live is None:  # finished in the last step: never reported to the scheduler
            assert r.finish_time == res.end_time
            continue
        for f in FIELDS:
            assert getattr(r, f) == getattr(live, f), (r.request_id, f)
    assert res.requests[-1].request_id == rebuilt[-1].request_id and len(res.requests[:3]) == 3


def test_step_table_widens_and_reads_back_exactly():
    from kvsched.loop import STEP_COLUMNS, StepTable

    t = StepTable()
    t.append_row(tuple(range(12)), (0.1, 0.2, 0.3))
    t.append_row((2**40, *range(11)), (1e-9, 2.5, 1e300))
    assert t.num_rows == 2 and list(t) == list(STEP_COLUMNS)
    assert t["step"] == [0, 2**40] and t["num_finished"] == [11, 10]
    assert t["start_time"] == [0.1, 1e-9] and t["kv_token_seconds"] == [0.3, 1e300]
    assert all(type(v) is int for v in t["kv_used_tokens"])
    late = StepTable()  # the row that overflows is the second one, at its last column
    late.append_row(tuple(range(12)), (0.1, 0.2, 0.3))
    late.append_row((*range(11), -(2**35)), (0.4, 0.5, 0.6))
    assert late.num_rows == 2 and late["num_finished"] == [11, -(2**35)] and late["step"] == [0, 0]
    with pytest.raises(OverflowError, match="64 bits"):
        late.append_row((2**70, *range(11)), (0.0, 0.0, 0.0))


def test_requests_frame_from_the_packed_arrays_equals_the_one_from_objects():
    import pandas as pd

    from kvsched import metrics
    from kvsched.loop import Run

    reqs = with_short_predictions(scale_rate(load_trace("azure-conv")[:400], 4.0))
    _old, new, _ = run_both(reqs, "vllm", {"preemption": "restart"}, capacity=3_000, block_size=16,
                           cost=COST_MODELS.create("llama2-7b-a100"))
    assert any(r.reject_reason for r in new.requests) and any(r.num_restarts for r in new.requests)
    objects = Run(list(new.requests), new.steps, new.capacity_tokens, new.block_size, new.num_blocks, new.end_time)
    pd.testing.assert_frame_equal(metrics.requests_frame(new), metrics.requests_frame(objects))
    assert metrics.summarize(new) == metrics.summarize(objects) or str(metrics.summarize(new)) == str(
        metrics.summarize(objects))  # NaN != NaN: compare the printed values then
    # Run.rejected and run_bound read the packed columns: the same as from the objects.
    from kvsched.bounds.runs import run_bound

    assert new.rejected
    assert [dataclasses.astuple(r) for r in new.rejected] == [dataclasses.astuple(r) for r in objects.rejected]
    assert run_bound(new, 0.01, 0) == run_bound(objects, 0.01, 0)


def test_request_table_grows_with_its_input_list():
    from kvsched.request import RequestStatus
    from kvsched.request_table import RequestTable

    inputs = [Request(0, 0.0, 10, 3)]
    table = RequestTable(inputs)
    inputs.append(Request(7, 1.0, 5, 2))  # a driver that appends arrivals while the loop runs
    assert not table.complete and table.indices(RequestStatus.FINISHED) == [0, 1]  # neither has left
    late = inputs[1].copy_fresh()
    late.status, late.finish_time, late.attempts = RequestStatus.FINISHED, 4.5, [(3, 2, "finish")]
    table.pack(1, late)
    got = table[1]
    assert (got.request_id, got.status, got.finish_time, got.attempts) == (7, RequestStatus.FINISHED, 4.5,
                                                                           [(3, 2, "finish")])
    with pytest.raises(RuntimeError, match="has not left the run"):
        table[0]


def test_request_table_columns_follow_a_shortened_input_list():
    """A driver may append a placeholder to the inputs and take it off again (the cluster's
    next-arrival marker): the arrays grown for it must not show in the table."""
    from kvsched.request import RequestStatus
    from kvsched.request_table import RequestTable

    inputs = [Request(0, 0.0, 10, 3)]
    table = RequestTable(inputs)
    inputs.append(Request(1, 1.0, 5, 2))
    inputs.append(Request(2, 9.0, 1, 1))  # the placeholder
    done = inputs[1].copy_fresh()
    done.status, done.finish_time = RequestStatus.FINISHED, 4.5
    table.pack(1, done)
    inputs.pop()
    first = inputs[0].copy_fresh()
    first.status, first.finish_time = RequestStatus.FINISHED, 2.0
    table.pack(0, first)
    assert len(table) == 2 and table.complete
    for name in ("finish_time", "num_output_tokens", "status", "reject_reason", "request_id"):
        assert len(table.column(name)) == 2, name
    assert table.column("finish_time").tolist() == [2.0, 4.5]
    assert table.indices(RequestStatus.FINISHED) == [0, 1]
