"""Nested WAIT (unknown lengths): spec wait.md 8, test vectors T5, T6 and the Nested WAIT
part of T11, run on the simulator."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvsched.schedulers.nested_wait  # noqa: F401  (registers nested-wait)
from kvsched.decision import Decision, Scheduler, View
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.nested_wait import NestedWaitScheduler
from kvsched.schedulers.wait_design import (
    check_nested_thresholds,
    nested_memory_requirement,
    nested_segments,
    nested_thresholds,
    solve_theta,
)
from kvsched.sim import simulate, simulate_theory
from kvsched.sim.cost import AffineCost, UnitCost

# --- design: T5, T6, the check and the automatic design ------------------------------------


@pytest.mark.parametrize("n_prev, n_k, p, theta, bound", [
    (10, 4, 0.3, 0.8711, 0.8), (21, 9, 0.3, 1.1048, 1.0286), (100, 40, 0.35, 0.4242, 0.4)])
def test_t5_theta_values(n_prev, n_k, p, theta, bound):
    got = solve_theta(n_prev, n_k, p)
    assert got == pytest.approx(theta, abs=5e-5)
    assert 8 * (n_k - n_prev * p) / n_prev == pytest.approx(bound, abs=5e-5) and got >= bound
    assert -got * n_k + n_prev * math.log(1 - p + p * math.exp(got)) == pytest.approx(0.0, abs=1e-9)


def test_t5_theta_exists_only_between_p_n_prev_and_n_prev():
    with pytest.raises(ValueError, match="drifts upward"):
        solve_theta(10, 3, 0.3)  # n_k = p n_prev
    with pytest.raises(ValueError, match="deterministically"):
        solve_theta(10, 10, 0.3)  # n_k >= n_prev: the caller drops the log term
    for p in (0.0, 1.0):
        with pytest.raises(ValueError, match="p_k"):
            solve_theta(10, 4, p)


@settings(max_examples=300, deadline=None)
@given(n_prev=st.integers(2, 400), n_frac=st.floats(0.0, 1.0), p_frac=st.floats(0.001, 0.999))
def test_t5_theta_is_at_least_the_papers_lower_bound(n_prev, n_frac, p_frac):
    n_k = min(n_prev - 1, max(1, round(n_frac * n_prev)))
    p = p_frac * n_k / n_prev  # p n_prev < n_k < n_prev
    theta = solve_theta(n_prev, n_k, p)
    bound = 8 * (n_k - n_prev * p) / n_prev
    assert theta >= bound * (1 - 1e-9) - 1e-12


def test_t6_memory_requirement():
    mem = nested_memory_requirement(10, (10, 20), (10, 4), (0.3,), 0.05, 1e5)
    assert mem.segment_steps == (11, 10) and mem.mean_stage == (5, 15.5)
    assert mem.batch_memory_tokens == 1650 + 1020 == 2670
    assert mem.theta[0] == pytest.approx(0.87106, abs=5e-6)
    assert mem.log_term == pytest.approx(15.2018, abs=5e-5)
    assert mem.buffer_tokens[0] == pytest.approx(429.04, abs=5e-3)
    assert mem.required_tokens == pytest.approx(3099.0, abs=0.05)


def test_t6_segment_identity_and_deterministic_boundary():
    mem = nested_memory_requirement(512, (20, 50), (1, 1), (0.3,), 0.05, 1e5)
    assert mem.segment_mass_tokens == (10_962, 16_425) == (sum(512 + s for s in range(21)),
                                                            sum(512 + s for s in range(21, 51)))
    assert sum(mem.segment_mass_tokens) == 27_387  # S of p512d50
    # n_2 >= n_1: the boundary queue is bounded deterministically, no log term.
    assert mem.theta == (math.inf,) and mem.buffer_tokens == (532,)


def test_memory_with_mixed_prompts_and_blocks_counts_what_the_cache_allocates():
    mem = nested_memory_requirement((10, 30), (3, 7), (2, 1), (0.4,), 0.05, 100.0, block_size=4, lookahead_tokens=1)
    held = lambda kv: -(-(kv + 1) // 4) * 4
    assert mem.segment_mass_tokens == (sum(held(10 + s) for s in range(4)), sum(held(30 + s) for s in range(4, 8)))
    assert mem.buffer_tokens[0] == pytest.approx(held(30 + 3) * (1 + mem.log_term / solve_theta(2, 1, 0.4)))


T6_SYSTEM = {"prompt_len": 10, "decode_boundaries": (10, 20), "rates": (7.0, 3.0), "d0_s": 0.01,
             "d1_s_per_token": 1e-5}


def test_check_names_each_failing_condition():
    good = check_nested_thresholds(**T6_SYSTEM, thresholds=(10, 4), capacity_tokens=4000)
    assert good.ok and good.continuation == pytest.approx((0.3,)) and not good.notes
    assert good.iteration_time_s == pytest.approx(0.01 + 1e-5 * 2670)
    entry = check_nested_thresholds(**{**T6_SYSTEM, "rates": (700.0, 300.0)}, thresholds=(10, 4),
                                    capacity_tokens=4000)
    assert [f.split(":")[0] for f in entry.failures] == ["entry drift"]
    boundary = check_nested_thresholds(**T6_SYSTEM, thresholds=(10, 3), capacity_tokens=4000)
    assert boundary.failures[0].startswith("boundary drift into segment 2") and "memory" in boundary.failures[1]
    assert boundary.memory.required_tokens == math.inf
    memory = check_nested_thresholds(**T6_SYSTEM, thresholds=(10, 4), capacity_tokens=3000)
    assert [f.split(":")[0] for f in memory.failures] == ["memory"]
    flat = check_nested_thresholds(**T6_SYSTEM, thresholds=(4, 4), capacity_tokens=4000)
    assert flat.ok and flat.deterministic_boundaries == (2,) and "deterministically" in flat.notes[0]


@pytest.mark.parametrize("types, d0_s, d1_s_per_token, block_size", [
    ([(512, 20, 15.4), (512, 50, 6.6)], 0.0106, 4.0e-7, 16),
    ([(512, 20, 42.0), (512, 50, 18.0)], 0.0106, 4.0e-7, 1),
    ([(32, 8, 60.0), (32, 24, 40.0)], 0.05, 2e-6, 16),
    ([(16, 6, 60.0), (24, 12, 30.0), (8, 30, 10.0)], 0.04, 2e-6, 1),
])
def test_automatic_design_passes_its_check(types, d0_s, d1_s_per_token, block_size):
    d = nested_thresholds(types, d0_s, d1_s_per_token, 137_000, horizon_s=600.0, block_size=block_size)
    n, p = d.thresholds, d.check.continuation
    assert d.check.ok and d.memory.required_tokens <= 137_000
    for k in range(1, len(n)):
        assert p[k - 1] < n[k] / n[k - 1] <= 1 and n[k] >= d.ratios[k - 1] * n[k - 1] - 1e-9
    # Mixed prompts: memory uses the largest prompt of the types that reach each segment (10.2).
    assert d.segments.prompt_lens == tuple(max(t[0] for t in types[k:]) for k in range(len(types)))
    # n_1 is the smallest: one less breaks the entry drift (n_1 = 1 is the floor).
    if n[0] > 1:
        fewer = check_nested_thresholds(d.segments.prompt_lens, d.segments.decode_boundaries, d.segments.rates,
                                        [max(1, min(x, n[0] - 1)) for x in n], d0_s, d1_s_per_token, 137_000,
                                        horizon_s=600.0, block_size=block_size)
        assert not fewer.entry_drift_margin_s > 0


def test_automatic_design_names_why_it_is_impossible():
    types = [(512, 20, 42.0), (512, 50, 18.0)]
    with pytest.raises(ValueError, match="memory: M_req"):
        nested_thresholds(types, 0.0106, 4.0e-7, 30_000)
    with pytest.raises(ValueError, match="entry drift cannot hold"):
        nested_thresholds([(512, 20, 500.0), (512, 50, 200.0)], 0.0106, 4.0e-7, 137_000)


def test_engine_types_map_to_paper_boundaries():
    seg = nested_segments([(512, 50, 6.6), (512, 20, 15.4)])
    assert seg.decode_boundaries == (19, 49) and seg.rates == (15.4, 6.6)
    assert nested_segments([(512, 20, 1.0)], first_token_in_prefill=False).decode_boundaries == (20,)


# --- the scheduler ---------------------------------------------------------------------------


def _poisson(seed: int, types: list[tuple[int, int, float]], horizon_s: float) -> list[Request]:
    rng = np.random.default_rng(seed)
    rates = np.array([t[2] for t in types])
    times = np.sort(rng.uniform(0.0, horizon_s, rng.poisson(rates.sum() * horizon_s)))
    kinds = rng.choice(len(types), size=len(times), p=rates / rates.sum())
    return [Request(i, float(t), types[k][0], types[k][1]) for i, (t, k) in enumerate(zip(times, kinds))]


def _spec(types) -> str:
    return "|".join(f"{p}x{o}:{r}" for p, o, r in types)


class _Blind:
    """A request whose length cannot be read: what Nested WAIT is allowed to see."""

    __slots__ = ("_r",)

    def __init__(self, r: Request) -> None:
        self._r = r

    def __getattr__(self, name: str):
        if name in ("output_len", "peak_kv_len"):
            raise AssertionError(f"nested-wait read {name} of request {self._r.request_id}")
        return getattr(self._r, name)


class Probe(Scheduler):
    """Runs the real scheduler, records every call and checks the prefix rule and the
    per-stage caps (T11). blind=True hides output lengths from the scheduler; tight=True
    allows idling with n_1 waiting (the repair may drop prefills that do not fit)."""

    def __init__(self, inner: NestedWaitScheduler, blind: bool = False, tight: bool = False) -> None:
        self.inner = inner
        self.blind = blind
        self.tight = tight
        self.calls: list[dict] = []
        self.violations: list[str] = []

    def schedule(self, view: View) -> Decision:
        seen = view
        if self.blind:
            seen = View(view.now, view.step, {i: _Blind(r) for i, r in view.waiting.items()},
                        {i: _Blind(r) for i, r in view.resident.items()}, [_Blind(r) for r in view.arrived],
                        view.finished, view.num_free_blocks, view.num_blocks, view.block_size,
                        view.arrivals_pending, view.block_counts, view.lookahead_tokens)
        d = self.inner.schedule(seen)
        sigma = {rid: r.num_output_tokens for rid, r in view.resident.items()}
        self.calls.append({"now": view.now, "pending": view.arrivals_pending, "waiting": len(view.waiting),
                           "sigma": sigma, "run": dict(d.run), "restart": d.restart,
                           "fifo_waiting": sorted(view.waiting, key=lambda i: (view.waiting[i].arrival_time, i))})
        self._check(view, d, sigma)
        return d

    def _check(self, view: View, d: Decision, sigma: dict[int, int]) -> None:
        n, outputs = self.inner.n, self.inner._outputs
        seg = lambda s: min(sum(1 for o in outputs if o <= s), len(n) - 1)
        entry = [len(view.waiting)] + [sum(1 for s in sigma.values() if s == o) for o in outputs[:-1]]
        served = Counter(sigma.get(rid, 0) for rid in d.run)
        for s, c in served.items():
            if c > n[seg(s)]:
                self.violations.append(f"t={view.now}: {c} served at sigma {s} > n = {n[seg(s)]}")
        for s, c in Counter(sigma.values()).items():  # interior stages never hold more than n_k
            if s not in outputs[:-1] and c > n[seg(s)]:
                self.violations.append(f"t={view.now}: {c} resident at interior sigma {s}")
        if view.arrivals_pending and self.inner.wait_gate:
            for k in {seg(s) for s in served}:
                if any(entry[j] < n[j] for j in range(k + 1)):
                    self.violations.append(f"t={view.now}: segment {k + 1} served with entries {entry} < {n}")
            if entry[0] >= n[0] and not d.run and not self.tight:
                self.violations.append(f"t={view.now}: idle with {entry[0]} waiting >= n_1")


def _check_complete(run, capacity_tokens: int) -> None:
    for r in run.requests:
        assert r.status is RequestStatus.FINISHED and r.num_output_tokens == r.output_len, r
    assert max(run.steps["kv_used_tokens"]) <= capacity_tokens


def test_registered_with_its_config():
    s = SCHEDULERS.create("nested-wait", types="512x20:15.4|512x50:6.6", thresholds="3,1")
    assert isinstance(s, NestedWaitScheduler)
    assert s.config()["thresholds"] == "3,1" and {"eta", "delta", "horizon_s", "wait_gate"} <= set(s.config())
    with pytest.raises(ValueError, match="one per segment"):
        NestedWaitScheduler(types="512x20:15.4|512x50:6.6", thresholds="3")
    with pytest.raises(ValueError, match="delta"):
        NestedWaitScheduler(types="512x20:15.4", delta=0.0)


@pytest.mark.parametrize("seed", range(4))
def test_every_request_completes_on_poisson_two_type_workloads(seed):
    types = [(32, 8, 60.0), (32, 24, 40.0)]
    inner = NestedWaitScheduler(types=_spec(types), horizon_s=5.0, d0_s=0.03, d1_s_per_token=2e-6)
    probe = Probe(inner)
    run = simulate(_poisson(seed, types, 5.0), probe, AffineCost(0.03, 2e-6), capacity_tokens=20_000,
                   block_size=16)
    _check_complete(run, 20_000)
    assert not probe.violations, probe.violations[:3]
    assert inner.n == (4, 2) and inner.num_repair_evictions == 0


def test_prefix_rule_pauses_a_short_boundary_queue_while_segment_one_runs():
    # Two arrivals per unit step, all of output 4 except ids 0 and 12 (output 10). Request 0
    # reaches the boundary sigma = 4 at t = 4 alone, below n_2 = 2: it pauses while segment 1
    # keeps serving, until request 12 joins it at t = 10.
    reqs = [Request(i, float(i // 2), 4, 10 if i in (0, 12) else 4) for i in range(40)]
    probe = Probe(NestedWaitScheduler(types="4x4:2|4x10:0.2", thresholds="2,2"))
    run = simulate(reqs, probe, UnitCost(), capacity_tokens=10_000, block_size=1)
    _check_complete(run, 10_000)
    assert not probe.violations, probe.violations[:3]
    by_time = {c["now"]: c for c in probe.calls}
    for t in range(4, 10):
        c = by_time[float(t)]
        assert c["sigma"][0] == 4 and 0 not in c["run"] and c["run"], (t, c)
    assert {0, 12} <= set(by_time[10.0]["run"]) and by_time[11.0]["sigma"][0] == 5


def test_gate_idles_until_n_1_wait_and_drains_after_the_last_arrival():
    reqs = [Request(0, 0.0, 4, 3), Request(1, 5.0, 4, 3), Request(2, 9.0, 4, 3)]
    probe = Probe(NestedWaitScheduler(types="4x3:1", thresholds="2"))
    run = simulate(reqs, probe, UnitCost(), capacity_tokens=1000, block_size=1)
    _check_complete(run, 1000)
    # Request 0 waits for request 1 (n_1 = 2); request 2 runs alone once no arrival is pending.
    assert [r.first_token_time for r in run.requests] == [6.0, 6.0, 10.0]
    assert not probe.violations


def test_no_wait_ablation_serves_without_full_batches():
    reqs = [Request(0, 0.0, 4, 3), Request(1, 5.0, 4, 3), Request(2, 9.0, 4, 3)]
    run = simulate(reqs, NestedWaitScheduler(types="4x3:1", thresholds="2", wait_gate=False), UnitCost(),
                   capacity_tokens=1000, block_size=1)
    _check_complete(run, 1000)
    assert [r.first_token_time for r in run.requests] == [1.0, 6.0, 10.0]


@pytest.mark.parametrize("seed", range(3))
def test_lengths_past_every_boundary_stay_in_the_last_segment(seed):
    rng = np.random.default_rng(seed)
    reqs = [Request(i, float(t), 8, int(o)) for i, (t, o) in
            enumerate(zip(np.sort(rng.uniform(0, 20, 60)), rng.integers(1, 40, 60)))]
    probe = Probe(NestedWaitScheduler(types="8x4:2|8x12:1", thresholds="3,2"))
    run = simulate(reqs, probe, UnitCost(), capacity_tokens=5000, block_size=4)
    _check_complete(run, 5000)
    assert not probe.violations, probe.violations[:3]


def test_no_repair_with_the_required_memory_over_twenty_seeds():
    """T11: with C >= M_req the memory bound may fail in at most a delta fraction of runs."""
    types, horizon_s, d0, d1 = [(32, 8, 60.0), (32, 24, 40.0)], 10.0, 0.03, 2e-6
    design = nested_thresholds(types, d0, d1, 10**9, horizon_s=horizon_s, block_size=1)
    capacity = math.ceil(design.memory.required_tokens)
    seeds_with_repairs, peaks = 0, []
    for seed in range(20):
        inner = NestedWaitScheduler(types=_spec(types), horizon_s=horizon_s, d0_s=d0, d1_s_per_token=d1)
        run = simulate(_poisson(seed, types, horizon_s), inner, AffineCost(d0, d1), capacity_tokens=capacity,
                       block_size=1)
        _check_complete(run, capacity)
        assert inner.n == design.thresholds and inner.check.ok
        seeds_with_repairs += inner.num_repair_evictions > 0
        peaks.append(max(run.steps["kv_used_tokens"]))
    assert seeds_with_repairs <= 0.05 * 20 + 1
    # The buffer is used: boundary queues push the KV above a full threshold batch's M^pi.
    assert max(peaks) > design.memory.batch_memory_tokens


@pytest.mark.parametrize("seed", range(3))
def test_tight_capacity_repairs_yet_every_request_finishes(seed):
    types = [(32, 8, 60.0), (32, 24, 40.0)]
    inner = NestedWaitScheduler(types=_spec(types), thresholds="4,2", horizon_s=5.0, d0_s=0.03,
                                d1_s_per_token=2e-6)
    probe = Probe(inner, tight=True)
    capacity = 1200  # M^pi of (4, 2) is 2,656 tokens
    run = simulate(_poisson(seed, types, 5.0), probe, AffineCost(0.03, 2e-6), capacity_tokens=capacity,
                   block_size=16, max_steps=100_000)
    _check_complete(run, capacity)
    assert not probe.violations, probe.violations[:3]
    assert inner.num_repair_evictions > 0 and inner.stats()["num_repair_evictions"] == inner.num_repair_evictions
    assert sum(r.num_evictions for r in run.requests) == inner.num_repair_evictions
    assert any("memory" in note for note in inner.design_notes)
    # Prefills are taken FIFO by arrival, restarted requests included (A20).
    for c in probe.calls:
        prefills = [rid for rid in c["run"] if rid not in c["sigma"]]
        assert sorted(prefills) == sorted(c["fifo_waiting"][:len(prefills)]), c["now"]


def test_automatic_design_refuses_a_capacity_below_m_req():
    types = [(32, 8, 60.0), (32, 24, 40.0)]
    inner = NestedWaitScheduler(types=_spec(types), horizon_s=5.0, d0_s=0.03, d1_s_per_token=2e-6)
    with pytest.raises(ValueError, match="nested-wait: .*memory: M_req"):
        simulate(_poisson(0, types, 5.0), inner, AffineCost(0.03, 2e-6), capacity_tokens=2000, block_size=1)


def test_never_reads_output_len_to_decide():
    types = [(16, 6, 40.0), (16, 16, 20.0)]
    probe = Probe(NestedWaitScheduler(types=_spec(types), thresholds="3,2"), blind=True, tight=True)
    run = simulate(_poisson(1, types, 4.0), probe, AffineCost(0.02, 1e-5), capacity_tokens=600, block_size=4)
    _check_complete(run, 600)  # repairs included: the tight capacity exercises every path
    assert not probe.violations, probe.violations[:3]
    assert probe.inner.num_repair_evictions > 0


def test_decisions_before_the_first_completion_do_not_depend_on_lengths():
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0, 3, 40))
    short = [Request(i, float(t), 16, 6 + int(rng.integers(0, 2)) * 10) for i, t in enumerate(times)]
    long = [Request(r.request_id, r.arrival_time, 16, 40) for r in short]
    calls = []
    for reqs in (short, long):
        probe = Probe(NestedWaitScheduler(types="16x6:10|16x16:5", thresholds="2,1"))
        run = simulate(reqs, probe, AffineCost(0.02, 1e-5), capacity_tokens=5000, block_size=1)
        first_finish = min(r.finish_time for r in run.requests)
        calls.append([(c["now"], c["run"]) for c in probe.calls if c["now"] < first_finish])
    assert len(calls[0]) > 5 and calls[0] == calls[1][:len(calls[0])]


def test_online_rates_redesign_from_completions():
    given = [(32, 8, 20.0), (32, 24, 20.0)]
    actual = [(32, 8, 80.0), (32, 24, 20.0)]
    inner = NestedWaitScheduler(types=_spec(given), rates="online", window_s=2.0, check_every_s=0.5, min_samples=20,
                                horizon_s=6.0, d0_s=0.03, d1_s_per_token=2e-6)
    run = simulate(_poisson(0, actual, 6.0), inner, AffineCost(0.03, 2e-6), capacity_tokens=50_000, block_size=16)
    _check_complete(run, 50_000)
    assert inner.redesigns and inner.redesigns[-1][1][0] > 2 * inner.redesigns[-1][1][1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(st.tuples(st.integers(0, 8), st.integers(1, 12), st.integers(1, 20)), min_size=1, max_size=14),
       thresholds=st.tuples(st.integers(1, 3), st.integers(1, 3)), capacity=st.integers(24, 200),
       gate=st.booleans())
def test_safe_and_complete_in_theory_mode_for_any_arrivals(specs, thresholds, capacity, gate):
    reqs = [Request(i, float(t), p, o) for i, (t, p, o) in enumerate(specs)]
    inner = NestedWaitScheduler(types="6x4:1|6x10:1", thresholds=f"{thresholds[0]},{thresholds[1]}",
                                wait_gate=gate)
    probe = Probe(inner, tight=True)
    run = simulate_theory(reqs, probe, capacity_tokens=capacity, max_steps=50_000)
    assert not probe.violations, probe.violations[:3]
    for r in run.requests:
        if r.prompt_len + r.output_len <= capacity:  # the theory ledger's peak
            assert r.status is RequestStatus.FINISHED and r.num_output_tokens == r.output_len
        else:
            assert r.status is RequestStatus.REJECTED
    assert max(run.steps["kv_used_tokens"], default=0) <= capacity
