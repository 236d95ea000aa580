"""Hindsight optimum by every method (HiGHS, CP-SAT, both) against brute force; certificates."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.bounds import (
    CertificateError,
    InfeasibleSchedule,
    Instance,
    SolverUnavailable,
    check_result,
    cpsat_available,
    evaluate_starts,
    solve_cpsat,
    solve_hindsight,
    solve_lp,
    solver_available,
)
from kvsched.bounds.certify import lagrangian_bound
from kvsched.bounds.hindsight import resolve_method
from kvsched.experiments.mcsf_instances import generate

needs_both = pytest.mark.skipif(not (cpsat_available() and solver_available()), reason="needs ortools and HiGHS")
METHODS = ("highs", "cpsat", "best")


def brute_force_optimum(inst: Instance) -> int:
    """min TEL over every start vector with `a_i <= p_i <= max a + sum o` (some optimum lies there)."""
    horizon = inst.safe_horizon()
    best: int | None = None
    for starts in itertools.product(*(range(a, horizon + 1) for a in inst.arrival)):
        try:
            tel, _ = evaluate_starts(inst, starts)
        except InfeasibleSchedule:
            continue
        best = tel if best is None else min(best, tel)
    assert best is not None
    return best


@st.composite
def tiny_instances(draw: st.DrawFn) -> Instance:
    capacity = draw(st.integers(3, 9))
    n = draw(st.integers(1, 4))
    rows = []
    for _ in range(n):
        s = draw(st.integers(0, min(3, capacity - 1)))
        o = draw(st.integers(1, min(4, capacity - s)))
        rows.append((draw(st.integers(0, 2)), s, o))
    return Instance.from_triples(rows, capacity)


@needs_both
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_instances().filter(lambda i: (i.safe_horizon() + 1) ** i.n <= 20_000))
def test_every_method_matches_brute_force(inst: Instance) -> None:
    opt = brute_force_optimum(inst)
    for method in METHODS:
        res = solve_hindsight(inst, method=method, time_limit_s=20)
        assert res.status == "optimal", (method, res.notes)
        assert res.objective == opt == res.lower_bound, method
        check_result(inst, res)
        cert = res.certificate()
        assert cert["proved_by"] == res.lower_bound_solver and cert["proved_by"]


@needs_both
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_instances().filter(lambda i: i.n >= 3 and (i.safe_horizon() + 1) ** i.n <= 20_000))
def test_cpsat_bound_under_a_tiny_limit_stays_valid(inst: Instance) -> None:
    """Stopped early (or not), the interval always contains the optimum."""
    opt = brute_force_optimum(inst)
    res = solve_cpsat(inst, time_limit_s=0.001, greedy_incumbent=False)
    assert res.lower_bound <= opt
    assert res.objective is None or res.objective >= opt


@needs_both
def test_paper_size_answers_are_certified() -> None:
    """A paper-size model-2 instance: an honest interval, the incumbent replays, sources named."""
    inst = generate(2, 0, 2)  # n = 22, M = 33
    res = solve_hindsight(inst, method="best", time_limit_s=3)
    check_result(inst, res)
    assert [p["role"] for p in res.parts] in (["cpsat-probe"], ["cpsat-probe", "highs"],
                                              ["cpsat-probe", "highs", "cpsat"])
    assert res.lower_bound <= res.objective
    assert res.lower_bound == max(p["lower_bound"] for p in res.parts)
    assert res.objective == min(p["objective"] for p in res.parts)
    json.dumps(res.to_dict())


@needs_both
def test_given_lower_bound_is_reported_as_the_callers() -> None:
    inst = Instance.from_triples([(0, 2, 2), (0, 2, 8), (0, 2, 5), (0, 2, 2), (0, 2, 1)], 10)  # TV-1, optimum 24
    res = solve_cpsat(inst, time_limit_s=10, known_lower_bound=24)
    assert res.status == "optimal" and res.objective == 24
    assert res.lower_bound_solver in ("cpsat", "caller")


def test_check_result_catches_tampering() -> None:
    inst = Instance.from_triples([(0, 2, 2), (0, 2, 8), (0, 2, 5)], 10)
    if not cpsat_available():
        pytest.skip("needs ortools")
    good = solve_cpsat(inst, time_limit_s=10)
    check_result(inst, good)
    bad = [
        dataclasses.replace(good, objective=good.objective - 1, upper_bound=good.objective - 1),
        dataclasses.replace(good, lower_bound=0, lower_bound_source="volume", status="bounded"),
        dataclasses.replace(good, lower_bound_solver=""),
        dataclasses.replace(good, status="bounded"),
        dataclasses.replace(good, starts=(0, 0, 0)),
    ]
    for res in bad:
        with pytest.raises(ValueError):
            check_result(inst, res)
    with pytest.raises(CertificateError, match="without a schedule"):
        check_result(inst, dataclasses.replace(good, starts=None))


def test_missing_ortools_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ortools", None)
    monkeypatch.setitem(sys.modules, "ortools.sat", None)
    monkeypatch.setitem(sys.modules, "ortools.sat.python", None)
    inst = Instance.from_triples([(0, 1, 1)], 4)
    with pytest.raises(SolverUnavailable, match=r"pip install 'kvsched\[cpsat\]'"):
        solve_cpsat(inst)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown solver method 'gurobi'"):
        resolve_method("gurobi")
    assert resolve_method("auto") in ("best", "highs")


@st.composite
def priced_instances(draw: st.DrawFn) -> tuple[Instance, list[float]]:
    inst = draw(tiny_instances().filter(lambda i: (i.safe_horizon() + 1) ** i.n <= 20_000))
    prices = draw(st.lists(st.floats(0, 3, allow_nan=False), min_size=0, max_size=inst.safe_horizon() + 3))
    return inst, prices


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(priced_instances())
def test_lagrangian_bound_is_valid_for_any_prices(case: tuple[Instance, list[float]]) -> None:
    inst, prices = case
    assert lagrangian_bound(inst, prices) <= brute_force_optimum(inst) + 1e-9


@pytest.mark.skipif(not solver_available(), reason="needs HiGHS")
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_instances().filter(lambda i: (i.safe_horizon() + 1) ** i.n <= 20_000))
def test_lp_memory_prices_certify_the_lp_value(inst: Instance) -> None:
    """The LP's duals, recomputed as a Lagrangian bound by kvsched alone, give the LP value."""
    lp = solve_lp(inst)
    assert lp.certified_value == pytest.approx(lagrangian_bound(inst, lp.memory_prices))
    assert lp.certified_value == pytest.approx(lp.value, rel=1e-7, abs=1e-7)
    assert lp.certified_value <= brute_force_optimum(inst) + 1e-9


def test_lagrangian_bound_refuses_negative_prices() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        lagrangian_bound(Instance.from_triples([(0, 1, 1)], 4), [1.0, -0.5])


@needs_both
def test_a_wrong_given_bound_proves_nothing() -> None:
    """A caller's bound above a feasible TEL makes the model infeasible; no proof may follow from it."""
    inst = Instance.from_triples([(0, 2, 2), (0, 2, 8), (0, 2, 5), (0, 2, 2), (0, 2, 1)], 10)  # optimum 24
    res = solve_cpsat(inst, time_limit_s=10, incumbent_starts=[0, 4, 0, 2, 0], known_lower_bound=30)
    assert res.objective == 24 and res.status == "bounded"
    # The best closed form: the growth-waste bound, 22 (LB_vol: 20).
    assert res.lower_bound_solver == "closed-form" and (res.lower_bound_source, res.lower_bound) == ("waste", 22)
    check_result(inst, res)
