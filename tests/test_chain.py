"""Closed-form bounds beyond LB_vol (completion chains, growth waste) and the cumulative-start
formulation, against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import csc_matrix

from kvsched.bounds import (
    InfeasibleSchedule,
    Instance,
    canonical_starts,
    check_result,
    evaluate_starts,
    solve_ip,
    solve_lp,
    solver_available,
    volume_bound,
)
from kvsched.bounds.chain import (
    chain_bound,
    chain_families,
    family_bound,
    family_for_threshold,
    srpt_completions,
    throughput_bound,
)
from kvsched.bounds.cpsat import cpsat_available, solve_cpsat
from kvsched.bounds.model import build_model
from kvsched.bounds.waste import (
    _min_charges,
    _min_charges_relaxed,
    _RankedCosts,
    price_grid,
    ranked_waste_bound,
    request_terms,
    schedule_waste,
    waste_bound,
    waste_completion_bounds,
)
from kvsched.experiments.mcsf_instances import generate

needs_highs = pytest.mark.skipif(not solver_available(), reason="needs HiGHS")


def feasible_schedules(inst: Instance):
    """Every feasible start vector with starts up to the safe horizon, with its TEL."""
    horizon = inst.safe_horizon()
    for starts in itertools.product(*(range(a, horizon + 1) for a in inst.arrival)):
        try:
            tel, _ = evaluate_starts(inst, starts)
        except InfeasibleSchedule:
            continue
        yield starts, tel


def brute_force_optimum(inst: Instance) -> int:
    return min(tel for _, tel in feasible_schedules(inst))


@st.composite
def tiny_instances(draw: st.DrawFn) -> Instance:
    # Outputs up to M - s, as in the MC-SF paper's model 1: tall requests are the point.
    capacity = draw(st.integers(3, 9))
    n = draw(st.integers(2, 4))
    rows = []
    for _ in range(n):
        s = draw(st.integers(0, min(3, capacity - 1)))
        o = draw(st.integers(1, min(5, capacity - s)))
        rows.append((draw(st.integers(0, 2)), s, o))
    return Instance.from_triples(rows, capacity)


small = tiny_instances().filter(lambda i: (i.safe_horizon() + 1) ** i.n <= 20_000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small)
def test_every_feasible_schedule_keeps_each_familys_tails_apart(inst: Instance) -> None:
    _, s, o = inst.arrays()
    fams = [family_for_threshold(inst, int(t)) for t in np.unique(s + o)]
    for starts, _ in feasible_schedules(inst):
        for fam in fams:
            covered: set[int] = set()
            for k, h in zip(fam.members, fam.tail_len, strict=True):
                end = starts[k] + inst.output_len[k]
                tail = set(range(end - h + 1, end + 1))
                assert not tail & covered, (fam, starts)
                covered |= tail


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small)
def test_chain_bound_is_valid_and_at_least_lb_vol(inst: Instance) -> None:
    opt = brute_force_optimum(inst)
    assert volume_bound(inst) <= chain_bound(inst) <= opt
    assert throughput_bound(inst) <= opt


def test_chain_bound_beats_lb_vol_when_tall_requests_must_queue() -> None:
    # Three requests that each fill memory at their peak: they run one after another,
    # TEL = 3 + 6 + 9 = 18; LB_vol lets their areas (9 each) share epochs: 3 + 5 + 7.
    inst = Instance.from_triples([(0, 1, 3), (0, 1, 3), (0, 1, 3)], 4)
    assert brute_force_optimum(inst) == 18
    assert volume_bound(inst) == 15
    assert chain_bound(inst) == 18


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 4)), min_size=1, max_size=5))
def test_srpt_completes_no_later_than_any_order_rank_by_rank(jobs: list[tuple[int, int]]) -> None:
    release = np.array([r for r, _ in jobs])
    length = np.array([p for _, p in jobs])
    srpt = srpt_completions(release, length)
    for order in itertools.permutations(range(len(jobs))):
        t, done = 0, []
        for j in order:  # non-preemptive, each job as early as the order allows
            t = max(t, int(release[j])) + int(length[j])
            done.append(t)
        assert np.all(srpt <= np.sort(done))


def test_families_are_ranked_and_distinct() -> None:
    inst = Instance.from_triples([(0, 1, 8), (0, 2, 7), (0, 1, 5), (0, 0, 9), (0, 3, 2)], 10)
    fams = chain_families(inst, 10)
    assert len({f.members for f in fams}) == len(fams) >= 1
    assert all(len(f.members) >= 2 and min(f.tail_len) >= 1 for f in fams)
    assert chain_bound(inst) >= max(family_bound(inst, f) for f in fams)
    assert chain_families(inst, 0) == []


@needs_highs
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small, st.booleans())
def test_both_formulations_with_every_cut_find_the_brute_force_optimum(inst: Instance, aggregate: bool) -> None:
    opt = brute_force_optimum(inst)
    for formulation in ("dense", "sparse"):
        res = solve_ip(inst, formulation=formulation, aggregate=aggregate, chain_cuts=4, threshold_cuts=2,
                       cardinality_cuts=True, symmetry_cuts=not aggregate, objective_cut=True, time_limit_s=20)
        check_result(inst, res)
        assert (res.status, res.objective) == ("optimal", opt)


@needs_highs
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small)
def test_sparse_formulation_has_the_same_lp_value(inst: Instance) -> None:
    for cuts in ({}, {"threshold_cuts": 1, "chain_cuts": 3}):
        dense = solve_lp(inst, **cuts)
        sparse = solve_lp(inst, formulation="sparse", **cuts)
        assert sparse.value == pytest.approx(dense.value, rel=1e-7, abs=1e-7)
    # Without cuts the memory rows carry every price: the sparse LP's duals certify its value too.
    plain = solve_lp(inst, formulation="sparse")
    assert plain.certified_value == pytest.approx(plain.value, abs=1e-6)


@needs_highs
def test_sparse_model_is_sparser_and_round_trips_a_schedule() -> None:
    from kvsched.experiments.mcsf_instances import generate

    inst = generate(2, 0, 2)  # paper size, n = 22, M = 33: outputs long enough for the difference to show
    hz = np.full(inst.n, inst.safe_horizon())
    dense, sparse = build_model(inst, hz), build_model(inst, hz, formulation="sparse")
    assert sparse.num_nonzeros < dense.num_nonzeros
    # Identical requests may swap starts; canonical order keeps lower ids first.
    starts = canonical_starts(inst, [a + 3 * i for i, a in enumerate(inst.arrival)])  # any start vector within the horizon
    x = sparse.vector_from_starts(starts)
    assert sparse.starts_from_vector(x) == starts
    rows = csc_matrix((sparse.a_value, sparse.a_index, sparse.a_start), shape=(sparse.num_rows, sparse.num_vars)) @ x
    memory = sparse.memory_row_epoch > 0
    # Every other row holds exactly; the memory rows equal the replayed memory profile.
    assert np.all(rows[~memory] >= sparse.row_lower[~memory] - 1e-9)
    assert np.all(rows[~memory] <= sparse.row_upper[~memory] + 1e-9)
    roomy = Instance(inst.arrival, inst.prompt_len, inst.output_len, 10**6, inst.request_ids)
    _, profile = evaluate_starts(roomy, starts)
    epochs = sparse.memory_row_epoch[memory]
    assert np.allclose(rows[memory], [profile[t - 1] if t <= len(profile) else 0 for t in epochs])


def test_unknown_formulation_is_refused() -> None:
    inst = Instance.from_triples([(0, 1, 2)], 4)
    with pytest.raises(ValueError, match="unknown formulation 'wide'"):
        build_model(inst, np.array([3]), formulation="wide")


@pytest.mark.skipif(not cpsat_available(), reason="needs ortools")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small)
def test_cpsat_with_chain_constraints_finds_the_brute_force_optimum(inst: Instance) -> None:
    res = solve_cpsat(inst, chain_cuts=6, time_limit_s=20)
    check_result(inst, res)
    assert (res.status, res.objective) == ("optimal", brute_force_optimum(inst))


@needs_highs
def test_certificate_recomputes_a_chain_bound() -> None:
    import dataclasses

    from kvsched.bounds import CertificateError

    inst = Instance.from_triples([(0, 1, 3), (0, 1, 3), (0, 1, 3), (0, 2, 1)], 4)
    lb = chain_bound(inst)
    solved = solve_ip(inst, chain_cuts=2, time_limit_s=10)
    assert volume_bound(inst) < lb <= solved.objective
    res = dataclasses.replace(solved, lower_bound=lb, lower_bound_source="chain", lower_bound_solver="closed-form",
                              status="optimal" if lb == solved.objective else "bounded")
    check_result(inst, res)
    with pytest.raises(CertificateError, match="claims chain"):
        check_result(inst, dataclasses.replace(res, lower_bound=lb + 1, status="bounded"))


# --- the growth-waste bound (kvsched.bounds.waste) -------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small)
def test_waste_bounds_every_schedules_completions_rank_by_rank(inst: Instance) -> None:
    # The k-th bound is below the k-th smallest completion of every feasible schedule, so
    # the sum is below the optimum.
    ranks = waste_completion_bounds(inst)
    relaxed = waste_completion_bounds(inst, exact=False)
    assert np.all(relaxed <= ranks)
    for starts, _ in feasible_schedules(inst):
        done = np.sort(np.add(starts, inst.output_len))
        assert np.all(ranks <= done), (starts, ranks, done)
    per_rank = waste_bound(inst, ranked=False)
    assert volume_bound(inst) <= waste_bound(inst, exact=False, ranked=False) <= per_rank <= waste_bound(inst)
    assert waste_bound(inst) <= brute_force_optimum(inst)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small)
def test_ranked_waste_bound_is_valid_with_and_without_arrivals(inst: Instance) -> None:
    assert ranked_waste_bound(inst) <= brute_force_optimum(inst)
    together = Instance.from_triples([(0, s, o) for s, o in zip(inst.prompt_len, inst.output_len, strict=True)],
                                     inst.capacity)
    assert ranked_waste_bound(together) <= waste_bound(together) <= brute_force_optimum(together)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small)
def test_every_schedule_pays_the_waste_the_bound_charges(inst: Instance) -> None:
    """The bound's two facts on every feasible schedule: the free memory of the epochs where
    nothing completes covers the growth-waste charges, and the breakpoints one completion
    gives fit beside its peak; and the relaxation never charges more than a schedule pays."""
    a, s, o = inst.arrays()
    capacity = inst.capacity
    lam, relaxed, _ = request_terms(inst, exact=True)
    for starts, _ in feasible_schedules(inst):
        p = np.asarray(starts)
        done = p + o
        charge, memory = schedule_waste(inst, starts)
        _, profile = evaluate_starts(inst, starts)
        epochs = np.arange(int(a.min()) + 1, int(done.max()) + 1)
        quiet = ~np.isin(epochs, done)
        assert (capacity - np.asarray(profile)[epochs - 1])[quiet].sum() >= charge.sum(), starts
        for t in np.unique(done):
            going_on = (p < t) & (t < done)
            peak = int((s + o)[done == t].max())
            assert (s + t - p)[going_on].sum() <= capacity - peak, (starts, t)
        assert np.all(relaxed <= charge[:, None] + np.outer(memory, lam)), starts


def test_ranked_form_raises_the_bound_at_paper_size_and_matches_its_shortest_path() -> None:
    inst = generate(1, 0, 0)
    assert waste_bound(inst, ranked=False) < ranked_waste_bound(inst) == waste_bound(inst)
    poisson = generate(2, 0, 2)  # spread arrivals: only on request
    assert waste_bound(poisson) == waste_bound(poisson, ranked=False)
    assert ranked_waste_bound(poisson) <= waste_bound(poisson, ranked=True)
    # The shortest path over ages against enumerating breakpoint sets, per weight column.
    prompt, output, max_age = np.array([1.0, 3.0]), np.array([5, 6]), np.array([4, 3])
    rng = np.random.default_rng(0)
    base = rng.integers(1, 4, size=(2, 3, 6)).astype(float)
    bonus = rng.integers(0, 2, size=(2, 3, 6)).astype(float)
    for c in range(2):
        base[c, :, output[c]:] = bonus[c, :, output[c]:] = 0
    costs = _RankedCosts(prompt, output, max_age, 12, base, bonus)(0.5)
    for c in range(2):
        s, o = prompt[c], int(output[c])
        for k in range(3):
            weight, extra = base[c, k], bonus[c, k]
            best = np.inf
            ages = range(1, min(o - 1, int(max_age[c])) + 1)
            for r in range(len(ages) + 1):
                for chosen in itertools.combinations(ages, r):
                    cuts = (0, *chosen, o)
                    total = 0.0
                    for y, z in itertools.pairwise(cuts):
                        w = weight + (extra if z < o else 0)
                        total += sum((z - age) * w[age - 1] for age in range(y + 1, z))
                    total += sum(extra[age - 1] * (s + age) for x in chosen for age in range(1, x + 1))
                    best = min(best, total + sum(0.5 * (s + x) for x in chosen))
            volume = sum(weight[age - 1] * (s + age) for age in range(1, o + 1))
            assert costs[c, k] == volume - 0.5 * (12 - s - o) + best, (c, k)


def test_waste_at_price_zero_is_lb_vol_and_more_prices_only_raise_it() -> None:
    inst = generate(1, 0, 0)
    assert waste_bound(inst, prices=[0.0], ranked=False) == volume_bound(inst)
    coarse = waste_bound(inst, prices=price_grid(step=1 / 2, max_price=4.0), ranked=False)
    assert volume_bound(inst) < coarse <= waste_bound(inst, ranked=False)
    with pytest.raises(ValueError, match="prices"):
        waste_bound(inst, prices=[-1.0])


def test_waste_shortest_path_matches_every_breakpoint_set() -> None:
    # The vectorised shortest path against enumerating the breakpoint sets themselves.
    prompt, output, max_age = np.array([0, 1, 3, 2]), np.array([1, 5, 7, 8]), np.array([0, 4, 3, 7])
    prices = np.array([0.0, 0.25, 1.0, 2.5])
    fast = _min_charges(prompt, output, max_age, prices)
    for c in range(len(prompt)):
        ages = range(1, min(int(output[c]) - 1, int(max_age[c])) + 1)
        for li, lam in enumerate(prices):
            best = np.inf
            for r in range(len(ages) + 1):
                for chosen in itertools.combinations(ages, r):
                    cuts = (0, *chosen, int(output[c]))
                    lengths = np.diff(cuts)
                    best = min(best, float((lengths * (lengths - 1) / 2).sum() + lam * sum(prompt[c] + x for x in chosen)))
            assert fast[c, li] == best, (c, lam)
    # The O(o) relaxation for long outputs bounds the shortest path from below.
    assert np.all(_min_charges_relaxed(prompt, output, max_age, prices) <= fast)


def test_waste_sees_the_memory_a_paper_size_schedule_leaves_free() -> None:
    # The MC-SF paper's model-1 size: good schedules run one or two requests at a time.
    for index in range(3):
        inst = generate(1, 0, index)
        assert waste_bound(inst) > 1.1 * max(volume_bound(inst), chain_bound(inst))
        assert volume_bound(inst) < waste_bound(inst, exact=False, ranked=False) < waste_bound(inst, ranked=False)


def test_certificate_recomputes_a_waste_bound() -> None:
    import dataclasses

    from kvsched.bounds import CertificateError, IPOptions, IPResult, best_greedy_starts

    inst = generate(1, 0, 1)
    starts = best_greedy_starts(inst)
    tel, _ = evaluate_starts(inst, starts)
    lb = waste_bound(inst)
    res = IPResult(status="bounded", objective=tel, lower_bound=lb, lower_bound_source="waste", upper_bound=tel,
                   gap=(tel - lb) / tel, starts=starts, incumbent_source="warm-start", horizon=0, horizon_kind="safe",
                   horizon_proven=True, dual_bound=None, solver_status="", solve_time_s=0.0, solver="",
                   num_vars=0, num_rows=0, num_nonzeros=0, row_counts={}, options=IPOptions(),
                   lower_bound_solver="closed-form")
    check_result(inst, res)  # recomputes the bound: no solver involved
    with pytest.raises(CertificateError, match="claims waste"):
        check_result(inst, dataclasses.replace(res, lower_bound=lb + 1))


@pytest.mark.skipif(not cpsat_available(), reason="needs OR-Tools")
def test_cpsat_reports_the_waste_bound_when_it_is_the_best() -> None:
    inst = generate(1, 0, 1)
    res = solve_cpsat(inst, time_limit_s=0.2)
    check_result(inst, res)
    assert res.lower_bound >= waste_bound(inst)
    assert solve_cpsat(inst, time_limit_s=0.2, waste_bound=False).lower_bound_source != "waste"


def test_waste_gap_splits_a_paper_size_schedules_makespan_into_non_negative_terms() -> None:
    import importlib.util
    from pathlib import Path

    from kvsched.experiments.mcsf import theory_schedule

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "waste_gap.py"
    spec = importlib.util.spec_from_file_location("waste_gap", path)
    waste_gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(waste_gap)
    inst = generate(1, 0, 0)
    _, starts = theory_schedule(inst, "mcsf")
    row = waste_gap.decompose(inst, starts)
    assert row["makespan"] == max(np.add(starts, inst.output_len))
    # The bound's last rank is below the schedule's makespan, and each part of the difference is
    # non-negative: the relaxation never charges a request more than the schedule does, and no
    # completion gives more room than it has.
    assert row["bound_makespan"] < row["makespan"]
    assert min(row["choice_by_third"]) >= 0 and row["unused_room"] >= 0 and row["uncharged_free"] >= 0
    assert sum(row["choice_by_third"]) == pytest.approx(row["choice"])
    charge, _ = schedule_waste(inst, starts)
    assert row["charged"] == charge.sum() > 0
    assert 0 < row["uncharged_free_alone"] <= row["uncharged_free"]
