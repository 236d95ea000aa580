"""Hindsight-optimal TEL: the time-indexed IP of the MC-SF paper's hindsight IP and its LP relaxation.

`solve_ip` builds the model (`kvsched.bounds.model`), chooses per-request horizons,
passes an optional warm start, runs HiGHS and turns the answer into an honest
`IPResult`: a status, the best schedule found (replayed and checked in pure Python),
and a proven lower bound.

Horizons (last start epoch per request):

* **safe** (default, the MC-SF paper's hindsight IP): `max a + sum o` for every request;
* **valid tightening** (`tighten_horizon`, needs an incumbent of TEL `U`): any schedule
  with TEL <= U has `p_i <= a_i + U - o_i - LB(others_i)`, LB the best closed-form bound
  on the other requests alone (removing a request only frees memory);
* **heuristic** (`horizon` or `horizon_margin`): shorter, unproven. The answer is then
  proven only if every schedule that starts some request past its horizon is at least as
  bad as the incumbent: `min_i (T_i + 1 + o_i - a_i) + LB(others_i) >= U`. Otherwise the
  status is "bounded" with the honest interval.

TEL is an integer, so the solver's dual bound is rounded up (after a small tolerance for
floating point), and the reported lower bound is never below LB_vol or `sum o`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from kvsched.bounds.chain import chain_bound, chain_families
from kvsched.bounds.instance import Instance, evaluate_starts, makespan
from kvsched.bounds.model import build_model
from kvsched.bounds.results import IPOptions, IPResult, IPStatus, LPResult
from kvsched.bounds.solvers import SolverName, solve_model
from kvsched.bounds.volume import (
    sum_output_bound,
    volume_bound,
    volume_bound_without_each,
)
from kvsched.bounds.waste import waste_bound

logger = logging.getLogger(__name__)

_DUAL_TOL = 1e-6  # relative slack before rounding a float dual bound up to an integer


def _ceil_bound(v: float) -> int:
    return math.ceil(v - _DUAL_TOL * max(1.0, abs(v)))


def others_lower_bounds(inst: Instance) -> np.ndarray:
    """`LB(others_i)`: the best closed-form bound on the TEL of all requests but `i`."""
    total = sum_output_bound(inst)
    return np.maximum(volume_bound_without_each(inst), total - np.asarray(inst.output_len, dtype=np.int64))


def canonical_starts(inst: Instance, starts: Sequence[int]) -> tuple[int, ...]:
    """Swap starts among identical `(a, s, o)` requests so that lower ids start first.
    Identical requests are interchangeable, so feasibility and TEL are unchanged."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i in range(inst.n):
        groups.setdefault((inst.arrival[i], inst.prompt_len[i], inst.output_len[i]), []).append(i)
    out = [int(p) for p in starts]
    for members in groups.values():
        members.sort(key=lambda i: inst.request_ids[i])
        for i, p in zip(members, sorted(out[i] for i in members), strict=True):
            out[i] = p
    return tuple(out)


def _horizons(
    inst: Instance, opts: IPOptions, incumbent_tel: int | None, incumbent_makespan: int | None
) -> tuple[np.ndarray, str, np.ndarray, float]:
    """Per-request horizons, their kind, LB(others) and the bound on schedules beyond them."""
    a, _, o = inst.arrays()
    safe = inst.safe_horizon()
    hz = np.full(inst.n, safe, dtype=np.int64)
    kind = "safe"
    lb_others = others_lower_bounds(inst)
    if opts.tighten_horizon and incumbent_tel is not None:
        valid = a + incumbent_tel - o - lb_others
        if np.any(valid < hz):
            kind = "tightened"
        hz = np.minimum(hz, valid)
    heuristic: int | None = opts.horizon
    if opts.horizon_margin is not None and incumbent_makespan is not None:
        from_margin = incumbent_makespan + int(opts.horizon_margin)
        heuristic = from_margin if heuristic is None else min(heuristic, from_margin)
    cut_by_heuristic = np.zeros(inst.n, dtype=bool)
    if heuristic is not None:
        cut_by_heuristic = heuristic < hz
        if cut_by_heuristic.any():
            kind = "heuristic"
        hz = np.minimum(hz, heuristic)
    hz = np.maximum(hz, a)  # a request must be allowed to start at its arrival
    # Schedules excluded only by the heuristic: request i starts at >= hz_i + 1.
    beyond = np.inf
    if cut_by_heuristic.any():
        beyond = float(np.min((hz + 1 + o - a + lb_others)[cut_by_heuristic]))
    return hz, kind, lb_others, beyond


