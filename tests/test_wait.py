"""WAIT (known lengths): spec wait.md section 7, invariants T11 and the toy dynamics T12."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.bounds.fluid import RequestType
from kvsched.decision import Decision, Scheduler, View
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.wait import WaitScheduler
from kvsched.schedulers.wait_common import (
    fill_design_options,
    format_types,
    group_types,
    parse_types,
)
from kvsched.schedulers.wait_design import check_wait_thresholds
from kvsched.sim import simulate
from kvsched.sim.cost import COST_MODELS, AffineCost, UnitCost


class Probe(Scheduler):
    """Runs a real scheduler and checks WAIT's invariants on every call (T11)."""

    def __init__(self, inner: WaitScheduler, outputs: dict[int, int]) -> None:
        self.inner = inner
        self.outputs = outputs  # request id -> type index (the oracle label)
        self.max_stage_count: Counter = Counter()
        self.max_projected_kv = 0
        self.idle_calls = 0
        self.violations: list[str] = []

    def schedule(self, view: View) -> Decision:
        d = self.inner.schedule(view)
        n = self.inner.n
        for (j, s), c in Counter((self.outputs[r.request_id], r.num_output_tokens)
                                 for r in view.resident.values()).items():
            self.max_stage_count[j] = max(self.max_stage_count[j], c)
        waiting = Counter(self.outputs[r.request_id] for r in view.waiting.values())
        served_types = {self.outputs[rid] for rid in d.run}
        if view.arrivals_pending:
            for j in served_types:  # rule 1: only eligible types are served
                if waiting[j] + sum(1 for rid in d.run if self.outputs[rid] == j and rid in view.waiting) < n[j]:
                    self.violations.append(f"type {j} served with {waiting[j]} waiting < n_j={n[j]}")
            eligible = any(waiting[j] >= n[j] for j in range(len(n)))
            if eligible != bool(d.run):  # rule 4: idle exactly when no type is eligible
                self.violations.append(f"t={view.now}: eligible={eligible} but run={dict(d.run)}")
        if not d.run:
            self.idle_calls += 1
        projected = sum(r.num_computed_tokens for r in view.resident.values()) + sum(d.run.values())
        self.max_projected_kv = max(self.max_projected_kv, projected)
        return d


def _workload(rng: np.random.Generator, types: list[RequestType], n: int) -> tuple[list[Request], dict[int, int]]:
    rates = np.array([t.rate for t in types])
    times = np.cumsum(rng.exponential(1.0 / rates.sum(), n))
    kinds = rng.choice(len(types), size=n, p=rates / rates.sum())
    reqs = [Request(i, float(t), types[k].prompt_len, types[k].output_len) for i, (t, k) in enumerate(zip(times, kinds))]
    return reqs, {i: int(k) for i, k in enumerate(kinds)}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n1=st.integers(1, 4), n2=st.integers(1, 3),
       load=st.floats(0.3, 1.5))
def test_wait_invariants_t11(seed: int, n1: int, n2: int, load: float) -> None:
    """With thresholds meeting WAIT's memory condition (capacity = M^pi exactly, block 1):
    no stage holds more than n_j, the KV never exceeds M^pi, no eviction, only eligible types
    run, and the server idles exactly when no type is eligible. `load` scales the rates
    around the load-balance point, so overloaded runs are covered too."""
    rng = np.random.default_rng(seed)
    types = [RequestType(3, 4, load * 2.0), RequestType(5, 9, load * 1.0)]
    thresholds = (n1, n2)
    check = check_wait_thresholds(types, thresholds, 0.05, 0.01, 10**9, first_token_in_prefill=True)
    capacity = int(check.batch_memory_tokens)
    reqs, label = _workload(rng, types, 120)
    sched = WaitScheduler(types=format_types(types), thresholds=f"{n1},{n2}",
                          d0_s=0.05, d1_s_per_token=0.01)
    probe = Probe(sched, label)
    run = simulate(reqs, probe, AffineCost(0.05, 0.01), capacity_tokens=capacity, block_size=1)
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)
    assert probe.violations == []
    assert sched.num_repair_evictions == 0 and sum(r.num_evictions for r in run.requests) == 0
    assert probe.max_stage_count[0] <= n1 and probe.max_stage_count[1] <= n2
    assert probe.max_projected_kv <= capacity
    assert max(run.steps["kv_used_tokens"]) <= check.batch_memory_tokens


