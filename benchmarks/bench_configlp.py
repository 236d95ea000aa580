"""Configuration LP (Dantzig-Wolfe per epoch) for the hindsight TEL: how much of the LP's gap it closes.

    python benchmarks/bench_configlp.py --size medium --model 2 --instances 5        # known optima
    python benchmarks/bench_configlp.py --size small --model 1 2 --instances 5 --cg  # + column generation
    python benchmarks/bench_configlp.py --size paper --model 2 --first 2 --instances 1 --method cg --time-limit 150

The measured answer (docs/bounds.md, "The configuration LP"): on medium instances with
n >= 9 it closes 3-14 % of the gap between the LP with threshold cuts and the optimum,
less than the chain rows, so it is not part of `kvsched.bounds`; at paper size none of
the three methods below finishes in a few minutes.

Issue 19 asks whether a configuration LP beats the time-indexed LP relaxation of the
MC-SF paper's hindsight IP. The model (theory mode: a start at `p` holds `s + t - p` at
epochs `p+1..p+o`):

* `x[i,p] >= 0`, `sum_p x[i,p] = 1`, cost `p + o_i - a_i`;
* per epoch `tau` a convex combination `lambda[tau,S]` (`sum_S lambda <= 1`, the empty
  configuration implicit) of configurations `S`: sets of `(request, age)` pairs, at most
  one age per request, `sum (s_i + age) <= M`;
* linking `sum_{S contains (i,a)} lambda[tau,S] >= x[i, tau - a]`. The `>=` form is
  equivalent to `=`: configurations are closed under taking subsets, so the convex hull
  is down-monotone and any cover `>= x` can be thinned to `= x`.

So the configuration LP is the time-indexed LP with each epoch's memory row replaced by
the convex hull of that epoch's multiple-choice knapsack (it contains every per-epoch
cut: threshold, cover, clique). Three ways to compute it:

* `config_lp_flow`: compact and exact, each epoch's hull as a unit flow through the
  knapsack's DP network (HiGHS interior point);
* `config_lp`: column generation, pricing one exact multiple-choice knapsack DP per epoch
  (all epochs at once in numpy), optionally smoothed around the LP's prices;
* `lagrangian_ascent`: subgradient steps on the bound below, from the LP's prices.

The bound used is never the restricted master's value but the Lagrangian one: for any
prices `pi[i,a,tau] >= 0` on the linking rows,

    L(pi) = sum_i min_{p >= a_i} [p + o_i - a_i + sum_a pi[i,a,p+a]] - sum_tau K_tau(pi)

with `K_tau` the knapsack's best profit at `tau`. Relaxing the linking rows with
non-negative multipliers gives it (weak duality), for every start `p >= a_i` (prices past
the modelled horizon are 0), so it holds with any horizon in the master and at any
iteration. `lagrangian_config_bound` recomputes it from the prices alone (pure numpy DP).

Results go to benchmarks/results/bench_configlp.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvsched.bounds import Instance, best_greedy_starts, evaluate_starts, greedy_starts, solve_ip, solve_lp
from kvsched.bounds.chain import chain_bound
from kvsched.bounds.volume import volume_bound
from kvsched.experiments.mcsf_instances import instance_rng, model1_instance, model2_instance

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_ip import heuristic_starts
from bench_ip import make_instance as bench_ip_instance

DEFAULT_OUT = HERE / "results" / "bench_configlp.json"
# Larger capacities than bench_ip's medium family (the n ~ 10-20, M ~ 15-30).
WIDE = {1: {"capacity_range": (15, 30), "n_range": (10, 14), "prompt_max": 3},
        2: {"capacity_range": (15, 30), "epochs_range": (6, 9), "prompt_max": 3}}


def make_instance(model: int, seed: int, index: int, size: str) -> Instance:
    if size != "wide":
        return bench_ip_instance(model, seed, index, size)
    rng = instance_rng(seed, model, index)
    return model1_instance(rng, **WIDE[1]) if model == 1 else model2_instance(rng, **WIDE[2])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pricing
def knapsack_all_epochs(
    prof: list[np.ndarray], s: np.ndarray, o: np.ndarray, capacity: int, want_sets: bool
) -> tuple[np.ndarray, list[list[tuple[int, int]]] | None]:
    """Multiple-choice knapsack at every epoch at once.

    `prof[i]` has shape (T, o_i): the profit of request i at age a+1 in epoch row t (<= 0
    means "not available"). Returns the best profit per epoch row (capacity M) and, if
    `want_sets`, the chosen `(i, age)` pairs per row.
    """
    n_t = prof[0].shape[0] if prof else 0
    m = capacity
    f = np.zeros((n_t, m + 1))
    choices: list[tuple[int, np.ndarray]] = []
    for i, p in enumerate(prof):
        useful = np.flatnonzero((p > 1e-12).any(axis=0))
        if useful.size == 0:
            continue
        g = f.copy()
        ch = np.zeros((n_t, m + 1), dtype=np.int16) if want_sets else None
        for a0 in useful:
            w = int(s[i]) + int(a0) + 1
            if w > m:
                continue
            cand = f[:, : m + 1 - w] + p[:, a0][:, None]
            better = cand > g[:, w:] + 1e-12
            g[:, w:] = np.where(better, cand, g[:, w:])
            if ch is not None:
                ch[:, w:][better] = a0 + 1
        f = g
        if ch is not None:
            choices.append((i, ch))
    best = f[:, m] if n_t else np.zeros(0)
    if not want_sets:
        return best, None
    sets: list[list[tuple[int, int]]] = [[] for _ in range(n_t)]
    cap = np.full(n_t, m, dtype=np.int64)
    rows = np.arange(n_t)
    for i, ch in reversed(choices):
        age = ch[rows, cap].astype(np.int64)
        for t in np.flatnonzero(age):
            sets[t].append((i, int(age[t])))
        cap = cap - np.where(age > 0, s[i] + age, 0)
    return best, sets


def lagrangian_config_bound(inst: Instance, prices: dict[tuple[int, int, int], float]) -> float:
    """L(pi) for prices `pi[(i, age, tau)] >= 0` (module docstring), from the prices alone."""
    if inst.n == 0:
        return 0.0
    a, s, o = inst.arrays()
    if any(v < 0 or not math.isfinite(v) for v in prices.values()):
        raise ValueError("prices must be finite and >= 0")
    last_tau = max([t for (_, _, t) in prices] + [int(a.max()) + 1])
    n_t = last_tau + 1
    prof = [np.zeros((n_t, int(o[i]))) for i in range(inst.n)]
    for (i, age, tau), v in prices.items():
        prof[i][tau, age - 1] += v
    total = 0.0
    for i in range(inst.n):
        ai, oi = int(a[i]), int(o[i])
        # charged[p] = sum_age prof[i][p + age, age - 1] for p = ai..last_tau (later: 0).
        ps = np.arange(ai, last_tau + 1)
        charged = np.zeros(ps.size)
        for age in range(1, oi + 1):
            t = ps + age
            ok = t < n_t
            charged[ok] += prof[i][t[ok], age - 1]
        cost = ps + oi - ai + charged
        total += float(min(cost.min(), last_tau + 1 + oi - ai))
    best, _ = knapsack_all_epochs(prof, s, o, inst.capacity, want_sets=False)
    return total - float(best.sum())


# --------------------------------------------------------------------------- master
@dataclass
class ConfigLPResult:
    bound: float  # best Lagrangian bound over the iterations (valid)
    master_value: float | None  # restricted master value at the end (a bound only at convergence, safe horizon)
    converged: bool
    iterations: int
    columns: int
    rows: int
    time_s: float
    history: list[tuple[float, float, float]] = field(default_factory=list)  # (time, master, lagrangian)
    prices: dict[tuple[int, int, int], float] | None = None


def config_lp(
    inst: Instance,
    *,
    horizon: np.ndarray | None = None,
    seed_schedules: list[tuple[int, ...]] = (),
    time_limit_s: float = 60.0,
    max_iterations: int = 10_000,
    stop_at: float | None = None,
    keep_prices: bool = False,
    center_prices: np.ndarray | None = None,
    smoothing: float = 0.8,
) -> ConfigLPResult:
    """Column generation for the configuration LP; `horizon[i]` = last start modelled for i."""
    import highspy

    t0 = time.perf_counter()
    a, s, o = inst.arrays()
    n, m = inst.n, inst.capacity
    if horizon is None:
        horizon = np.full(n, inst.safe_horizon(), dtype=np.int64)
    hz = np.maximum(np.asarray(horizon, dtype=np.int64), a)
    scheds = [tuple(int(p) for p in st) for st in seed_schedules] or [best_greedy_starts(inst)]
    for st in scheds:
        hz = np.maximum(hz, np.asarray(st, dtype=np.int64))
    nstart = hz - a + 1
    n_tau = int((hz + o).max()) + 1  # epochs 0..max completion (epoch 0 holds nothing)
    # Rows: assignment [0, n), convexity [n, n + n_tau), linking per request (start, age).
    conv0 = n
    link_base = np.zeros(n + 1, dtype=np.int64)
    link_base[0] = n + n_tau
    link_base[1:] = link_base[0] + np.cumsum(nstart * o)
    n_rows = int(link_base[-1])

    def link_row(i: int, age: int, tau: int) -> int:
        return int(link_base[i] + (tau - age - a[i]) * o[i] + age - 1)

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("presolve", "off")
    h.setOptionValue("simplex_strategy", 4)  # primal: new columns keep the basis primal feasible
    lo = np.concatenate([np.ones(n), np.full(n_tau, -np.inf), np.zeros(n_rows - n - n_tau)])
    up = np.concatenate([np.ones(n), np.ones(n_tau), np.full(n_rows - n - n_tau, np.inf)])
    h.addRows(n_rows, lo, up, 0, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0))
    # x columns: request-major, start-minor.
    starts, idx, val, cost = [0], [], [], []
    for i in range(n):
        for k in range(int(nstart[i])):
            rows = np.concatenate([[i], link_base[i] + k * o[i] + np.arange(o[i])])
            idx.append(rows)
            val.append(np.concatenate([[1.0], -np.ones(int(o[i]))]))
            starts.append(starts[-1] + rows.size)
            cost.append(float(a[i] + k + o[i] - a[i]))
    n_x = len(cost)
    h.addCols(n_x, np.array(cost), np.zeros(n_x), np.full(n_x, np.inf), starts[-1],
              np.array(starts[:-1], dtype=np.int32), np.concatenate(idx).astype(np.int32), np.concatenate(val))
    seen: set[tuple[int, tuple[tuple[int, int], ...]]] = set()

    def add_configs(items: list[tuple[int, list[tuple[int, int]]]]) -> int:
        cs, ci, cv = [0], [], []
        for tau, conf in items:
            key = (tau, tuple(sorted(conf)))
            if key in seen or not conf:
                continue
            seen.add(key)
            rows = [conv0 + tau] + [link_row(i, age, tau) for i, age in conf]
            ci.extend(rows)
            cv.extend([1.0] * len(rows))
            cs.append(len(ci))
        k = len(cs) - 1
        if k:
            h.addCols(k, np.zeros(k), np.zeros(k), np.full(k, np.inf), len(ci),
                      np.array(cs[:-1], dtype=np.int32), np.array(ci, dtype=np.int32), np.array(cv))
        return k

    for st in scheds:
        items = []
        for tau in range(1, n_tau):
            conf = [(i, tau - st[i]) for i in range(n) if st[i] < tau <= st[i] + o[i]]
            items.append((tau, conf))
        add_configs(items)

    def lagrangian(pi_all: np.ndarray, want_sets: bool):
        """L(pi) for prices on the linking rows (vector over rows link_base[0]..), the knapsack
        optimum per epoch and its configurations."""
        prof = []
        first = 0.0
        for i in range(n):
            pi = pi_all[link_base[i] - link_base[0] : link_base[i + 1] - link_base[0]].reshape(int(nstart[i]), int(o[i]))
            table = np.zeros((n_tau, int(o[i])))  # table[tau, age-1] = pi[tau - age - a_i, age - 1]
            k = np.arange(int(nstart[i]))[:, None]
            ages = np.arange(1, int(o[i]) + 1)[None, :]
            table[a[i] + k + ages, ages - 1] = pi
            prof.append(table)
            c = np.arange(int(nstart[i])) + o[i] + pi.sum(axis=1)
            first += float(min(c.min(), nstart[i] + o[i]))  # past the horizon no prices: cost only
        best, sets = knapsack_all_epochs(prof, s, o, m, want_sets=want_sets)
        return first - float(best.sum()), best, sets, prof

    center = None
    best_bound = -math.inf
    best_prof = None
    if center_prices is not None:  # memory prices lambda_t (time-indexed LP): pi = lambda_tau (s_i + age)
        lam = np.zeros(n_tau + 1)
        cp = np.asarray(center_prices, dtype=np.float64)[: n_tau]
        lam[1 : cp.size + 1] = cp
        parts = []
        for i in range(n):
            k = np.arange(int(nstart[i]))[:, None]
            ages = np.arange(1, int(o[i]) + 1)[None, :]
            parts.append((lam[np.minimum(a[i] + k + ages, n_tau)] * (s[i] + ages)).ravel())
        center = np.concatenate(parts)
        best_bound, _, _, best_prof = lagrangian(center, False)
    history: list[tuple[float, float, float]] = []
    it = 0
    converged = False
    master = None
    alpha = smoothing if center is not None else 0.0
    while it < max_iterations:
        it += 1
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            raise RuntimeError(f"master not optimal: {h.modelStatusToString(h.getModelStatus())}")
        master = h.getInfo().objective_function_value
        dual = np.asarray(h.getSolution().row_dual)
        nu = np.maximum(0.0, -dual[conv0 : conv0 + n_tau])
        pi_m = np.maximum(0.0, dual[link_base[0] :])
        pi_sep = pi_m if center is None or alpha == 0 else alpha * center + (1 - alpha) * pi_m
        lag, _best, sets, prof = lagrangian(pi_sep, True)
        if lag > best_bound:
            best_bound, best_prof = lag, prof
        if center is not None and lag >= best_bound - 1e-12:
            center = pi_sep
        history.append((time.perf_counter() - t0, master, best_bound))
        if master - best_bound < 1e-6 * max(1.0, abs(master)):
            converged = True
            break
        # Add the configurations that price out at the master's own duals.
        new = []
        for tau in range(1, n_tau):
            if sets[tau]:
                rc = float(sum(pi_m[link_row(i, age, tau) - link_base[0]] for i, age in sets[tau])) - nu[tau]
                if rc > 1e-9:
                    new.append((tau, sets[tau]))
        if stop_at is not None and best_bound >= stop_at:
            break
        if time.perf_counter() - t0 > time_limit_s:
            break
        if not new or add_configs(new) == 0:
            if alpha == 0:
                converged = True  # nothing prices out at the master's duals: the master is optimal
                break
            alpha = 0.0  # mispricing: price at the master's duals next time
            center = pi_m if center is None else center
            continue
        alpha = smoothing if center is not None else 0.0
    best_prices = None
    if keep_prices and best_prof is not None:
        best_prices = {}
        for i in range(n):
            for tau, a0 in np.argwhere(best_prof[i] > 0):
                best_prices[(i, int(a0) + 1, int(tau))] = float(best_prof[i][tau, a0])
    return ConfigLPResult(best_bound, master, converged, it, h.getNumCol() - n_x, n_rows,
                          time.perf_counter() - t0, history, best_prices)


# --------------------------------------------------------------------------- compact (flow) form
def config_lp_flow(inst: Instance, *, horizon: np.ndarray | None = None, time_limit_s: float = 120.0,
                   chain_rows: int = 0, solver: str = "choose") -> tuple[float | None, str, float, int, dict | None]:
    """The same configuration LP, compactly: each epoch's knapsack hull as a unit flow through
    its DP network (layers = requests, nodes = memory used so far, an arc per (skip | age)).
    Path polytopes of a DAG are integral, so the projection of the flows onto the arc labels
    is exactly the convex hull of the configurations. Returns (value, status, time, columns,
    prices) with prices = the linking rows' duals, re-checkable by `lagrangian_config_bound`.
    """
    import highspy
    from scipy.sparse import coo_matrix

    a, s, o = inst.arrays()
    n, m = inst.n, inst.capacity
    if horizon is None:
        horizon = np.full(n, inst.safe_horizon(), dtype=np.int64)
    hz = np.maximum(np.asarray(horizon, dtype=np.int64), a)
    nstart = hz - a + 1
    n_tau = int((hz + o).max()) + 1
    # x columns
    x_first = np.concatenate([[0], np.cumsum(nstart)])
    n_x = int(x_first[-1])
    r_i, c_i, v_i = [], [], []  # triplets
    row_lo, row_up = [], []
    cost = [float(p) for i in range(n) for p in range(int(o[i]), int(o[i] + nstart[i]))]
    # assignment rows
    for i in range(n):
        cols = np.arange(x_first[i], x_first[i + 1])
        r_i.append(np.full(cols.size, len(row_lo)))
        c_i.append(cols)
        v_i.append(np.ones(cols.size))
        row_lo.append(1.0)
        row_up.append(1.0)
    n_col = n_x
    if chain_rows:  # measurement only: per family and epoch at most one member's tail covers it
        from kvsched.bounds.chain import chain_families

        for fam in chain_families(inst, chain_rows):
            for t in range(1, n_tau):
                cols = []
                for k, hk in zip(fam.members, fam.tail_len, strict=True):
                    lo_p, hi_p = max(int(a[k]), t - int(o[k])), min(int(hz[k]), t - int(o[k]) + hk - 1)
                    cols.extend(range(int(x_first[k]) + lo_p - int(a[k]), int(x_first[k]) + hi_p - int(a[k]) + 1))
                if len(cols) > 1:
                    r_i.append(np.full(len(cols), len(row_lo)))
                    c_i.append(np.array(cols))
                    v_i.append(np.ones(len(cols)))
                    row_lo.append(-np.inf)
                    row_up.append(1.0)
    link_rows: list[tuple[int, int, int, int]] = []  # (row, i, age, tau)
    for tau in range(1, n_tau):
        layers = []
        for i in range(n):
            ages = [age for age in range(1, int(o[i]) + 1) if a[i] <= tau - age <= hz[i] and s[i] + age <= m]
            if ages:
                layers.append((i, ages))
        if not layers:
            continue
        # node (l, c) for l = 0..L, c = 0..m; conservation rows for l = 1..L-1 and a source row at l=0.
        n_l = len(layers)
        node_row0 = len(row_lo)
        # rows: layer 0 only node c=0 with outflow 1 (<= 1: the empty path is the skip chain anyway)
        # conservation: inflow(l, c) - outflow(l, c) = 0 for l = 1..n_l-1; layer n_l is the sink (free).
        for _ in range(n_l - 1):
            for _c in range(m + 1):
                row_lo.append(0.0)
                row_up.append(0.0)
        src_row = len(row_lo)
        row_lo.append(1.0)
        row_up.append(1.0)
        link0 = len(row_lo)
        for i, ages in layers:
            for age in ages:
                link_rows.append((len(row_lo), i, age, tau))
                row_lo.append(0.0)
                row_up.append(np.inf)
                # - x[i, tau - age]
                r_i.append(np.array([len(row_lo) - 1]))
                c_i.append(np.array([x_first[i] + tau - age - a[i]]))
                v_i.append(np.array([-1.0]))
        link_of = {}
        k = link0
        for i, ages in layers:
            for age in ages:
                link_of[(i, age)] = k
                k += 1
        for li, (i, ages) in enumerate(layers):
            cs = np.arange(m + 1) if li else np.array([0])
            for w_age in [0, *ages]:
                w = 0 if w_age == 0 else int(s[i]) + w_age
                cc = cs[cs + w <= m]
                if cc.size == 0:
                    continue
                cols = n_col + np.arange(cc.size)
                n_col += cc.size
                # outflow from (li, c): -1 on the conservation row of layer li (or the source row)
                if li == 0:
                    r_i.append(np.full(cc.size, src_row))
                    v_i.append(np.ones(cc.size))
                else:
                    r_i.append(node_row0 + (li - 1) * (m + 1) + cc)
                    v_i.append(-np.ones(cc.size))
                c_i.append(cols)
                if li + 1 < n_l:  # inflow into (li+1, c+w)
                    r_i.append(node_row0 + li * (m + 1) + cc + w)
                    c_i.append(cols)
                    v_i.append(np.ones(cc.size))
                if w_age:
                    r_i.append(np.full(cc.size, link_of[(i, w_age)]))
                    c_i.append(cols)
                    v_i.append(np.ones(cc.size))
                cost.extend([0.0] * cc.size)
    mat = coo_matrix((np.concatenate(v_i), (np.concatenate(r_i), np.concatenate(c_i))),
                     shape=(len(row_lo), n_col)).tocsc()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("solver", solver)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n_col, len(row_lo)
    lp.col_cost_ = np.array(cost)
    lp.col_lower_ = np.zeros(n_col)
    lp.col_upper_ = np.full(n_col, np.inf)
    lp.row_lower_ = np.array(row_lo)
    lp.row_upper_ = np.array(row_up)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n_col, len(row_lo)
    lp.a_matrix_.start_ = mat.indptr.astype(np.int32)
    lp.a_matrix_.index_ = mat.indices.astype(np.int32)
    lp.a_matrix_.value_ = mat.data
    h.passModel(lp)
    t0 = time.perf_counter()
    h.run()
    el = time.perf_counter() - t0
    st = h.getModelStatus()
    dual = np.asarray(h.getSolution().row_dual)
    prices = None
    if dual.size == len(row_lo) and np.all(np.isfinite(dual)):
        # Any non-negative prices give a valid Lagrangian bound, even from an unfinished solve.
        prices = {(i, age, tau): float(dual[r]) for r, i, age, tau in link_rows if dual[r] > 1e-12}
    if st != highspy.HighsModelStatus.kOptimal:
        return None, h.modelStatusToString(st), el, n_col, prices
    return h.getInfo().objective_function_value, "optimal", el, n_col, prices


# --------------------------------------------------------------------------- ascent (paper size)
def lagrangian_ascent(inst: Instance, *, upper: float, time_limit_s: float = 150.0,
                      lp_time_limit_s: float = 120.0, theta0: float = 0.1, patience: int = 15) -> dict:
    """Subgradient ascent on L(pi) from the time-indexed LP's prices (paper size, where the
    compact form and column generation are too large): `pi[i,a,tau] = lambda_tau (s_i + a)`
    gives exactly the LP's Lagrangian bound (a knapsack of weights `s + a` earns at most
    `M lambda_tau`), and every later iterate is a valid bound too; the best is kept. Polyak
    steps towards `upper` (a schedule's TEL)."""
    t0 = time.perf_counter()
    a, s, o = inst.arrays()
    n, m = inst.n, inst.capacity
    lp = solve_lp(inst, threshold_cuts=0, time_limit_s=lp_time_limit_s)
    lam = np.asarray(lp.memory_prices)
    lp_time = time.perf_counter() - t0
    n_tau = lam.size + 1
    prof = []
    diag = []  # per request: (starts p, row index p + age) for the start-cost term
    for i in range(n):
        ages = np.arange(1, int(o[i]) + 1)
        tab = np.zeros((n_tau, int(o[i])))
        taus = np.arange(n_tau)[:, None]
        ok = (taus - ages[None, :] >= a[i]) & (taus >= 1)
        tab[:] = np.where(ok, lam[np.maximum(taus - 1, 0)] * (s[i] + ages[None, :]), 0.0)
        prof.append(tab)
        ps = np.arange(int(a[i]), n_tau)
        rows = ps[:, None] + ages[None, :]
        diag.append((ps, np.where(rows < n_tau, rows, 0), rows < n_tau, ages - 1))

    def evaluate(want_sets: bool):
        first, starts = 0.0, []
        for i in range(n):
            ps, rows, ok, cols = diag[i]
            charged = np.where(ok, prof[i][rows, cols], 0.0).sum(axis=1)
            cost = ps + o[i] - a[i] + charged
            k = int(np.argmin(cost))
            beyond = n_tau + o[i] - a[i]
            if cost[k] <= beyond:
                first += float(cost[k])
                starts.append(int(ps[k]))
            else:
                first += float(beyond)
                starts.append(n_tau)
        best, sets = knapsack_all_epochs(prof, s, o, m, want_sets=want_sets)
        return first - float(best.sum()), starts, sets

    value, starts, sets = evaluate(True)
    start_value = value
    best_value, best_prof = value, [p.copy() for p in prof]
    theta, since = theta0, 0
    history = [(time.perf_counter() - t0, value)]
    it = 0
    while time.perf_counter() - t0 < time_limit_s:
        it += 1
        grad = [np.zeros_like(p) for p in prof]
        for i, p0 in enumerate(starts):
            ages = np.arange(1, int(o[i]) + 1)
            r = p0 + ages
            ok = r < n_tau
            grad[i][r[ok], ages[ok] - 1] += 1.0
        for tau, conf in enumerate(sets or []):
            for i, age in conf:
                grad[i][tau, age - 1] -= 1.0
        for i in range(n):  # projected: a price at 0 with a negative subgradient stays at 0
            grad[i][(prof[i] <= 0) & (grad[i] < 0)] = 0.0
        norm2 = sum(float((g * g).sum()) for g in grad)
        if norm2 == 0:
            break
        step = theta * (upper - value) / norm2
        for i in range(n):
            prof[i] = np.maximum(0.0, prof[i] + step * grad[i])
            prof[i][: int(a[i]) + 1] = 0.0  # no start before the arrival
        value, starts, sets = evaluate(True)
        history.append((time.perf_counter() - t0, value))
        if value > best_value + 1e-9:
            best_value, best_prof, since = value, [p.copy() for p in prof], 0
        else:
            since += 1
            if since >= patience:  # smaller steps from the best point so far
                theta, since = theta / 2, 0
                prof = [p.copy() for p in best_prof]
                value, starts, sets = evaluate(True)
    prices = {}
    for i in range(n):
        for tau, a0 in np.argwhere(best_prof[i] > 0):
            prices[(i, int(a0) + 1, int(tau))] = float(best_prof[i][tau, a0])
    certified = lagrangian_config_bound(inst, prices)
    return {"lp": lp.value, "lp_certified": lp.certified_value, "lp_time_s": lp_time, "start": start_value,
            "best": best_value, "certified": certified, "iterations": it, "time_s": time.perf_counter() - t0,
            "history": history[:: max(1, len(history) // 50)]}


# --------------------------------------------------------------------------- benchmark
def small_row(model: int, index: int, args: argparse.Namespace) -> dict:
    """Every bound of one instance small enough for the compact configuration LP."""
    inst = make_instance(model, args.seed, index, args.size)
    src, warm = heuristic_starts(inst)
    warm_tel, _ = evaluate_starts(inst, warm)
    row: dict = {"model": model, "instance": index, "n": inst.n, "capacity": inst.capacity, "heuristic": src,
                 "heuristic_tel": warm_tel, "volume": volume_bound(inst), "chain": chain_bound(inst)}
    for name, thr, ch in (("lp", 0, 0), ("lp_threshold1", 1, 0), ("lp_chain3", 1, 3)):
        row[name] = solve_lp(inst, threshold_cuts=thr, chain_cuts=ch, time_limit_s=120).value
    v, status, el, ncol, prices = config_lp_flow(inst, time_limit_s=args.time_limit, solver="ipm")
    row.update(config_lp=v, config_status=status, config_time_s=el, config_columns=ncol,
               config_certified=None if prices is None else lagrangian_config_bound(inst, prices))
    v3, _, el3, _, _ = config_lp_flow(inst, time_limit_s=args.time_limit, solver="ipm", chain_rows=3)
    row.update(config_chain3=v3, config_chain3_time_s=el3)
    if args.cg:
        scheds = [warm, greedy_starts(inst, "shortest"), greedy_starts(inst, "arrival")]
        cg = config_lp(inst, seed_schedules=scheds, time_limit_s=args.time_limit)
        row.update(cg_bound=cg.bound, cg_master=cg.master_value, cg_converged=cg.converged,
                   cg_iterations=cg.iterations, cg_time_s=cg.time_s)
    ip = solve_ip(inst, incumbent_starts=warm, time_limit_s=args.ip_time_limit)
    row.update(optimum=ip.objective if ip.status == "optimal" else None, ip_lower=ip.lower_bound,
               best_upper=ip.objective)
    return row


def fmt(v: float | None, ref: float) -> str:
    return "-" if v is None else f"{v / ref:.3f}"


def paper_row(model: int, index: int, args: argparse.Namespace) -> dict:
    """Paper size, one `--method`: `ascent` (subgradient on L from the LP's prices, valid at every
    iterate), `cg` (column generation centred on the LP's prices; its restricted master value
    is an upper limit on the configuration LP, since fewer columns and a shorter horizon only
    raise it) or `flow` (the compact form on the starts that complete by MC-SF's makespan;
    its value is again an upper limit, its duals a valid bound). All three stay within
    `--time-limit`."""
    inst = make_instance(model, args.seed, index, args.size)
    src, warm = heuristic_starts(inst)
    tel, _ = evaluate_starts(inst, warm)
    row: dict = {"model": model, "instance": index, "n": inst.n, "capacity": inst.capacity, "heuristic": src,
                 "heuristic_tel": tel, "volume": volume_bound(inst), "chain": chain_bound(inst), "method": args.method}
    mk = max(p + oo for p, oo in zip(warm, inst.output_len, strict=True))
    if args.method == "ascent":
        asc = lagrangian_ascent(inst, upper=tel, time_limit_s=args.time_limit)
        row.update({f"ascent_{k}": v for k, v in asc.items()})
        what = (f"LP {asc['lp'] / tel:.3f} ({asc['lp_certified']:.1f}) ascent {asc['certified'] / tel:.3f} "
                f"({asc['certified']:.1f}, {asc['iterations']} it, {asc['time_s']:.0f}s)")
    elif args.method == "cg":
        lp = solve_lp(inst, threshold_cuts=0, time_limit_s=args.time_limit)
        scheds = [warm, greedy_starts(inst, "shortest"), greedy_starts(inst, "arrival")]
        cg = config_lp(inst, horizon=np.full(inst.n, mk, dtype=np.int64), seed_schedules=scheds,
                       time_limit_s=args.time_limit, center_prices=np.asarray(lp.memory_prices))
        row.update(lp=lp.value, cg_bound=cg.bound, cg_master=cg.master_value, cg_converged=cg.converged,
                   cg_iterations=cg.iterations, cg_columns=cg.columns, cg_rows=cg.rows, cg_time_s=cg.time_s,
                   cg_history=cg.history[:: max(1, len(cg.history) // 30)])
        what = (f"LP {lp.value / tel:.3f} | CG Lagrangian {cg.bound / tel:.3f} ({cg.bound:.1f}), master (upper limit) "
                f"{cg.master_value / tel:.3f} ({cg.iterations} it, {cg.columns} configurations, {cg.rows} rows, "
                f"converged={cg.converged}, {cg.time_s:.0f}s)")
    else:
        v, status, el, ncol, prices = config_lp_flow(inst, horizon=mk - np.asarray(inst.output_len),
                                                     time_limit_s=args.time_limit, solver="ipm")
        cert = None if prices is None else lagrangian_config_bound(inst, prices)
        row.update(flow_value=v, flow_status=status, flow_time_s=el, flow_columns=ncol, flow_certified=cert)
        what = (f"flow {status} in {el:.0f}s, {ncol:,} columns, value {v}, "
                f"certified {'-' if cert is None else f'{cert:.1f}'}")
    print(f"model {model} #{index} n={inst.n} M={inst.capacity} {src}={tel} LB_vol={row['volume']} "
          f"chain={row['chain']}: {what}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="medium", choices=("paper", "medium", "small", "wide"))
    ap.add_argument("--model", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=60.0, help="per configuration LP")
    ap.add_argument("--ip-time-limit", type=float, default=30.0, help="solve_ip for the optimum")
    ap.add_argument("--cg", action="store_true", help="also run column generation (cross-check of the value)")
    ap.add_argument("--method", choices=("ascent", "cg", "flow"), default="cg", help="paper size only")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    rows = []
    cols = ("volume", "chain", "lp", "lp_threshold1", "config_lp", "lp_chain3", "config_chain3")
    if args.size == "paper":
        rows = [paper_row(model, index, args) for model in args.model
                for index in range(args.first, args.first + args.instances)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
        return 0
    print("ratios to the optimum (to the best upper bound where none is proven): "
          + " ".join(cols) + " | config certified, time", flush=True)
    for model in args.model:
        for index in range(args.first, args.first + args.instances):
            row = small_row(model, index, args)
            rows.append(row)
            ref = row["optimum"] or row["best_upper"]
            cg = f" cg={row['cg_bound']:.2f}/{row['cg_master']:.2f}" if "cg_bound" in row else ""
            print(f"model {model} #{index} n={row['n']} M={row['capacity']} opt={row['optimum']} "
                  f"{row['heuristic']}={row['heuristic_tel']}: " + " ".join(fmt(row[c], ref) for c in cols)
                  + f" | {row['config_certified']} {row['config_time_s']:.1f}s{cg}", flush=True)
    done = [r for r in rows if r["config_lp"] is not None]
    if done:
        def closed(r: dict, base: str, new: str) -> float | None:
            ref = r["optimum"] or r["best_upper"]
            return None if r[new] is None or ref <= r[base] else (r[new] - r[base]) / (ref - r[base])

        for base, new in (("lp", "config_lp"), ("lp_threshold1", "config_lp"), ("lp_chain3", "config_chain3")):
            vals = [c for c in (closed(r, base, new) for r in done) if c is not None]
            print(f"share of the gap {base} -> optimum closed by {new}: mean {statistics.mean(vals):.3f}, "
                  f"max {max(vals):.3f} ({len(vals)} instances)" if vals else f"{base}: no gap")
        for c in cols:
            print(f"mean {c}/optimum: {statistics.mean(r[c] / (r['optimum'] or r['best_upper']) for r in done):.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
