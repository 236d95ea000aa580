"""Automatic prefix caching (issue 17): the block pool against hand-worked scenarios, the
loop's admission hits, shared-prefix workloads, and properties of whole runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.cli import main
from kvsched.decision import Decision, Scheduler
from kvsched.kvcache import KVCache, PrefixCachingKVCache, block_key
from kvsched.loop import run
from kvsched.metrics import requests_frame, summarize
from kvsched.registry import SCHEDULERS, TRACES
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.vllm import SJFScheduler, VLLMScheduler
from kvsched.sim import simulate
from kvsched.sim.backend import SimBackend
from kvsched.sim.cost import AffinePrefillCost, UnitCost
from kvsched.traces.spec import parse_synthetic
from kvsched.traces.stats import prefix_hit_ratio

BS = 16
COST = AffinePrefillCost(d0_s=0.01, d1_s_per_token=1e-4, d2_s_per_prefill_token=1e-3)


def req(rid, prompt, output=4, ids=None, t=0.0):
    return Request(rid, t, prompt, output, prefix_block_ids=ids, prefix_block_size=BS if ids else 0)


def admit(kv, r, tokens):
    """A request with no KV: take its hit, then allocate up to `tokens` (as the loop does)."""
    hit = kv.lookup(r)
    kv.admit(r, hit)
    kv.allocate(r.request_id, tokens)
    kv.check()
    return hit


# --- the block pool, by hand ------------------------------------------------------------------


def test_full_hit_keeps_the_last_token_to_compute():
    kv = PrefixCachingKVCache(10 * BS, BS)
    a, b = req(0, 64, ids=(7, 8, 9, 10)), req(1, 64, ids=(7, 8, 9, 10))
    assert admit(kv, a, 64) == [] and kv.block_ids(0) == [0, 1, 2, 3]
    # 64 tokens = 4 full blocks, but the last token must be computed: 3 blocks hit.
    assert kv.lookup(b) == [0, 1, 2]
    # One more prompt token and all 4 full blocks hit.
    assert len(kv.lookup(req(2, 65, ids=(7, 8, 9, 10, 11)))) == 4


def test_partial_hit_stops_at_the_first_different_block():
    kv = PrefixCachingKVCache(10 * BS, BS)
    admit(kv, req(0, 64, ids=(1, 2, 3, 4)), 64)
    assert kv.lookup(req(1, 64, ids=(1, 2, 5, 6))) == [0, 1]
    assert kv.lookup(req(2, 64, ids=(9, 2, 3, 4))) == []  # ids are chained: no hit past a miss
    assert kv.lookup(req(3, 64)) == []  # no identities: nothing shared


def test_partial_blocks_are_never_cached():
    kv = PrefixCachingKVCache(10 * BS, BS)
    admit(kv, req(0, 40, ids=(1, 2, 3)), 40)  # blocks 0, 1 full; block 2 holds 8 tokens
    assert kv.num_cached_blocks == 2
    assert kv.lookup(req(1, 100, ids=(1, 2, 3, 4, 5, 6, 7))) == [0, 1]


def test_shared_blocks_count_once():
    kv = PrefixCachingKVCache(10 * BS, BS)
    admit(kv, req(0, 50, ids=(1, 2, 3, 4)), 50)  # 4 blocks, 3 full
    hit = admit(kv, req(1, 60, ids=(1, 2, 3, 4)), 60)  # reuses 3, adds 1
    assert hit == [0, 1, 2]
    assert kv.num_blocks_of(1) == 4 and kv._num_used_blocks == 5 and kv.num_free_blocks == 5
    assert kv.num_used_tokens == 50 + 60 - 3 * BS  # the shared 48 tokens count once
    assert kv.num_freed_by(0) == 1 and kv.num_freed_by(1) == 1  # only their own last block
    kv.free(0)
    kv.check()
    assert kv._num_used_blocks == 4 and kv.num_used_tokens == 60
    kv.free(1)
    kv.check()
    assert kv._num_used_blocks == 0 and kv.num_used_tokens == 0


def test_cached_free_blocks_are_free_and_reused_by_a_hit():
    kv = PrefixCachingKVCache(4 * BS, BS)
    admit(kv, req(0, 48, ids=(1, 2, 3)), 48)
    kv.free(0)
    kv.check()
    assert kv.num_free_blocks == 4 and kv.num_cached_blocks == 3  # free yet findable
    b = req(1, 40, ids=(1, 2, 3))
    assert kv.num_evictable(kv.lookup(b)) == 2  # its 2-block hit takes 2 free blocks
    admit(kv, b, 40)
    assert kv.block_ids(1) == [0, 1, 3]  # the hit, then the head of the free queue


def test_eviction_order_lru_with_tail_first_freeing():
    kv = PrefixCachingKVCache(7 * BS, BS)
    admit(kv, req(0, 48, ids=(1, 2, 3)), 48)  # blocks 0 1 2
    admit(kv, req(1, 48, ids=(4, 5, 6)), 48)  # blocks 3 4 5
    kv.free(0)
    kv.free(1)
    # Never-used block 6 first; then request 0's blocks (freed earlier), last block first;
    # then request 1's, last block first.
    assert kv.free_queue() == [6, 2, 1, 0, 5, 4, 3]
    admit(kv, req(2, 40), 40)  # 3 fresh blocks: 6, then evicts 2 and 1
    assert kv.block_ids(2) == [6, 2, 1] and kv.num_evicted_blocks == 2
    assert kv.lookup(req(3, 64, ids=(1, 2, 3, 9))) == [0]  # request 0 keeps its first block
    assert kv.lookup(req(4, 64, ids=(4, 5, 6, 9))) == [3, 4, 5]  # request 1 is intact
    # A keyless freed block (a partial one) goes to the head: reused before any cached one.
    kv.free(2)
    kv.check()
    assert kv.free_queue()[0] == 1  # request 2's partial last block, freed last, reused first


def test_a_request_hits_its_own_blocks_on_readmission():
    kv = PrefixCachingKVCache(8 * BS, BS)
    r = req(5, 40, output=10)  # no identities: its own blocks only
    admit(kv, r, 40)
    r.num_output_tokens = 9  # generated 9 tokens: 49 tokens, 48 computed
    kv.allocate(5, 48)
    kv.free(5)
    assert [block_key(r, j, BS) for j in range(3)] == [(-6, 16), (-6, 32), (-6, 48)]
    assert kv.lookup(r) == kv.lookup(r) and len(kv.lookup(r)) == 3  # (49 - 1) // 16 blocks
    assert kv.lookup(req(6, 49)) == []


def test_mooncake_sub_blocks_map_onto_the_block_size():
    # A 512-token hash block covers 32 blocks of 16; 48-token blocks may straddle two.
    r = Request(0, 0.0, 1100, 5, prefix_block_ids=(3, 4), prefix_block_size=512)
    assert block_key(r, 0, 16) == (3, 16) and block_key(r, 31, 16) == (3, 512)
    assert block_key(r, 32, 16) == (4, 528) and block_key(r, 63, 16) == (4, 1024)
    assert block_key(r, 64, 16) == (-1, 1040)  # past the ids: its own
    assert block_key(r, 10, 48) == (4, 528)  # tokens 480..527: fixed by hash block 4 (chained)


# --- the loop ------------------------------------------------------------------------------


class Scripted(Scheduler):
    """Returns the given decisions in order and records what each view said."""

    clairvoyant = True

    def __init__(self, decisions):
        self.decisions, self.seen = list(decisions), []

    def schedule(self, view):
        self.seen.append({rid: (view.cached_tokens(r), view.blocks_needed(r, 1)) for rid, r in view.waiting.items()})
        return self.decisions.pop(0) if self.decisions else Decision()


def test_preempt_then_readmit_with_some_blocks_evicted():
    a, b = req(0, 40, output=3), req(1, 40, output=3)
    sched = Scripted([
        Decision({0: 40}),  # A prefills: blocks 0 1 (cached) + 2 (partial); first token
        Decision({1: 40}, preempt=(0,)),  # A freed: queue [2, 3, 1, 0]; B takes 2, 3 and evicts 1
        Decision({1: 1}),  # B decodes (41 tokens, still 3 blocks)
        Decision({1: 1}),  # B's last token: B finishes and frees
        Decision({0: 41}),  # A again: asks for everything, gets its cached first block
        Decision({0: 1}),
        Decision({0: 1}),
    ])
    kv = PrefixCachingKVCache(4 * BS, BS)
    result = run([a, b], sched, SimBackend(UnitCost()), kv)
    kv.check()
    assert sched.seen[2][0] == (16, 2 - 1 + 1)  # hit 16; 17 tokens -> 2 blocks, 1 reused but free
    ra = result.requests[0]
    assert ra.num_cached_tokens == 0 and ra.num_reused_tokens == 16 and ra.num_preemptions == 1
    assert result.steps["num_prefill_tokens"][:5] == [40, 40, 0, 0, 41 - 16]
    assert ra.status is RequestStatus.FINISHED and ra.num_output_tokens == 3


def test_vllm_sizes_the_first_chunk_after_the_hit():
    ids = tuple(range(10))
    reqs = [req(0, 150, ids=ids), req(1, 150, ids=ids, t=5.0)]
    res = simulate(reqs, VLLMScheduler(max_num_batched_tokens=64, enable_prefix_caching=True), UnitCost(), capacity_tokens=40 * BS,
                   block_size=BS, check_oracle=True)
    r1 = res.requests[1]
    assert r1.num_cached_tokens == 144  # 9 full blocks; (150 - 1) // 16 = 9
    first = next(n for t, n in zip(res.steps["start_time"], res.steps["num_prefill_tokens"]) if t >= 5.0)
    assert first == 6  # the rest, in one chunk: the token budget was not spent on cached tokens
    assert r1.first_token_time - r1.arrival_time == 1.0
    s = summarize(res)
    assert s["prefix_hit_rate"] == pytest.approx(144 / 300)
    assert s["num_prefill_tokens_computed"] == 300 - 144


def test_on_by_default_for_vllm_off_for_the_other_policies_and_by_option():
    """vllm caches prefixes by default as vLLM does; sjf/srpt/fcfs-static keep their papers'
    semantics unless asked; `prefix_caching=False` (the CLI's --no-prefix-caching) turns it off."""
    ids = tuple(range(10))
    reqs = [req(0, 150, ids=ids), req(1, 150, ids=ids, t=5.0)]
    kw = {"capacity_tokens": 40 * BS, "block_size": BS}
    assert VLLMScheduler().enable_prefix_caching
    default = simulate(reqs, VLLMScheduler(), UnitCost(), **kw)
    assert summarize(default)["num_cached_tokens"] == 144
    on = simulate(reqs, VLLMScheduler(enable_prefix_caching=True), UnitCost(), **kw)
    assert summarize(on)["num_cached_tokens"] == 144
    off = simulate(reqs, VLLMScheduler(), UnitCost(), prefix_caching=False, **kw)
    assert summarize(off)["prefix_hit_rate"] == 0.0
    not_asked = simulate(reqs, VLLMScheduler(enable_prefix_caching=False), UnitCost(), **kw)
    assert summarize(not_asked)["prefix_hit_rate"] == 0.0
    for other in ("sjf", "srpt", "fcfs-static"):
        assert not SCHEDULERS.create(other).enable_prefix_caching, other
    sjf = simulate(reqs, SJFScheduler(), UnitCost(), **kw)
    assert summarize(sjf)["num_cached_tokens"] == 0
    asked = simulate(reqs, SJFScheduler(), UnitCost(), prefix_caching=True, **kw)
    assert summarize(asked)["num_cached_tokens"] == 144


# --- workloads --------------------------------------------------------------------------------


def test_mooncake_infinite_cache_hit_ratio():
    # The numbers count 512-token hash blocks (0.366 and 0.640); in tokens at 16:
    assert prefix_hit_ratio(TRACES.create("mooncake-conv")) == pytest.approx(0.3734, abs=1e-3)
    reqs = TRACES.create("mooncake-synthetic")
    assert prefix_hit_ratio(reqs) == pytest.approx(0.6504, abs=1e-3)
    assert all(len(r.prefix_block_ids) == r.prompt_len // 512 for r in reqs)


def test_synthetic_shared_prefixes_and_turns():
    rng = np.random.default_rng(0)
    reqs = parse_synthetic("n=4,rate=5,prompt=20,output=10,turns=2,shared_prefix=40", rng)
    assert [r.prompt_len for r in reqs] == [60, 60, 90, 90]  # turn 2: 40 + 20 + 10 + 20
    assert reqs[2].prefix_block_ids[:5] == reqs[0].prefix_block_ids  # the same conversation
    assert reqs[0].prefix_block_ids[:2] == reqs[1].prefix_block_ids[:2]  # the shared system prompt
    assert reqs[0].prefix_block_ids[2] != reqs[1].prefix_block_ids[2]
    # Without the new keys a seeded workload is unchanged.
    a = parse_synthetic("n=50,rate=5,prompt=uniform(5,50),output=7", np.random.default_rng(1))
    assert all(r.prefix_block_ids is None for r in a)
    b = parse_synthetic("n=50,rate=5,prompt=uniform(5,50),output=7,shared_prefix=64", np.random.default_rng(1))
    assert [r.prompt_len - 64 for r in b] == [r.prompt_len for r in a]
    assert prefix_hit_ratio(b) > 0.5 > prefix_hit_ratio(a) == 0.0


# --- properties -------------------------------------------------------------------------------


class CheckedKV(PrefixCachingKVCache):
    __slots__ = ()

    def allocate_many(self, totals, num_new_blocks):
        PrefixCachingKVCache.allocate_many(self, totals, num_new_blocks)
        self.check()

    def free(self, request_id):
        PrefixCachingKVCache.free(self, request_id)
        self.check()


workloads = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 90), st.integers(1, 30), st.integers(0, 3),
              st.integers(0, 5)),
    min_size=1, max_size=14,
)
systems = st.tuples(st.integers(6, 14), st.sampled_from([4, 16]), st.sampled_from([16, 64, 2048]))


