"""Offline-batch lower bounds of gsa_gba.md section 10: the exact table, the segment algorithm
against the direct definition, the ordering LB_len <= LB_mix <= LB_count <= OPT on tiny
instances, and input validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.bounds import (
    InfeasibleSchedule,
    Instance,
    evaluate_starts,
    solver_available,
    volume_bound,
)
from kvsched.bounds.batch import (
    PolymatroidLPResult,
    batch_bounds,
    batch_instance,
    exact_optimum,
    job_size_ratio,
    kv_areas,
    lb_area,
    lb_count,
    lb_count_direct,
    lb_len,
    lb_mix,
    polymatroid_lp,
    regime,
)

needs_solver = pytest.mark.skipif(not solver_available(), reason="no MIP solver installed")


def jobs(*groups: tuple[int, int, int]) -> tuple[list[int], list[int]]:
    """`(count, s, o)` groups -> (prompt_len, output_len) lists."""
    s: list[int] = []
    o: list[int] = []
    for count, si, oi in groups:
        s += [si] * count
        o += [oi] * count
    return s, o


# ----------------------------------------------------------------------------- spec table (section 10)
# id: (groups, M, LB_len, LB_area, LB_mix, LB_count)
SPEC_TABLE = {
    "1x(0,5)": ([(1, 0, 5)], 100, 5, 1, 5, 5),
    "600x(0,1)": ([(600, 0, 1)], 50, 600, 3_900, 3_900, 3_900),
    "2000x(0,1)": ([(2000, 0, 1)], 50, 2_000, 41_000, 41_000, 41_000),
    "20x(399,1)+200x(0,2)": ([(20, 399, 1), (200, 0, 2)], 400, 420, 517, 630, 649),
    "300x(0,64)": ([(300, 0, 64)], 1024, 19_200, 91_860, 92_821, 92_821),
    "3x(0,4)": ([(3, 0, 4)], 10, 12, 6, 12, 12),
}


@pytest.mark.parametrize("name", list(SPEC_TABLE))
def test_spec_table(name: str) -> None:
    groups, m, want_len, want_area, want_mix, want_count = SPEC_TABLE[name]
    s, o = jobs(*groups)
    assert lb_len(s, o, m) == want_len
    assert lb_area(s, o, m) == want_area
    assert lb_mix(s, o, m) == want_mix
    assert lb_count(s, o, m) == want_count
    assert batch_bounds(s, o, m) == {
        "lb_len": want_len, "lb_area": want_area, "lb_mix": want_mix, "lb_count": want_count,
    }
    if len(s) <= 600:
        assert lb_count_direct(s, o, m) == want_count


@needs_solver
def test_spec_table_optimum_3x04() -> None:
    res = exact_optimum([0, 0, 0], [4, 4, 4], 10)
    assert res.status == "optimal"
    assert res.objective == 14
    tel, profile = evaluate_starts(batch_instance([0, 0, 0], [4, 4, 4], 10), res.starts)
    assert tel == 14 and max(profile) <= 10


def test_kv_areas_is_the_spec_area() -> None:
    s = np.array([0, 3, 399, 0])
    o = np.array([5, 2, 1, 64])
    assert kv_areas(s, o).tolist() == [15, 9, 400, 2080]
    assert kv_areas(s, o).dtype == np.int64


# ----------------------------------------------------------------------------- strategies
@st.composite
def batches(
    draw: st.DrawFn, max_n: int = 12, max_m: int = 30, min_m: int = 1, min_n: int = 0
) -> tuple[list[int], list[int], int]:
    m = draw(st.integers(min_m, max_m))
    n = draw(st.integers(min_n, max_n))
    s: list[int] = []
    o: list[int] = []
    for _ in range(n):
        si = draw(st.integers(0, m - 1))
        s.append(si)
        o.append(draw(st.integers(1, m - si)))
    return s, o, m


def mix_formula(s: list[int], o: list[int], m: int) -> int:
    """sum_k max(o_(k), ceil(Q_k / M)), written out from the spec with Python ints."""
    areas = sorted(si * oi + oi * (oi + 1) // 2 for si, oi in zip(s, o, strict=True))
    q = list(itertools.accumulate(areas))
    return sum(max(ok, -(-qk // m)) for ok, qk in zip(sorted(o), q, strict=True))


# ----------------------------------------------------------------------------- lb_count vs its definition
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_lb_count_matches_direct_definition(batch: tuple[list[int], list[int], int]) -> None:
    s, o, m = batch
    assert lb_count(s, o, m) == lb_count_direct(s, o, m)


def test_lb_count_matches_direct_definition_seeded() -> None:
    """Wider instances than the hypothesis strategy: more jobs, larger M, many ties."""
    rng = np.random.default_rng(20260130)
    for _ in range(200):
        m = int(rng.integers(1, 200))
        n = int(rng.integers(1, 60))
        s = rng.integers(0, m, n) * (rng.random(n) < 0.6)  # many s = 0
        o = 1 + (rng.integers(0, m, n) % (m - s))
        assert lb_count(s, o, m) == lb_count_direct(s, o, m), (s.tolist(), o.tolist(), m)


@pytest.mark.parametrize(
    ("s", "o", "m"),
    [
        ([], [], 5),  # no jobs
        ([0], [1], 1),  # the smallest job, M = 1
        ([7], [3], 10),  # one job with s + o = M
        ([0] * 7, [1] * 7, 3),  # all o = 1
        ([0, 0, 0, 0], [1, 2, 3, 4], 10**6),  # M huge: LB = sum o
        ([5, 0, 2], [5, 10, 8], 10),
    ],
)
def test_lb_count_degenerate_cases(s: list[int], o: list[int], m: int) -> None:
    assert lb_count(s, o, m) == lb_count_direct(s, o, m)
    assert lb_count(s, o, m) >= lb_mix(s, o, m) >= lb_len(s, o, m)
    if m == 10**6:
        assert lb_count(s, o, m) == sum(o)


# ----------------------------------------------------------------------------- lb_mix = LB_vol at arrivals 0
@settings(max_examples=200, deadline=None)
@given(batches(max_n=20, max_m=60))
def test_lb_mix_is_formula_and_mcsf_lb_vol(batch: tuple[list[int], list[int], int]) -> None:
    s, o, m = batch
    got = lb_mix(s, o, m)
    assert got == mix_formula(s, o, m)
    if s and m >= 2:  # Instance needs M >= 2
        assert got == volume_bound(Instance((0,) * len(s), tuple(s), tuple(o), m))


@settings(max_examples=200, deadline=None)
@given(batches(max_n=20, max_m=60))
def test_closed_form_ordering(batch: tuple[list[int], list[int], int]) -> None:
    s, o, m = batch
    b = batch_bounds(s, o, m)
    assert b["lb_len"] <= b["lb_mix"] <= b["lb_count"]
    assert b["lb_area"] <= b["lb_mix"]
    assert b["lb_area"] == sum(-(-q // m) for q in itertools.accumulate(sorted(kv_areas(s, o).tolist())))


# ----------------------------------------------------------------------------- against OPT
@needs_solver
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(max_n=5, max_m=14, min_m=2, min_n=1))
def test_bounds_below_exact_optimum(batch: tuple[list[int], list[int], int]) -> None:
    """Spec 14.1 item 3: LB_len <= LB_mix <= LB_count <= OPT, LB_area <= LB_mix, polymatroid <= OPT."""
    s, o, m = batch
    res = exact_optimum(s, o, m, time_limit_s=30)
    assert res.status == "optimal", res.notes
    opt = res.objective
    tel, profile = evaluate_starts(batch_instance(s, o, m), res.starts)
    assert tel == opt and max(profile) <= m
    b = batch_bounds(s, o, m, lp=True)
    assert b["lb_len"] <= b["lb_mix"] <= b["lb_count"] <= opt
    assert b["lb_area"] <= b["lb_mix"]
    assert b["lb_polymatroid"] <= opt + 1e-6 * opt


def brute_force_optimum(s: list[int], o: list[int], m: int) -> int:
    """min sum C_i over every start vector in [0, sum o]^n (some optimum starts every job by then)."""
    inst = batch_instance(s, o, m)
    best: int | None = None
    for starts in itertools.product(range(sum(o) + 1), repeat=len(s)):
        try:
            tel, _ = evaluate_starts(inst, starts)
        except InfeasibleSchedule:
            continue
        best = tel if best is None else min(best, tel)
    assert best is not None
    return best


@needs_solver
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(max_n=3, max_m=8, min_m=2, min_n=1).filter(lambda b: sum(b[1]) <= 12))
def test_exact_optimum_matches_enumeration(batch: tuple[list[int], list[int], int]) -> None:
    """The shared IP handles s = 0 (the batch model) and agrees with brute force."""
    s, o, m = batch
    res = exact_optimum(s, o, m)
    assert res.status == "optimal"
    assert res.objective == brute_force_optimum(s, o, m)


@needs_solver
def test_exact_optimum_takes_a_warm_start() -> None:
    # GBA-V, stagger on: starts 0, 1, 2 (spec 14.2), a feasible incumbent of TEL 15.
    res = exact_optimum([0, 0, 0], [4, 4, 4], 10, incumbent_starts=[0, 1, 2])
    assert res.status == "optimal" and res.objective == 14


# ----------------------------------------------------------------------------- polymatroid LP
def test_polymatroid_hand_computed() -> None:
    # One job: C >= o dominates.
    r = polymatroid_lp([0], [5], 100)
    assert isinstance(r, PolymatroidLPResult) and r.converged
    assert r.value == pytest.approx(5.0)
    # n identical jobs with p = 1/50: every prefix needs c >= p (k+1)/2, so C = p (n+1)/2 each
    # and the value is p n (n+1) / 2 = 600 * 601 / 100 = 3606.
    s, o = jobs((600, 0, 1))
    r = polymatroid_lp(s, o, 50)
    assert r.converged and r.value == pytest.approx(3606.0, rel=1e-9)
    # 3 x (0,4), M = 10: p = 1, full set needs sum C >= 6, C >= 4 binds: 12.
    assert polymatroid_lp([0, 0, 0], [4, 4, 4], 10).value == pytest.approx(12.0)


def test_polymatroid_cutting_planes_add_cuts_and_stop_early() -> None:
    rng = np.random.default_rng(3)
    s = rng.integers(0, 30, 25)
    o = rng.integers(1, 60, 25)
    full = polymatroid_lp(s, o, 100)
    assert full.converged and full.cuts > 1 and full.iterations == full.cuts
    early = polymatroid_lp(s, o, 100, max_iter=1)
    assert not early.converged and early.iterations == 1 and early.cuts == 2
    assert early.value <= full.value + 1e-6
    assert full.value >= lb_len(s, o, 100) - 1e-6


def test_batch_bounds_with_lp() -> None:
    b = batch_bounds([0, 0, 0], [4, 4, 4], 10, lp=True)
    assert set(b) == {"lb_len", "lb_area", "lb_mix", "lb_count", "lb_polymatroid"}
    assert b["lb_polymatroid"] == pytest.approx(12.0)


# ----------------------------------------------------------------------------- size
def count_bound_by_o_segments(s: np.ndarray, o: np.ndarray, m: int) -> int:
    """LB_count summed per job instead of per step, one segment per distinct o.

    On [d, d') between distinct output lengths the eligible set E is fixed, and
    n - N*(t) = (n - |E|) + #{k <= |E| : ceil(P_k / M) > t}, P_k the prefix sums of E's
    sorted areas; sum over t in closed form. O(n * distinct o), independent of `lb_count`.
    """
    a = s * o + o * (o + 1) // 2
    n = a.size
    ds = np.unique(o)
    total = n * int(ds[0])  # t in [0, min o): nothing eligible
    for j, d in enumerate(ds.tolist()):
        eligible = np.sort(a[o <= d])
        rounds = -(-np.cumsum(eligible) // m)
        if j + 1 < ds.size:
            span = int(ds[j + 1]) - d
            total += (n - eligible.size) * span + int(np.clip(rounds - d, 0, span).sum())
        else:
            total += int(np.maximum(rounds - d, 0).sum())
    return total


def test_lb_count_large_instance_matches_independent_computation() -> None:
    rng = np.random.default_rng(7)
    n = 10_000
    s = np.minimum(np.rint(rng.lognormal(6.5, 1.0, n)), 4000).astype(np.int64)
    o = np.clip(np.rint(rng.lognormal(5.0, 0.9, n)), 1, 700).astype(np.int64)
    m = 16_384
    got = lb_count(s, o, m)
    assert got == count_bound_by_o_segments(s, o, m)
    assert got >= lb_mix(s, o, m)
    # The small-instance check of the independent version itself.
    s2, o2 = jobs((20, 399, 1), (200, 0, 2))
    assert count_bound_by_o_segments(np.array(s2), np.array(o2), 400) == 649


# ----------------------------------------------------------------------------- eps and regime
def test_job_size_ratio_and_regime() -> None:
    assert job_size_ratio([0, 10], [5, 40], 1000) == pytest.approx(0.05)
    assert regime(0.05) == "large-memory"
    assert regime(0.0500001) == "general"
    assert regime(job_size_ratio([399, 0], [1, 2], 400)) == "general"
    assert job_size_ratio([], [], 10) == 0.0
    with pytest.raises(ValueError, match="eps"):
        regime(-0.1)


# ----------------------------------------------------------------------------- validation
ALL_FUNCTIONS = [lb_len, lb_area, lb_mix, lb_count, lb_count_direct, batch_bounds, polymatroid_lp,
                 job_size_ratio, exact_optimum]


@pytest.mark.parametrize("fn", ALL_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("s", "o", "m", "match"),
    [
        ([0, 3, 5], [1, 2, 6], 10, r"request index 2: prompt_len \+ output_len = 11 exceeds capacity 10"),
        ([0, 0, 0], [1, 0, 1], 10, r"request index 1: output_len must be >= 1, got 0"),
        ([0, 0, -1], [1, 1, 1], 10, r"request index 2: prompt_len must be >= 0, got -1"),
        ([0, 0], [1, 1, 1], 10, r"equal lengths, got 2 and 3"),
        ([0], [1], 0, r"capacity must be >= 1"),
    ],
)
def test_bad_input_names_index_and_field(fn, s: list[int], o: list[int], m: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(s, o, m)


def test_non_integer_input_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"request index 1: output_len must be a whole number, got 2.5"):
        lb_count([0, 0], [1, 2.5], 10)
    with pytest.raises(TypeError, match=r"capacity must be an int"):
        lb_count([0], [1], 10.0)  # type: ignore[arg-type]
    # Whole-number floats (a pandas column, say) are accepted as their integers.
    assert lb_count(np.array([0.0, 0.0, 0.0]), np.array([4.0, 4.0, 4.0]), 10) == 12


def test_instance_accepts_zero_prompts() -> None:
    """Ambiguity 25: the batch model has s_i = 0, and Instance accepts it."""
    inst = Instance((0, 0, 0), (0, 0, 0), (4, 4, 4), 10)
    assert volume_bound(inst) == 12
    assert evaluate_starts(inst, [0, 0, 2])[0] == 14
    with pytest.raises(ValueError, match=r"request index 0 .*prompt_len must be >= 0, got -1"):
        Instance((0,), (-1,), (1,), 10)
