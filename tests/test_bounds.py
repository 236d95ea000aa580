"""Bounds and hindsight IP: spec 13.1 test vectors, validation, solver options, properties P-6/P-7/P-10."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.bounds import (
    InfeasibleSchedule,
    Instance,
    IPOptions,
    SolverUnavailable,
    best_greedy_starts,
    bound_report,
    canonical_starts,
    evaluate_starts,
    greedy_starts,
    lemma47_bound,
    solve_ip,
    solve_lp,
    solver_available,
    sum_output_bound,
    volume_bound,
    volume_bound_seconds,
)
from kvsched.bounds import report as report_mod
from kvsched.bounds import solvers as solvers_mod
from kvsched.experiments.mcsf_instances import (
    generate,
    instance_seed,
    model1_instance,
    model2_instance,
    small_instance,
)
from kvsched.request import Request

needs_solver = pytest.mark.skipif(not solver_available(), reason="no MIP solver installed")

# id: (M, (a, s, o) list, optimal TEL, LP, LB_vol, sum o, Lemma 4.7)
TEST_VECTORS = {
    "TV-1": (10, [(0, 2, 2), (0, 2, 8), (0, 2, 5), (0, 2, 2), (0, 2, 1)], 24, 21.6444, 20, 18, 5.8833),
    "TV-2": (
        8,
        [(0, 2, 3), (0, 2, 4), (0, 2, 6), (0, 2, 1), (0, 2, 4), (0, 2, 1), (0, 2, 3)],
        49, 38.8251, 37, 22, 9.9792,
    ),
    "TV-3": (6, [(0, 4, 2), (0, 4, 2), (0, 4, 1), (0, 3, 1), (0, 1, 2)], 18, 15.6, 17, 8, None),
    "TV-4": (
        12,
        [(0, 1, 5), (0, 1, 9), (0, 1, 8), (0, 1, 7), (0, 1, 5), (0, 1, 8)],
        84, 73.5545, 60, 42, 16.6944,
    ),
}
TV_IDS = list(TEST_VECTORS)


def tv(name: str) -> Instance:
    m, triples, *_ = TEST_VECTORS[name]
    return Instance.from_triples(triples, m)


# ----------------------------------------------------------------------------- closed-form bounds
@pytest.mark.parametrize("name", TV_IDS)
def test_closed_form_bounds_match_spec(name: str) -> None:
    _, _, opt, _, lb_vol, sum_o, l47 = TEST_VECTORS[name]
    inst = tv(name)
    assert volume_bound(inst) == lb_vol
    assert sum_output_bound(inst) == sum_o
    got = lemma47_bound(inst)
    if l47 is None:
        assert got is None
    else:
        assert got == pytest.approx(l47, abs=1e-4)
        assert got <= opt  # P-10
    assert lb_vol <= opt and sum_o <= opt


def test_lemma47_needs_zero_arrivals() -> None:
    assert lemma47_bound(Instance((0, 1), (2, 2), (3, 3), 10)) is None


def test_volume_bound_seconds_matches_epochs_and_scales() -> None:
    inst = Instance((0, 0, 3, 5), (2, 1, 3, 2), (4, 6, 2, 5), 12)
    a, s, o = inst.arrays()
    assert volume_bound_seconds(a, s, o, inst.capacity, 1.0) == pytest.approx(volume_bound(inst))
    # Seconds with rounds of r seconds and arrivals scaled by r: the bound scales by r.
    r = 0.025
    assert volume_bound_seconds(a * r, s, o, inst.capacity, r) == pytest.approx(r * volume_bound(inst))
    assert volume_bound_seconds([], [], [], 10, 0.1) == 0.0
    with pytest.raises(ValueError):
        volume_bound_seconds([0.0], [1, 2], [1], 10, 0.1)


@needs_solver
def test_volume_bound_seconds_below_grid_schedules() -> None:
    """Rounds of exactly r seconds on a grid from 0; a request is visible at the next
    boundary. The best such schedule is the epoch IP with arrivals ceil(a / r)."""
    rng = np.random.default_rng(7)
    r = 0.04
    for _ in range(5):
        base = small_instance(rng, n_range=(3, 5))
        a_s = rng.uniform(0.0, 0.2, size=base.n)
        epochs = tuple(math.ceil(x / r) for x in a_s)
        grid = Instance(epochs, base.prompt_len, base.output_len, base.capacity)
        opt = solve_ip(grid, time_limit_s=30)
        assert opt.status == "optimal"
        best_seconds = r * (opt.objective + sum(epochs)) - a_s.sum()
        lb = volume_bound_seconds(a_s, base.prompt_len, base.output_len, base.capacity, r)
        assert lb <= best_seconds + 1e-9


# ----------------------------------------------------------------------------- replay
def test_evaluate_starts_reproduces_tv1_profiles() -> None:
    inst = tv("TV-1")
    tel, prof = evaluate_starts(inst, [0, 6, 2, 0, 0])  # MC-SF
    assert tel == 26
    assert prof == [9, 8, 3, 4, 5, 6, 10, 4, 5, 6, 7, 8, 9, 10]
    tel, prof = evaluate_starts(inst, [0, 4, 0, 2, 0])  # one optimum
    assert tel == 24
    assert prof == [9, 8, 8, 10, 10, 4, 5, 6, 7, 8, 9, 10]


def test_evaluate_starts_rejects_overflow_and_early_start() -> None:
    inst = tv("TV-1")
    with pytest.raises(InfeasibleSchedule, match="exceeds capacity 10 at epoch"):
        evaluate_starts(inst, [0, 0, 0, 0, 0])
    inst2 = Instance((0, 3), (1, 1), (2, 2), 10)
    with pytest.raises(InfeasibleSchedule, match=r"request index 1 .*precedes its arrival 3"):
        evaluate_starts(inst2, [0, 2])
    with pytest.raises(InfeasibleSchedule, match="expected 2 start epochs"):
        evaluate_starts(inst2, [0])


@pytest.mark.parametrize("name", TV_IDS)
def test_greedy_starts_are_feasible(name: str) -> None:
    inst = tv(name)
    for order in ("arrival", "shortest"):
        tel, _ = evaluate_starts(inst, greedy_starts(inst, order))
        assert tel >= TEST_VECTORS[name][2]
    with pytest.raises(ValueError, match="unknown greedy order"):
        greedy_starts(inst, "longest")  # type: ignore[arg-type]


def test_canonical_starts_orders_identical_requests() -> None:
    inst = Instance((0, 0, 0), (1, 1, 2), (3, 3, 3), 10, (7, 5, 9))
    # Requests 0 and 1 are identical; id 5 (index 1) gets the earlier start.
    assert canonical_starts(inst, [0, 4, 2]) == (4, 0, 2)


# ----------------------------------------------------------------------------- Instance
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arrival": (0, 0), "prompt_len": (1,), "output_len": (1, 1)}, "equal lengths"),
        ({"arrival": (0, -1), "prompt_len": (1, 1), "output_len": (1, 1)}, r"request index 1 .*arrival must be >= 0"),
        ({"arrival": (0, 0), "prompt_len": (1, -1), "output_len": (1, 1)}, r"request index 1 .*prompt_len must be >= 0"),
        ({"arrival": (0, 0), "prompt_len": (1, 1), "output_len": (0, 1)}, r"request index 0 .*output_len must be >= 1"),
        ({"arrival": (0, 0), "prompt_len": (1, 4), "output_len": (1, 7)}, r"request index 1 .*exceeds capacity 10"),
    ],
)
def test_instance_validation_names_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Instance(capacity=10, **kwargs)


def test_instance_type_errors() -> None:
    with pytest.raises(TypeError, match=r"request index 0: arrival must be an int"):
        Instance((0.5,), (1,), (1,), 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="capacity"):
        Instance((0,), (1,), (1,), 10.0)  # type: ignore[arg-type]


def test_instance_from_requests_keeps_ids_and_needs_integral_arrivals() -> None:
    inst = Instance.from_requests([Request(11, 0.0, 2, 3), Request(4, 2.0, 1, 1)], capacity=8)
    assert inst.request_ids == (11, 4)
    assert inst.arrival == (0, 2)
    with pytest.raises(ValueError, match=r"id 4\): arrival_time 2.5 is not an integer epoch"):
        Instance.from_requests([Request(11, 0.0, 2, 3), Request(4, 2.5, 1, 1)], capacity=8)


# ----------------------------------------------------------------------------- IP and LP
@needs_solver
@pytest.mark.parametrize("name", TV_IDS)
def test_ip_optimum_and_lp_match_spec(name: str) -> None:
    _, _, opt, lp_value, lb_vol, _, _ = TEST_VECTORS[name]
    inst = tv(name)
    res = solve_ip(inst, time_limit_s=30)
    assert res.status == "optimal"
    assert res.objective == opt == res.lower_bound == res.upper_bound
    assert res.gap == 0.0
    tel, prof = evaluate_starts(inst, res.starts)  # P-7: feasible and reproduces the value
    assert tel == opt and max(prof) <= inst.capacity
    lp = solve_lp(inst)
    assert lp.value == pytest.approx(lp_value, abs=1e-4)
    assert lp.ceil_value == math.ceil(lp_value)
    assert max(lb_vol, lp.ceil_value) <= opt


@needs_solver
@pytest.mark.parametrize("name", ["TV-2", "TV-4"])
def test_every_model_option_gives_the_same_optimum(name: str) -> None:
    inst, opt = tv(name), TEST_VECTORS[name][2]
    configs = [
        {"aggregate": False, "tighten_horizon": False, "greedy_incumbent": False},
        {"aggregate": True, "tighten_horizon": False, "greedy_incumbent": False},
        {"aggregate": False, "symmetry_cuts": True},
        {"cardinality_cuts": True, "threshold_cuts": 3, "objective_cut": True},
        {"horizon_margin": 5},
    ]
    for cfg in configs:
        res = solve_ip(inst, time_limit_s=30, **cfg)
        assert res.objective == opt, cfg
        assert res.lower_bound == opt or res.status == "bounded", cfg
        assert evaluate_starts(inst, res.starts)[0] == opt
    agg = solve_ip(inst, aggregate=True, tighten_horizon=False, greedy_incumbent=False)
    plain = solve_ip(inst, aggregate=False, tighten_horizon=False, greedy_incumbent=False)
    assert agg.num_vars < plain.num_vars  # TV-2 and TV-4 have identical requests


@needs_solver
def test_scipy_backend_agrees() -> None:
    inst = tv("TV-1")
    res = solve_ip(inst, solver="scipy", time_limit_s=30)
    assert res.solver == "scipy" and res.status == "optimal" and res.objective == 24
    assert solve_lp(inst, solver="scipy").value == pytest.approx(21.6444, abs=1e-4)


@needs_solver
def test_warm_start_is_kept_and_reported() -> None:
    inst = tv("TV-4")
    mcsf = [0, 21, 9, 5, 0, 15]  # spec 13.1, TEL 92
    res = solve_ip(inst, incumbent_starts=mcsf, time_limit_s=30)
    assert res.objective == 84
    # With no time to search, the answer is still at least as good as the warm start.
    res = solve_ip(inst, incumbent_starts=mcsf, time_limit_s=1e-3, greedy_incumbent=False)
    assert res.objective is not None and res.objective <= 92
    assert res.lower_bound <= 84 <= res.objective
    assert evaluate_starts(inst, res.starts)[0] == res.objective


@needs_solver
def test_infeasible_warm_start_raises() -> None:
    inst = tv("TV-1")
    with pytest.raises(InfeasibleSchedule, match="exceeds capacity"):
        solve_ip(inst, incumbent_starts=[0, 0, 0, 0, 0])
    with pytest.raises(InfeasibleSchedule, match="precedes its arrival"):
        solve_ip(Instance((0, 2), (1, 1), (1, 1), 4), incumbent_starts=[0, 1])


@needs_solver
def test_tiny_time_limit_gives_honest_interval() -> None:
    inst = generate(2, 0, 2)  # paper-size Poisson instance, 22 requests
    # Presolve off: HiGHS's presolve alone overruns a short limit on this model.
    res = solve_ip(inst, time_limit_s=0.5, presolve=False)
    assert res.status in ("bounded", "optimal")
    assert res.objective is not None and res.starts is not None
    assert res.lower_bound <= res.upper_bound
    assert res.lower_bound >= volume_bound(inst)
    assert evaluate_starts(inst, res.starts)[0] == res.objective
    json.dumps(res.to_dict())


@needs_solver
def test_heuristic_horizon_is_rechecked() -> None:
    # Too short a horizon for TV-1: the check cannot prove the answer.
    res = solve_ip(tv("TV-1"), horizon=2)
    assert res.horizon_kind == "heuristic" and not res.horizon_proven
    assert res.status == "bounded" and res.lower_bound <= 24 <= res.upper_bound
    # One request: starting it past epoch 0 costs at least o + 1 > its TEL o, so proven.
    res = solve_ip(Instance((0,), (1,), (3,), 4), horizon=0)
    assert res.horizon_kind == "safe" or res.horizon_proven
    assert res.status == "optimal" and res.objective == 3


def test_no_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(preferred: str = "auto") -> str:
        raise SolverUnavailable("no solver in this test")

    monkeypatch.setattr(solvers_mod, "available_solver", unavailable)
    monkeypatch.setattr(report_mod, "solver_available", lambda preferred="auto": False)
    with pytest.raises(SolverUnavailable):
        solve_ip(tv("TV-1"))
    rep = bound_report(tv("TV-1"))
    assert [k for k, _ in rep.bounds] == ["sum-output", "volume", "waste", "lemma-4.7"]
    assert rep.best_lower_bound == ("waste", 22.0)  # LB_vol 20, optimum 24
    assert rep.optimum is None


def test_package_imports_without_solvers() -> None:
    code = (
        "import sys; import kvsched.bounds, kvsched.experiments.mcsf_instances;"
        "bad = [m for m in ('highspy', 'scipy.optimize') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_solver
def test_bound_report_tv1() -> None:
    rep = bound_report(tv("TV-1"), time_limit_s=30)
    names = dict(rep.bounds)
    assert names["sum-output"] == 18 and names["volume"] == 20 and names["lp"] == 22
    assert names["lemma-4.7"] == pytest.approx(5.8833, abs=1e-4)
    assert names["ip-dual"] == 24
    assert rep.best_lower_bound == ("ip-dual", 24.0)
    cert = rep.optimum.pop("certificate")
    assert rep.optimum == {"status": "optimal", "value": 24}
    assert cert["proved_by"] == "highspy" and cert["lower_bound_source"] == "ip-dual"
    json.dumps(rep.to_dict())


# ----------------------------------------------------------------------------- generators
def test_generators_follow_spec_ranges_and_are_reproducible() -> None:
    for index in range(5):
        i1 = model1_instance(np.random.default_rng(instance_seed(3, 1, index)))
        assert 30 <= i1.capacity <= 50 and 40 <= i1.n <= 60 and set(i1.arrival) == {0}
        assert all(1 <= s <= 5 and 1 <= o <= i1.capacity - s for s, o in zip(i1.prompt_len, i1.output_len, strict=True))
        assert i1 == generate(1, 3, index)
        i2 = model2_instance(np.random.default_rng(instance_seed(3, 2, index)))
        assert 30 <= i2.capacity <= 50 and max(i2.arrival) <= 59
        assert list(i2.arrival) == sorted(i2.arrival)
    assert generate(1, 3, 0) != generate(1, 3, 1)
    with pytest.raises(ValueError):
        instance_seed(0, 3, 0)
    small = small_instance(np.random.default_rng(0), max_arrival=3)
    assert 6 <= small.capacity <= 14 and 3 <= small.n <= 7


# ----------------------------------------------------------------------------- properties
@st.composite
def small_instances(draw: st.DrawFn) -> Instance:
    capacity = draw(st.integers(6, 14))
    n = draw(st.integers(3, 6))
    rows = []
    for _ in range(n):
        s = draw(st.integers(1, 3))
        o = draw(st.integers(1, capacity - s))
        a = draw(st.sampled_from([0, 0, 1, 2, 4]))
        rows.append((a, s, o))
    return Instance.from_triples(rows, capacity)


@needs_solver
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_instances())
def test_bounds_sandwich_the_optimum(inst: Instance) -> None:
    """P-6/P-7: closed-form and LP bounds <= IP optimum <= any feasible heuristic."""
    res = solve_ip(inst, time_limit_s=30)
    assert res.status == "optimal"
    tel, prof = evaluate_starts(inst, res.starts)
    assert tel == res.objective and max(prof) <= inst.capacity
    lp = solve_lp(inst)
    assert max(volume_bound(inst), lp.ceil_value, sum_output_bound(inst)) <= res.objective
    heuristic = min(evaluate_starts(inst, greedy_starts(inst, o))[0] for o in ("arrival", "shortest"))
    assert res.objective <= heuristic
    assert evaluate_starts(inst, best_greedy_starts(inst))[0] == heuristic
    plain = solve_ip(inst, IPOptions(aggregate=False, tighten_horizon=False, greedy_incumbent=False))
    assert plain.objective == res.objective