def test_paused_types_keep_their_kv() -> None:
    """A type that is not eligible is not served at all: its residents hold their KV and do
    not advance while the other type runs (rule 3)."""
    # Type A (output 5) threshold 1, type B (output 3) threshold 2. One B arrives at 0 with
    # a second B at 0 (eligible, prefilled), then only A requests arrive: B stays paused.
    reqs = [Request(0, 0.0, 4, 3), Request(1, 0.0, 4, 3)] + [Request(2 + i, 1.0 + i, 4, 5) for i in range(6)]
    reqs.append(Request(8, 20.0, 4, 3))
    reqs.append(Request(9, 20.0, 4, 3))
    sched = WaitScheduler(types="4x3:1|4x5:1", thresholds="2,1", d0_s=0.1, d1_s_per_token=0.0)
    progress: list[tuple[float, int, int]] = []

    class Watch(Scheduler):
        def schedule(self, view: View) -> Decision:
            d = sched.schedule(view)
            for rid in (0, 1):
                r = view.resident.get(rid)
                if r is not None:
                    progress.append((view.now, rid, r.num_output_tokens))
                    if 1.0 < view.now < 20.0:
                        assert rid not in d.run  # type B is not eligible: paused
            return d

    run = simulate(reqs, Watch(), UnitCost(1.0), capacity_tokens=1000, block_size=1)
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)
    during = {(rid, out) for t, rid, out in progress if 1.0 < t < 20.0}
    assert during == {(0, 1), (1, 1)}  # held at stage 1 with their KV the whole time
    b = [r for r in run.requests if r.request_id in (0, 1)]
    assert all(r.finish_time > 20.0 and r.num_evictions == 0 for r in b)


class PaperFCFS(Scheduler):
    """The paper's FCFS of spec 3.5 (a test-only policy, nothing ships it): serve every request
    present, prefills included, and on overflow restart the latest-admitted residents."""

    def __init__(self) -> None:
        self.evictions: list[tuple[float, int]] = []

    def schedule(self, view: View) -> Decision:
        run = {rid: 1 for rid in view.resident} | {rid: r.num_remaining_tokens for rid, r in view.waiting.items()}
        free = view.num_free_blocks - sum(view.blocks_needed(r, run[rid]) for rid, r in view.waiting.items())
        victims = []
        for r in sorted(view.resident.values(), key=lambda r: (r.admit_time, r.request_id), reverse=True):
            need = sum(view.blocks_needed(view.resident[rid], 1) for rid in view.resident if rid in run)
            if need <= free:
                break
            victims.append(r.request_id)
            free += view.block_counts[r.request_id]
            del run[r.request_id]
        self.evictions.append((view.now, len(victims)))
        return Decision(run, restart=tuple(victims))