def _requests(specs):
    """Requests sharing up to 4 prefix groups: group g's ids are (g, 0), (g, 1), ..., with
    a per-request tail after `shared` blocks of 8 tokens."""
    out = []
    for i, (t, p, o, g, shared) in enumerate(specs):
        n = -(-p // 8)
        ids = tuple(g * 1000 + k if k < shared else 100_000 + i * 1000 + k for k in range(n))
        out.append(Request(i, t, p, o, prefix_block_ids=ids, prefix_block_size=8))
    return out


def _vllm_run(reqs, blocks, bs, budget, kv_cls=CheckedKV, policy="fcfs"):
    kv = kv_cls(blocks * bs, bs)
    return run(reqs, VLLMScheduler(max_num_batched_tokens=budget, policy=policy, enable_prefix_caching=True), SimBackend(COST), kv,
               max_steps=20_000, check_oracle=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads, systems, st.sampled_from(["fcfs", "priority"]))
def test_vllm_with_prefix_caching_is_safe_and_deterministic(specs, system, policy):
    blocks, bs, budget = system
    reqs = _requests(specs)
    res = _vllm_run(reqs, blocks, bs, budget, policy=policy)
    assert max(res.steps["kv_used_blocks"], default=0) <= blocks
    assert max(res.steps["kv_used_tokens"], default=0) <= blocks * bs
    for r in res.requests:
        assert r.status in (RequestStatus.FINISHED, RequestStatus.REJECTED)
        if r.status is RequestStatus.FINISHED:
            assert r.num_output_tokens == r.output_len
            assert 0 <= r.num_cached_tokens <= r.num_reused_tokens
    # Conservation: every token in a finished request's KV was computed or reused once;
    # tokens dropped by preemption were computed again (or reused).
    done = [r for r in res.requests if r.status is RequestStatus.FINISHED]
    computed = sum(p + d * k for p, d, k in zip(res.steps["num_prefill_tokens"], res.steps["num_decode_seqs"],
                                                 res.steps["num_steps"]))
    assert computed + sum(r.num_reused_tokens for r in done) == sum(
        r.prompt_len + r.output_len - 1 + r.num_wasted_tokens for r in done)
    again = _vllm_run(reqs, blocks, bs, budget, policy=policy)
    pd.testing.assert_frame_equal(requests_frame(res), requests_frame(again))
    assert res.steps == again.steps


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads, systems)
def test_caching_off_is_the_plain_kv_model(specs, system):
    blocks, bs, budget = system
    reqs = _requests(specs)
    plain = [Request(r.request_id, r.arrival_time, r.prompt_len, r.output_len) for r in reqs]
    off = simulate(reqs, VLLMScheduler(max_num_batched_tokens=budget, enable_prefix_caching=False), COST,
                   capacity_tokens=blocks * bs, block_size=bs)
    # The KV model before prefix caching existed, on requests without identities.
    base = run(plain, VLLMScheduler(max_num_batched_tokens=budget), SimBackend(COST), KVCache(blocks * bs, bs))
    pd.testing.assert_frame_equal(requests_frame(off), requests_frame(base))
    assert off.steps == base.steps


