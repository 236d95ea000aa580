"""Lower bounds and the exact optimum for the offline batch problem of the GBA/GSA paper (docs/gsa.md).

What this module is for: measuring batch schedulers (GBA, GSA, Sorted-F, b-scaling) against
a bound on the optimal total completion time `sum_i C_i`. The bounds are kvsched's
(docs/gsa.md), and they are valid only in the **offline batch setting**: every job arrives
at time 0, job `i` has a prompt `s_i >= 0` and an output length `o_i >= 1`, in each
step it holds `s_i + u` memory units while producing its `u`-th token, and the running set
never holds more than `M` units (`s_i + o_i <= M` for every job).

Notation: `a_i = s_i o_i + o_i (o_i + 1) / 2` is the memory-time area of one uninterrupted
run (`kv_areas`), `o_(k)` the k-th smallest output length, `Q_k` the sum of the `k` smallest
areas.

* `lb_len`   = `sum_i o_i`                                    (section 10, item 1)
* `lb_area`  = `sum_k ceil(Q_k / M)`                          (item 2)
* `lb_mix`   = `sum_k max(o_(k), ceil(Q_k / M))`              (item 3; the volume bound LB_vol of docs/bounds.md
  with every arrival at 0, computed by `kvsched.bounds.volume`)
* `lb_count` = `sum_{t>=0} (n - N*(t))`, `N*(t)` the most jobs with `o_i <= t` whose areas fit
  in `M t` (item 4, the headline bound; at least as strong as the three above). Computed
  segment by segment with Fenwick trees over area ranks, O(n log n). `lb_count_direct` is
  the slow reference definition, for tests.
* `polymatroid_lp`: the polymatroid LP of item 5, by cutting planes with HiGHS (scipy).
* `exact_optimum`: the time-indexed IP of item 6 for tiny instances. It is
  `kvsched.bounds.ip.solve_ip` on an `Instance` with every arrival 0 (one model builder).

Every function validates its input (equal lengths, `s_i >= 0`, `o_i >= 1`,
`s_i + o_i <= M`) and raises a `ValueError` naming the index and the field. All closed-form
bounds use exact integer arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from kvsched.bounds.instance import Instance
from kvsched.bounds.ip import solve_ip
from kvsched.bounds.results import IPResult
from kvsched.bounds.volume import _volume_bound_arrays, request_volumes

LARGE_MEMORY_EPS = 0.05  # Ambiguity 6: label a run "large-memory" when eps <= 0.05

Regime = Literal["large-memory", "general"]


# ---------------------------------------------------------------------- validation
def _int_array(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":  # accept whole-number floats (e.g. a pandas column), never round
        frac = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if frac.size:
            i = int(frac[0])
            raise TypeError(f"request index {i}: {name} must be a whole number, got {float(arr[i])!r}")
        return arr.astype(np.int64)
    for i, v in enumerate(arr.tolist()):
        # bool is an int subclass but almost certainly a bug here; floats are rejected, not rounded.
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise TypeError(f"request index {i}: {name} must be an int, got {v!r} ({type(v).__name__})")
    return arr.astype(np.int64)  # an object array of ints


def _validate(prompt_len: ArrayLike, output_len: ArrayLike, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """`(s, o, M)` as int64 arrays and a Python int, or a ValueError naming the index and field."""
    if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer):
        raise TypeError(f"capacity must be an int, got {capacity!r}")
    m = int(capacity)
    if m < 1:
        raise ValueError(f"capacity must be >= 1, got {m}")
    s = _int_array(prompt_len, "prompt_len")
    o = _int_array(output_len, "output_len")
    if s.size != o.size:
        raise ValueError(f"prompt_len and output_len must have equal lengths, got {s.size} and {o.size}")
    bad = np.flatnonzero(s < 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"request index {i}: prompt_len must be >= 0, got {int(s[i])}")
    bad = np.flatnonzero(o < 1)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"request index {i}: output_len must be >= 1, got {int(o[i])}")
    bad = np.flatnonzero(s + o > m)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"request index {i}: prompt_len + output_len = {int(s[i] + o[i])} exceeds capacity {m}, "
            "so it can never complete (drop or clip it, docs/gsa.md)"
        )
    return s, o, m


# ---------------------------------------------------------------------- closed forms
def kv_areas(prompt_len: ArrayLike, output_len: ArrayLike) -> np.ndarray:
    """`a_i = s_i o_i + o_i (o_i + 1) / 2` (int64): memory-time area of one uninterrupted run."""
    return request_volumes(np.asarray(prompt_len, dtype=np.int64), np.asarray(output_len, dtype=np.int64))


def lb_len(prompt_len: ArrayLike, output_len: ArrayLike, capacity: int) -> int:
    """Length bound `sum_i o_i` (section 10, item 1): `C_i >= o_i`."""
    _, o, _ = _validate(prompt_len, output_len, capacity)
    return int(o.sum())


def _area_rounds(s: np.ndarray, o: np.ndarray, m: int) -> np.ndarray:
    """`ceil(Q_k / M)` for k = 1..n, exact."""
    prefix = np.cumsum(np.sort(request_volumes(s, o)))
    return -(-prefix // m)


def lb_area(prompt_len: ArrayLike, output_len: ArrayLike, capacity: int) -> int:
    """Area bound `sum_k ceil(Q_k / M)` (item 2): at most `M` units of area per step."""
    s, o, m = _validate(prompt_len, output_len, capacity)
    return int(_area_rounds(s, o, m).sum())


def lb_mix(prompt_len: ArrayLike, output_len: ArrayLike, capacity: int) -> int:
    """Mixed order-statistic bound `sum_k max(o_(k), ceil(Q_k / M))` (item 3).

    This is LB_vol (docs/bounds.md) with every arrival at 0, so it is computed by the same
    code (`kvsched.bounds.volume`).
    """
    s, o, m = _validate(prompt_len, output_len, capacity)
    return _volume_bound_arrays(np.zeros_like(s), s, o, m)


def lb_count(prompt_len: ArrayLike, output_len: ArrayLike, capacity: int) -> int:
    """Counting bound `sum_{t>=0} (n - N*(t))` (item 4), by a segment algorithm.

    `N*(t)` = the most jobs with `o_i <= t` whose areas sum to at most `M t`: take the
    eligible jobs in ascending area. It only changes at the distinct `o_i` (new jobs become
    eligible) and at `ceil((S + next area) / M)` (the next eligible area fits), so the sum
    is taken segment by segment. Eligible areas live in two Fenwick trees (count and sum)
    indexed by area rank; each breakpoint costs O(log n), and there are at most
    (distinct `o_i`) + n of them, since `N*` grows by at least one at every area breakpoint.
    """
    s, o, m = _validate(prompt_len, output_len, capacity)
    n = int(s.size)
    if n == 0:
        return 0
    areas = request_volumes(s, o)
    by_area = np.argsort(areas, kind="stable")  # rank -> job
    rank = np.empty(n, dtype=np.int64)
    rank[by_area] = np.arange(n, dtype=np.int64)
    by_o = np.argsort(o, kind="stable")
    o_sorted: list[int] = o[by_o].tolist()
    rank_by_o: list[int] = rank[by_o].tolist()
    area_by_rank: list[int] = areas[by_area].tolist()

    cnt = [0] * (n + 1)  # Fenwick trees, 1-based over ranks
    tot = [0] * (n + 1)
    top = 1 << (n.bit_length() - 1)  # largest power of two <= n

    p = 0  # jobs of by_o inserted so far (= eligible jobs)
    t = 0
    total = 0
    while True:
        while p < n and o_sorted[p] <= t:
            r = rank_by_o[p]
            a = area_by_rank[r]
            i = r + 1
            while i <= n:
                cnt[i] += 1
                tot[i] += a
                i += i & -i
            p += 1
        # Largest rank prefix whose inserted areas sum to <= M t (binary lifting). Ranks
        # not yet inserted add 0, and every area is >= 1, so rank `pos` (0-based) is the
        # (N+1)-th smallest eligible area whenever N < p.
        budget = m * t
        pos = 0
        big_n = 0
        big_s = 0
        step = top
        while step:
            nxt = pos + step
            if nxt <= n and big_s + tot[nxt] <= budget:
                pos = nxt
                big_s += tot[nxt]
                big_n += cnt[nxt]
            step >>= 1
        if big_n == n:
            return total
        t_next = o_sorted[p] if p < n else math.inf
        if big_n < p:
            t_next = min(t_next, -(-(big_s + area_by_rank[pos]) // m))
        if not t_next > t:  # both breakpoints lie after t by construction; never loop forever
            raise AssertionError(f"lb_count: no progress at t = {t} (N = {big_n}, eligible = {p})")
        total += (n - big_n) * (t_next - t)
        t = int(t_next)


def lb_count_direct(prompt_len: ArrayLike, output_len: ArrayLike, capacity: int) -> int:
    """The reference definition of `lb_count`: evaluate `N*(t)` at every `t` directly.

    O(T n log n) with T about `max(max o, sum a / M)`; for tests only.
    """
    s, o, m = _validate(prompt_len, output_len, capacity)
    n = int(s.size)
    areas = request_volumes(s, o)
    total = 0
    t = 0
    while True:
        eligible = np.sort(areas[o <= t])
        big_n = int(np.searchsorted(np.cumsum(eligible), m * t, side="right"))
        if big_n == n:
            return total
        total += n - big_n
        t += 1


# ---------------------------------------------------------------------- polymatroid LP
@dataclass(frozen=True, slots=True)
class PolymatroidLPResult:
    """Outcome of `polymatroid_lp`.

    `value` is the optimum of the LP with the cuts added so far. Every cut is a valid
    constraint, so `value` is a lower bound on OPT even when `converged` is False (up to
    the LP solver's tolerances); when `converged`, it is the polymatroid LP's optimum.
    """

    value: float
    cuts: int  # set constraints in the final LP (the full set included)
    iterations: int  # LP solves
    converged: bool  # no prefix constraint violated beyond the tolerance
    max_violation: float  # largest relative prefix violation at the final solution


def _polymatroid_rhs(p_sum: float, p_sq_sum: float) -> float:
    return 0.5 * (p_sum * p_sum + p_sq_sum)


def polymatroid_lp(
    prompt_len: ArrayLike,
    output_len: ArrayLike,
    capacity: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-7,
) -> PolymatroidLPResult:
    """The polymatroid LP of section 10, item 5, by cutting planes (scipy linprog, HiGHS).

    With `p_i = a_i / M`: minimise `sum C_i` subject to `C_i >= o_i` and, for every set `S`,
    `sum_S p_i C_i >= 1/2 [(sum_S p_i)^2 + sum_S p_i^2]`. Starts from the full-set
    constraint; each round sorts the jobs by the current `C_i` (ties: larger `p_i` first),
    checks every prefix, and adds the most violated one. Stops when no prefix is violated by
    more than `tol` relative to its right-hand side, or after `max_iter` LP solves.

    Jobs with the same `(a_i, o_i)` share one variable. This does not change the optimum:
    the LP is convex and symmetric in such jobs, so averaging an optimal solution over them
    gives a symmetric optimal one. It keeps cutting planes from chasing the many
    equivalent vertices of identical jobs (600 identical jobs: one cut instead of
    hundreds). With equal `C` and `p` the violation of a prefix is convex in how many of
    the class it holds, so checking prefixes at class boundaries is exact.
    """
    from scipy.optimize import linprog

    s, o, m = _validate(prompt_len, output_len, capacity)
    if s.size == 0:
        return PolymatroidLPResult(0.0, 0, 0, True, 0.0)
    classes, count = np.unique(np.stack([request_volumes(s, o), o], axis=1), axis=0, return_counts=True)
    k_cls = int(count.size)
    p = classes[:, 0].astype(np.float64) / m
    w = count.astype(np.float64)  # class sizes
    wp = w * p  # coefficient of C_c in a cut holding the whole class
    wpp = w * p * p
    bounds = list(zip(classes[:, 1].astype(np.float64).tolist(), [None] * k_cls, strict=True))
    rows: list[np.ndarray] = [-wp]
    rhs: list[float] = [-_polymatroid_rhs(float(wp.sum()), float(wpp.sum()))]
    seen: set[bytes] = {np.ones(k_cls, dtype=bool).tobytes()}
    value = math.nan
    worst = math.inf
    converged = False
    iterations = 0
    while iterations < max_iter:
        res = linprog(w, A_ub=np.vstack(rows), b_ub=np.asarray(rhs), bounds=bounds, method="highs")
        iterations += 1
        if res.status != 0:
            raise RuntimeError(f"polymatroid LP: linprog failed at iteration {iterations}: {res.message}")
        x = np.asarray(res.x, dtype=np.float64)
        value = float(res.fun)
        order = np.lexsort((-p, x))  # by C ascending, larger p first among ties
        lhs = np.cumsum(wp[order] * x[order])
        need = 0.5 * (np.cumsum(wp[order]) ** 2 + np.cumsum(wpp[order]))
        rel = (need - lhs) / np.maximum(1.0, need)
        k = int(np.argmax(rel))
        worst = float(rel[k])
        if worst <= tol:
            converged = True
            break
        members = np.zeros(k_cls, dtype=bool)
        members[order[: k + 1]] = True
        key = members.tobytes()
        if key in seen:  # the solver's tolerance, not a new cut: nothing more to add
            converged = worst <= 1e3 * tol
            break
        seen.add(key)
        rows.append(-np.where(members, wp, 0.0))
        rhs.append(-float(need[k]))
    return PolymatroidLPResult(value, len(rows), iterations, converged, max(worst, 0.0))


# ---------------------------------------------------------------------- summary
def batch_bounds(
    prompt_len: ArrayLike, output_len: ArrayLike, capacity: int, *, lp: bool = False
) -> dict[str, int | float]:
    """`{"lb_len", "lb_area", "lb_mix", "lb_count"}` (and `"lb_polymatroid"` when `lp`)."""
    s, o, m = _validate(prompt_len, output_len, capacity)
    out: dict[str, int | float] = {
        "lb_len": lb_len(s, o, m),
        "lb_area": lb_area(s, o, m),
        "lb_mix": lb_mix(s, o, m),
        "lb_count": lb_count(s, o, m),
    }
    if lp:
        out["lb_polymatroid"] = polymatroid_lp(s, o, m).value
    return out


def job_size_ratio(prompt_len: ArrayLike, output_len: ArrayLike, capacity: int) -> float:
    """`eps = max_i (s_i + o_i) / M`, the large-memory parameter (docs/gsa.md); 0.0 for no jobs."""
    s, o, m = _validate(prompt_len, output_len, capacity)
    return float((s + o).max()) / m if s.size else 0.0


def regime(eps: float) -> Regime:
    """`"large-memory"` if `eps <= 0.05`, else `"general"` (docs/gsa.md)."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return "large-memory" if eps <= LARGE_MEMORY_EPS else "general"


# ---------------------------------------------------------------------- exact optimum
def batch_instance(prompt_len: ArrayLike, output_len: ArrayLike, capacity: int) -> Instance:
    """The `Instance` of a batch: every arrival 0, ids `0..n-1`."""
    s, o, m = _validate(prompt_len, output_len, capacity)
    return Instance((0,) * int(s.size), tuple(s.tolist()), tuple(o.tolist()), m)


def exact_optimum(
    prompt_len: ArrayLike,
    output_len: ArrayLike,
    capacity: int,
    *,
    time_limit_s: float | None = 60.0,
    incumbent_starts: Sequence[int] | None = None,
    **ip_options: object,
) -> IPResult:
    """Exact `min sum C_i` for tiny instances: the time-indexed IP of section 10, item 6.

    This is `kvsched.bounds.ip.solve_ip` on `batch_instance(...)` (all arrivals 0), so the
    model, warm start (`incumbent_starts`, e.g. GBA's start steps) and horizon logic are
    shared with the MC-SF IP. The optimum is `result.objective`, proven when
    `result.status == "optimal"`; otherwise `[result.lower_bound, result.upper_bound]` is
    the honest interval. `ip_options` are further `IPOptions` fields. Raises
    `SolverUnavailable` without a MIP solver; `Instance` needs `capacity >= 2`.
    """
    inst = batch_instance(prompt_len, output_len, capacity)
    return solve_ip(inst, time_limit_s=time_limit_s, incumbent_starts=incumbent_starts, **ip_options)