def test_toy_fcfs_dynamics_t12_and_wait_on_the_same_instance() -> None:
    """Spec 3.5 / T12 (l = 1, l' = 1, C = 12, one iteration per time unit): from 6 requests at
    stage 0 and 3 at stage 1, FCFS completes 3 in the first iteration and fills memory with
    the 6 new ones; 4 arrivals then force 2 evictions. WAIT with n = 4 (the fluid point,
    M^pi = C) serves the same stream without evicting."""
    start = [Request(i, 0.0, 1, 2) for i in range(3)] + [Request(3 + i, 1.0, 1, 2) for i in range(6)]
    toy = start + [Request(9 + i, 2.0, 1, 2) for i in range(4)]
    fcfs = PaperFCFS()
    run = simulate(toy, fcfs, UnitCost(1.0), capacity_tokens=12, block_size=1)
    steps = run.steps
    assert steps["start_time"][1] == 1.0 and steps["num_seqs"][1] == 9 and steps["num_finished"][1] == 3
    assert steps["kv_used_tokens"][1] == 12  # memory full: 3 completing hold 6, the 6 new hold 6
    assert fcfs.evictions[2] == (2.0, 2)  # 4 arrivals need 4 tokens: 2 decoding requests restart
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)
    assert sum(r.num_evictions for r in run.requests) == 2

    wait_sched = SCHEDULERS.create("wait", types="1x2:4", thresholds="4")
    wait_run = simulate(toy, wait_sched, UnitCost(1.0), capacity_tokens=12, block_size=1)
    assert wait_sched.num_repair_evictions == 0
    assert all(r.status is RequestStatus.FINISHED for r in wait_run.requests)
    assert max(wait_run.steps["kv_used_tokens"]) <= 12


def test_designed_thresholds_satisfy_the_conditions_and_never_evict() -> None:
    """The proportional recipe with the prefill term: p512d20 near the paper's boundary."""
    cost = COST_MODELS.create("llama2-7b-a100")
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.exponential(1 / 22.0, 1500))
    reqs = [Request(i, float(t), 512, 20) for i, t in enumerate(times)]
    options = fill_design_options(WaitScheduler, {}, reqs, cost)
    assert parse_types(options["types"])[0].output_len == 20
    assert options["d2_s_per_prefill_token"] > 0
    sched = WaitScheduler(**options)
    run = simulate(reqs, sched, cost, capacity_tokens=137_000)
    assert sched.check.ok and sched.design_notes == []
    assert sched.n[0] >= 1
    assert sched.num_repair_evictions == 0
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)
    # Latency stays bounded: the last fifth of the requests is not much slower than the second.
    done = sorted(run.requests, key=lambda r: r.arrival_time)
    lat = np.array([r.finish_time - r.arrival_time for r in done])
    fifth = len(lat) // 5
    assert lat[-fifth:].mean() < 2.0 * lat[fifth:2 * fifth].mean()


def test_mis_specified_rates_trigger_the_lifo_repair_safely() -> None:
    """Thresholds that break the memory condition: the repair evicts (restarts) yet every
    request finishes and memory stays within capacity."""
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.exponential(0.02, 400))
    reqs = [Request(i, float(t), 30, 40) for i, t in enumerate(times)]
    sched = WaitScheduler(types="30x40:50", thresholds="6", d0_s=0.01, d1_s_per_token=1e-5)
    capacity = 2000  # M^pi = 6 * 40 * (30 + 19.5) = 11,880 tokens: far too small
    run = simulate(reqs, sched, AffineCost(0.01, 1e-5), capacity_tokens=capacity, block_size=16)
    assert sched.design_notes and "memory" in sched.design_notes[0]
    assert sched.num_repair_evictions > 0
    assert sum(r.num_evictions for r in run.requests) == sched.num_repair_evictions
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)
    assert max(run.steps["kv_used_tokens"]) <= capacity


class _Decisions(Scheduler):
    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner
        self.decisions: list[tuple[float, dict[int, int], tuple[int, ...]]] = []

    def schedule(self, view: View) -> Decision:
        d = self.inner.schedule(view)
        self.decisions.append((view.now, dict(d.run), d.restart))
        return d