def initial_incumbent(inst, opts: IPOptions, incumbent_starts, notes: list[str]):
    """(starts, TEL, source) of the schedule a solve starts from: the caller's, else the best
    greedy one when `opts.greedy_incumbent`, else (None, None, None)."""
    if incumbent_starts is not None:
        tel, _ = evaluate_starts(inst, list(incumbent_starts))
        return canonical_starts(inst, incumbent_starts), tel, "warm-start"
    if opts.greedy_incumbent and inst.n:
        from kvsched.bounds.instance import best_greedy_starts

        starts = canonical_starts(inst, best_greedy_starts(inst))
        notes.append("incumbent from best_greedy_starts")
        return starts, evaluate_starts(inst, starts)[0], "warm-start"
    return None, None, None


def solve_ip(
    inst: Instance,
    options: IPOptions | None = None,
    *,
    incumbent_starts: Sequence[int] | None = None,
    **overrides: object,
) -> IPResult:
    """Solve the hindsight IP. Keyword overrides are `IPOptions` fields.

    `incumbent_starts` (per-request start epochs, e.g. from MC-SF) is replayed with
    `evaluate_starts` (raises `InfeasibleSchedule` if it breaks a rule), used as the
    initial upper bound, for horizon tightening, and as the solver's warm start.
    Raises `SolverUnavailable` when neither highspy nor scipy's milp can be imported.
    """
    opts = replace(options or IPOptions(), **overrides)  # type: ignore[arg-type]
    notes: list[str] = []
    lb_vol = volume_bound(inst)
    lb_sum = sum_output_bound(inst)
    lb_chain = chain_bound(inst) if opts.chain_cuts or opts.objective_cut else lb_vol
    lb_waste = waste_bound(inst) if opts.waste_bound else lb_vol

    inc_starts, inc_tel, inc_source = initial_incumbent(inst, opts, incumbent_starts, notes)

    hz, kind, _, beyond = _horizons(
        inst, opts, inc_tel, None if inc_starts is None else makespan(inst, inc_starts)
    )
    model = build_model(
        inst,
        hz,
        aggregate=opts.aggregate,
        cardinality_cuts=opts.cardinality_cuts,
        threshold_cuts=opts.threshold_cuts,
        symmetry_cuts=opts.symmetry_cuts,
        objective_lower_bound=max(lb_vol, lb_chain, lb_waste) if opts.objective_cut else None,
        chain_families=chain_families(inst, opts.chain_cuts),
        formulation=opts.formulation,
    )
    start_x = None if inc_starts is None or not opts.pass_warm_start else model.vector_from_starts(inc_starts)
    if inc_starts is not None and opts.pass_warm_start and start_x is None:
        notes.append("warm start not passed: it starts a request past its horizon")
    out = solve_model(
        model,
        integral=True,
        solver=opts.solver,
        time_limit_s=opts.time_limit_s,
        mip_rel_gap=opts.mip_rel_gap,
        # TEL is integral: once upper - dual < 1 the incumbent is optimal.
        mip_abs_gap=1.0 - 1e-6,
        threads=opts.threads,
        random_seed=opts.random_seed,
        start=start_x,
        heuristic_effort=opts.heuristic_effort,
        presolve=opts.presolve,
        verbose=opts.verbose,
    )

    # Incumbent: the solver's schedule if it replays and beats the warm start.
    if out.x is not None:
        try:
            st = model.starts_from_vector(out.x)
            tel, _ = evaluate_starts(inst, st)
        except ValueError as exc:  # includes InfeasibleSchedule: tolerance trouble in the solver
            notes.append(f"solver solution rejected by replay: {exc}")
            logger.warning("solver solution rejected by replay: %s", exc)
        else:
            if inc_tel is None or tel < inc_tel:
                inc_starts, inc_tel, inc_source = st, tel, "solver"
            elif tel == inc_tel and inc_source == "warm-start":
                inc_starts, inc_source = st, "solver"

    # Lower bound: the solver's bound holds for the model as built; a heuristic horizon
    # only adds the bound on schedules it excluded.
    if out.outcome == "infeasible":
        model_lb = math.inf
    elif out.dual_bound is not None:
        model_lb = float(_ceil_bound(out.dual_bound))
    else:
        model_lb = -math.inf
    if inc_tel is not None and out.outcome == "optimal" and inc_source == "solver":
        model_lb = max(model_lb, float(inc_tel))
    proven = min(model_lb, beyond)
    candidates = [("volume", float(lb_vol)), ("sum-output", float(lb_sum)), ("chain", float(lb_chain)),
                  ("waste", float(lb_waste))]
    if math.isfinite(proven):
        candidates.insert(0, ("ip-dual" if model_lb <= beyond else "horizon-check", proven))
    source, lower = max(candidates, key=lambda kv: kv[1])
    lower_int = int(lower)
    if inc_tel is not None and lower_int > inc_tel:
        # Only solver tolerances can get here; never report a bound above a feasible TEL.
        logger.warning("lower bound %d (%s) exceeds incumbent TEL %d; clamped", lower_int, source, inc_tel)
        notes.append(f"lower bound {lower_int} ({source}) exceeded the incumbent and was clamped")
        lower_int = inc_tel

    if inc_tel is not None and lower_int >= inc_tel:
        status: IPStatus = "optimal"
    elif inc_tel is not None:
        status = "bounded"
    else:
        status = "no-solution"
    horizon_proven = not math.isfinite(beyond) or (inc_tel is not None and beyond >= inc_tel)
    if kind == "heuristic" and not horizon_proven:
        notes.append(
            f"heuristic horizon not proven: schedules past it are only known to have TEL >= {beyond:g}"
        )
    if inc_starts is not None and inc_source == "solver" and (
        kind == "heuristic" or (kind == "safe" and status == "optimal")
    ):
        # A start on a heuristic horizon suggests the horizon binds; on the safe horizon an
        # optimal start there would contradict the MC-SF paper's hindsight IP (A valid tightened horizon may be
        # touched: it keeps every schedule with TEL <= U.)
        touching = [
            inst.request_ids[i] for i in range(inst.n) if inc_starts[i] >= hz[i] > inst.arrival[i]
        ]
        if touching:
            logger.warning("IP starts touch the %s horizon for request ids %s", kind, touching)
            notes.append(f"starts touch the {kind} horizon for request ids {touching}")

    gap = None if inc_tel is None or inc_tel == 0 else (inc_tel - lower_int) / inc_tel
    return IPResult(
        status=status,
        objective=inc_tel,
        lower_bound=lower_int,
        lower_bound_source=source,
        upper_bound=inc_tel,
        gap=gap,
        starts=inc_starts,
        incumbent_source=inc_source,
        horizon=int(hz.max()) if inst.n else 0,
        horizon_kind=kind,
        horizon_proven=horizon_proven,
        dual_bound=out.dual_bound,
        solver_status=out.raw_status,
        solve_time_s=out.solve_time_s,
        solver=out.solver,
        num_vars=model.num_vars,
        num_rows=model.num_rows,
        num_nonzeros=model.num_nonzeros,
        row_counts=model.row_counts,
        options=opts,
        notes=tuple(notes),
        lower_bound_solver={"ip-dual": out.solver, "horizon-check": "kvsched"}.get(source, "closed-form"),
    )


