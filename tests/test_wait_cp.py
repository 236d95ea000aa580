"""WAIT-CP (spec wait.md 9): design values (T7, T9) and real simulator runs of its batch rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import Recorder

import kvsched.sim.cost  # noqa: F401  (registers cost models)
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.request import Request
from kvsched.schedulers.wait_common import group_types
from kvsched.schedulers.wait_cp import (  # importing it registers wait-cp
    WaitCPScheduler,
    design_wait_cp,
    fluid_requests_in_service,
    token_gate,
)
from kvsched.schedulers.wait_design import segment_budgets
from kvsched.sim import simulate

CAPACITY = 137_000
E2 = "512x20:15.4|512x50:6.6"


def poisson(n: int, rate: float, shapes: list[tuple[int, int]], seed: int = 0,
            weights: list[float] | None = None) -> list[Request]:
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    picks = rng.choice(len(shapes), size=n, p=weights)
    return [Request(i, float(t), *shapes[k]) for i, (t, k) in enumerate(zip(times, picks))]


def sim(reqs, scheduler, capacity=CAPACITY):
    return simulate(reqs, scheduler, COST_MODELS.create("llama2-7b-a100"), capacity_tokens=capacity, block_size=16,
                    max_steps=200_000)


def latencies(run) -> np.ndarray:
    return np.array([r.finish_time - r.arrival_time for r in run.requests])


def batch_tokens(run) -> np.ndarray:
    return np.array(run.steps["num_prefill_tokens"]) + np.array(run.steps["num_decode_seqs"])


def check_clean(run, scheduler: WaitCPScheduler, n: int) -> None:
    assert len(run.requests) == n and all(r.is_finished for r in run.requests)
    assert max(run.steps["kv_used_tokens"]) <= run.capacity_tokens
    assert max(run.steps["num_resident"]) <= scheduler.total_limit
    assert scheduler.num_repair_evictions == 0 and sum(run.steps["num_preempted"]) == 0


# ---------------------------------------------------------------- design (pure)

@pytest.mark.parametrize("tl, p, g", [(21, 21 / 22, 508), (30, 30 / 22, 726)])
def test_t9_token_gate(tl, p, g):
    assert token_gate("512x20:23", tl, 256) == (pytest.approx(p), g)


def test_token_gate_weights_types_by_rate():
    # D = 0.5 (2 + 20) + 0.5 (1 + 50) = 36.5, Kbar = 1.5, P = 73 / 36.5 = 2.
    p, g = token_gate("512x20:1|200x50:1", 73, 256)
    assert p == pytest.approx(2.0) and g == math.ceil(73 - 3 + 3 * 256)


@pytest.mark.parametrize("eta, budgets", [(0.0, (21, 9)), (0.05, (20, 10))])
def test_t7_two_type_segments(eta, budgets):
    d = design_wait_cp(E2, CAPACITY, total_limit=30, eta=eta)
    assert d.edges == (20, 50) and d.starts == (0, 20) and d.counts == (20, 30) and d.rotation == (20, 30)
    assert d.budgets == budgets and d.total_limit == 30


def test_l_grouping_builds_equal_width_segments():
    fine = "|".join(f"{40 + k}x{10 * (k + 1)}:{1 + k % 3}" for k in range(10))  # outputs 10..100
    d = design_wait_cp(fine, CAPACITY, total_limit=40, num_segments=3, eta=0.05)
    groups = group_types(fine, 3)
    assert d.edges == (33, 66, 100) == tuple(t.output_len for t in groups)
    assert d.counts == (33, 33, 34)
    assert d.budgets == segment_budgets([t.rate for t in groups], d.counts, 40, 0.05).budgets
    one = design_wait_cp(fine, CAPACITY, total_limit=40, num_segments=1)
    assert one.edges == (100,) and one.budgets == (40,)


def test_uniform_segments_share_one_rate():
    d = design_wait_cp("512x1000:2", CAPACITY, total_limit=100, segment_size=300)
    assert d.edges == (300, 600, 900, 1000) and d.counts == (300, 300, 300, 100)
    assert d.per_stage == pytest.approx((0.1,) * 4) and d.budgets == (30, 30, 30, 10)
    with pytest.raises(ValueError, match="single type"):
        WaitCPScheduler(types=E2, tl=30, segment_size=10)
    with pytest.raises(ValueError, match="mutually exclusive"):
        WaitCPScheduler(types="512x20:1", tl=30, segment_size=10, num_segments=1)


def test_pipeline_depth_basis_counts_the_prefill_chunks():
    d = design_wait_cp("512x20:23", CAPACITY, total_limit=22, per_stage_basis="pipeline_depth")
    assert d.rotation == (22,) and d.per_stage == pytest.approx((1.0,)) and d.budgets == (22,)
    assert design_wait_cp("512x20:23", CAPACITY, per_stage_basis="pipeline_depth").total_limit == 22


def test_automatic_tl_covers_the_fluid_requests_in_service():
    dt, n = fluid_requests_in_service("512x20:23", 256, 0.0106, 4.0e-7)
    s = 20 * (512 + 19 / 2)
    assert dt == pytest.approx(0.0106 / (1 - 23 * 4.0e-7 * s))
    assert n == pytest.approx(23 * dt * 22)
    # ceil(1.25 n) = 8, but segment 1 needs n_1 = tl / 20 >= 1.
    assert WaitCPScheduler(types="512x20:23").total_limit == 20
    # A prefill term in the design model raises the fluid count above that floor.
    heavy = WaitCPScheduler(types="512x20:23", d2_s_per_prefill_token=7.0e-5)
    _, n_heavy = fluid_requests_in_service("512x20:23", 256, 0.0106, 4.0e-7, 7.0e-5)
    assert heavy.total_limit == math.ceil(1.25 * n_heavy) > 20
    with pytest.raises(ValueError, match="overloaded"):
        WaitCPScheduler(types="512x1000:3")


def test_automatic_tl_is_capped_by_memory():
    d = design_wait_cp("512x1000:2", 137_000)
    assert d.total_limit == 137_000 // 1512 and "capped" in d.notes[0]


# ---------------------------------------------------------------- simulator runs

def test_moderate_load_completes_within_every_cap():
    reqs = poisson(300, 15.0, [(512, 20)])
    s = WaitCPScheduler(types="512x20:15", tl=21)
    run = sim(reqs, s)
    check_clean(run, s, 300)
    assert max(batch_tokens(run)) <= 508  # T9's gate
    assert s.stats()["total_limit"] == 21 and s.stats()["num_repair_evictions"] == 0


def test_two_types_with_and_without_the_token_gate():
    reqs = poisson(300, 22.0, [(512, 20), (512, 50)], weights=[0.7, 0.3])
    gated = WaitCPScheduler(types=E2, tl=30, chunk_size=128)
    run = sim(reqs, gated)
    check_clean(run, gated, 300)
    assert max(batch_tokens(run)) <= gated.design.token_budget
    free = WaitCPScheduler(types=E2, tl=30, chunk_size=128, token_gate=False)
    run_free = sim(reqs, free)
    check_clean(run_free, free, 300)
    assert max(batch_tokens(run_free)) > gated.design.token_budget  # several 128-token chunks at once


def test_grouped_types_run_clean():
    fine = [(40 + k, 10 * (k + 1)) for k in range(10)]
    reqs = poisson(300, 20.0, fine, seed=3)
    s = WaitCPScheduler(types="|".join(f"{p}x{o}:2" for p, o in fine), tl=40, num_segments=3, chunk_size=128)
    check_clean(sim(reqs, s), s, 300)


def test_chunks_never_exceed_chunk_size_and_a_512_prompt_takes_two_steps():
    rec = Recorder(WaitCPScheduler(types="512x20:15", tl=21, chunk_size=256))
    run = sim(poisson(100, 15.0, [(512, 20)]), rec)
    assert max(n for _, d in rec.decisions for n in d.run.values()) <= 256
    alone = sim([Request(0, 0.0, 512, 3)], WaitCPScheduler(types="512x3:1", tl=3))
    r = alone.requests[0]
    assert alone.steps["num_prefill_tokens"][:2] == [256, 256]
    assert r.first_token_time == pytest.approx(sum(alone.steps["duration"][:2]))
    assert len(run.requests) == 100


def test_the_wait_gate_holds_requests_at_low_load_and_the_drain_finishes_them():
    reqs = poisson(40, 1.0, [(512, 20)], seed=1)
    # Entry limit 10, budget 200: segment 1's decodes wait until 10 requests are at stage 0
    # at once or 200 are inside, which this load never reaches before the last arrival.
    waiting = WaitCPScheduler(types="512x20:1", tl=200)
    eager = WaitCPScheduler(types="512x20:1", tl=200, wait_gate=False)
    run_w, run_e = sim(reqs, waiting), sim(reqs, eager)
    assert all(r.is_finished for r in run_w.requests) and all(r.is_finished for r in run_e.requests)
    assert latencies(run_w).mean() > 5 * latencies(run_e).mean()
    # So every request is held until the drain (A17), which then serves them all.
    last = reqs[-1].arrival_time
    assert all(r.finish_time > last for r in run_w.requests)
    assert sum(r.finish_time < last for r in run_e.requests) >= 35


def test_overfull_tl_is_repaired_by_lifo_restarts():
    # tl far above what memory holds: the decode growth overflows and the safety net restarts.
    reqs = poisson(120, 20.0, [(64, 400)], seed=2)
    s = WaitCPScheduler(types="64x400:20", tl=30, wait_gate=False)
    run = sim(reqs, s, capacity=4096)
    assert all(r.is_finished for r in run.requests)
    assert s.num_repair_evictions > 0 and s.num_repair_evictions == sum(run.steps["num_preempted"])
    assert "safety net" in s.design_notes[0]
    assert max(run.steps["kv_used_tokens"]) <= 4096


def test_online_rates_run_and_registry_builds_it():
    s = SCHEDULERS.create("wait-cp", types="512x20:5", tl=21, rates="online", window_s=5.0, check_every_s=1.0,
                          min_samples=16)
    run = sim(poisson(200, 15.0, [(512, 20)]), s)
    assert all(r.is_finished for r in run.requests) and s.num_repair_evictions == 0
    assert s.config()["tl"] == 21 and "_heap" not in s.config()


def test_runs_are_deterministic():
    reqs = poisson(200, 22.0, [(512, 20), (512, 50)], weights=[0.7, 0.3], seed=4)

    def results():
        run = sim(reqs, WaitCPScheduler(types=E2, tl=30))
        return [(r.request_id, r.first_token_time, r.finish_time) for r in run.requests]

    assert results() == results()