def test_a_prefill_the_repair_drops_waits_again_whole() -> None:
    """Issue 15, item 6: the LIFO repair makes room by dropping a new prefill without
    evicting anyone. The dropped request must wait again for a whole-prompt prefill (WAIT
    admits a prompt in one round, Ao et al. Alg. 1), not be filed as a stage-0 resident
    fed one prompt token per step and then restarted. The issue's reproducer:
    `kvsched simulate --theory --capacity 10 --scheduler wait -o thresholds=1,1
    --no-fast-forward` on the trace 0,5,4 / 1,5,2."""
    from kvsched.sim import simulate_theory

    reqs = [Request(0, 0, 5, 4), Request(1, 1, 5, 2)]
    opts = fill_design_options(WaitScheduler, {"thresholds": "1,1"}, reqs, UnitCost())
    probe = _Decisions(WaitScheduler(**opts))
    run = simulate_theory(reqs, probe, capacity_tokens=10, fast_forward=False)
    by_time = {t: (r, restart) for t, r, restart in probe.decisions}
    # Request 1 (prompt 5) never fits beside request 0 (5 + 4 tokens of 10) until 0 ends.
    assert by_time[2.0] == ({0: 1}, ())
    assert by_time[3.0] == ({0: 1}, ())
    assert by_time[4.0] == ({1: 5}, ())
    assert all(not restart for _, _, restart in probe.decisions)
    assert probe.inner.num_repair_evictions == 0
    assert [r.num_evictions for r in run.requests] == [0, 0]
    assert [r.finish_time for r in run.requests] == [4.0, 6.0]


def test_online_rates_redesign_when_the_rate_changes() -> None:
    """A trace whose rate jumps from 5 to 40 req/s: the sliding-window estimate drifts, the
    thresholds are re-designed upward, and the run stays eviction-free and completes."""
    rng = np.random.default_rng(1)
    slow = np.cumsum(rng.exponential(1 / 5.0, 600))
    fast = slow[-1] + np.cumsum(rng.exponential(1 / 40.0, 2400))
    times = np.concatenate([slow, fast])
    reqs = [Request(i, float(t), 200, 10) for i, t in enumerate(times)]
    cost = AffineCost(0.03, 2e-6)
    sched = WaitScheduler(types="200x10:5", rates="online", window_s=10.0, check_every_s=2.0,
                          d0_s=0.03, d1_s_per_token=2e-6)
    run = simulate(reqs, sched, cost, capacity_tokens=50_000, block_size=1)
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)
    assert sched.redesigns, "the rate change must trigger a re-design"
    t_change = slow[-1]
    assert t_change < sched.redesigns[0][0] < t_change + 5.0  # the first check after the jump sees it
    # Within one window (10 s) after the jump the design follows the new rate.
    assert any(t < t_change + 15.0 and rates[0] == pytest.approx(40.0, rel=0.3) for t, rates in sched.redesigns)
    given = WaitScheduler(types="200x10:5", d0_s=0.03, d1_s_per_token=2e-6)
    given_run = simulate(reqs, given, cost, capacity_tokens=50_000, block_size=1)
    assert max(sched.n) > max(given.n)  # the estimate raised the thresholds for the fast phase

    def fast_latency(r):
        return np.mean([q.finish_time - q.arrival_time for q in r.requests if q.arrival_time > t_change])

    # n = 1 admits one request per iteration (about 29/s here): the stale design is overloaded.
    assert fast_latency(run) < 0.5 * fast_latency(given_run)
    assert sched.num_repair_evictions == 0


def test_workload_description_and_grouping() -> None:
    kinds = parse_types("512x50:6.6|512x20:15.4")
    assert [t.output_len for t in kinds] == [20, 50]
    with pytest.raises(ValueError, match="PROMPTxOUTPUT:RATE"):
        parse_types("512-20:1")
    with pytest.raises(ValueError, match="distinct output"):
        parse_types("512x20:1|100x20:2")
    grouped = group_types([RequestType(10 + k, 10 * (k + 1), 1.0 + k) for k in range(50)], 5)
    assert [g.output_len for g in grouped] == [100, 200, 300, 400, 500]
    assert sum(g.rate for g in grouped) == pytest.approx(sum(1.0 + k for k in range(50)))
    assert grouped[0].prompt_len == round(sum((10 + k) * (1.0 + k) for k in range(10)) / sum(1.0 + k for k in range(10)))
    with pytest.raises(ValueError, match="thresholds"):
        WaitScheduler(types="512x20:1", thresholds="0")
    with pytest.raises(ValueError, match="workload"):
        WaitScheduler()