def solve_lp(
    inst: Instance,
    *,
    horizon: int | None = None,
    aggregate: bool = True,
    cardinality_cuts: bool = False,
    threshold_cuts: int = 0,
    chain_cuts: int = 0,
    formulation: str = "dense",
    time_limit_s: float | None = 60.0,
    solver: SolverName = "auto",
    threads: int = 1,
) -> LPResult:
    """LP relaxation (the MC-SF paper's hindsight IP) on the safe horizon unless `horizon` is given.

    Aggregation does not change the LP value (split a class's fractional starts evenly),
    so it is on by default for a smaller model. A shorter `horizon` is a heuristic: the
    LP value is then a bound only for schedules that respect it.
    """
    safe = inst.safe_horizon()
    t = safe if horizon is None else max(int(horizon), 0)
    hz = np.maximum(np.full(inst.n, t, dtype=np.int64), np.asarray(inst.arrival, dtype=np.int64))
    model = build_model(
        inst, hz, aggregate=aggregate, cardinality_cuts=cardinality_cuts, threshold_cuts=threshold_cuts,
        chain_families=chain_families(inst, chain_cuts), formulation=formulation,
    )
    out = solve_model(model, integral=False, solver=solver, time_limit_s=time_limit_s, threads=threads)
    value = out.dual_bound
    prices: tuple[float, ...] = ()
    certified = None
    if out.row_dual is not None and model.memory_row_epoch is not None:
        from kvsched.bounds.certify import lagrangian_bound

        # A <= row of a minimisation has a dual <= 0 in HiGHS; its price is the negation.
        lam = np.zeros(int(model.memory_row_epoch.max(initial=0)))
        mem = model.memory_row_epoch > 0
        lam[model.memory_row_epoch[mem] - 1] = np.maximum(0.0, -out.row_dual[mem])
        prices = tuple(float(v) for v in lam)
        certified = lagrangian_bound(inst, prices)
    return LPResult(
        value=value,
        ceil_value=None if value is None else _ceil_bound(value),
        status=out.raw_status,
        solve_time_s=out.solve_time_s,
        solver=out.solver,
        num_vars=model.num_vars,
        num_rows=model.num_rows,
        num_nonzeros=model.num_nonzeros,
        memory_prices=prices,
        certified_value=certified,
    )