# --- CLI ----------------------------------------------------------------------------------------

SPEC = "synthetic:n=40,rate=20,prompt=uniform(10,60),output=uniform(5,30),shared_prefix=256,num_prefixes=2"


def _cli_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_prefix_caching_flag_and_trace_stats(capsys):
    base = ("simulate", "--trace", SPEC, "--capacity", "4096", "--json", "--no-progress")
    keys = ("prefix_hit_rate", "num_prefill_tokens_computed", "ttft_mean")
    on = _cli_json(capsys, *base, "--prefix-caching")
    default = _cli_json(capsys, *base)  # the vllm scheduler: on by default
    off = _cli_json(capsys, *base, "--no-prefix-caching")
    assert on["prefix_hit_rate"] > 0.5 and off["prefix_hit_rate"] == 0.0
    assert [default[k] for k in keys] == [on[k] for k in keys]
    by_option = _cli_json(capsys, *base, "-o", "enable_prefix_caching=false")
    assert [by_option[k] for k in keys] == [off[k] for k in keys]
    sjf = _cli_json(capsys, *base, "--scheduler", "sjf")  # off unless asked
    assert sjf["prefix_hit_rate"] == 0.0
    assert on["num_prefill_tokens_computed"] < off["num_prefill_tokens_computed"]
    assert on["ttft_mean"] < off["ttft_mean"]
    stats = _cli_json(capsys, "trace-stats", "--trace", SPEC, "--json")
    assert stats["prefix_hit_ratio"] > 0.5
