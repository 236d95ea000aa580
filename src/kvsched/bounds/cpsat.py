"""The hindsight optimum with OR-Tools CP-SAT: one start variable per request, one cumulative.

The model is the MC-SF paper's (a start at `p` holds `s + t - p` memory at epochs
`p+1..p+o` and completes at `p + o`), written without a time index: request `i`'s memory
staircase is the sum of `o_i` intervals rigidly tied to its start `p_i`,

* `[p_i + 1, p_i + o_i]` with demand `s_i + 1` (the prompt plus the first output token),
* `[p_i + k, p_i + o_i]` with demand 1, for `k = 2..o_i` (one more token each epoch),

so at epoch `p_i + j` the request holds `s_i + j`, exactly the IP's coefficient. All
intervals share one cumulative constraint of capacity `M`; the objective is
`sum_i (p_i + o_i - a_i)`. Redundant, valid additions: the objective is at least the best
closed-form bound (and any proven bound the caller passes), identical `(a, s, o)` requests
start in id order (they are interchangeable, so some optimum does), and start domains end
at the valid per-request horizons of `kvsched.bounds.ip` when an incumbent is known.
The incumbent is passed as a solution hint.

CP-SAT finds good schedules fast (large-neighbourhood search) but its lower bound on a
sum of starts under a cumulative is weak at the papers' size (docs/bounds.md has the
numbers); `kvsched.bounds.hindsight.solve_hindsight(method="best")` pairs it with HiGHS.

`ortools` is an optional dependency (`pip install 'kvsched[cpsat]'`), imported only when
a solve starts; without it `SolverUnavailable` says how to install it.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from kvsched.bounds.chain import chain_bound, chain_families
from kvsched.bounds.instance import Instance, evaluate_starts
from kvsched.bounds.results import IPOptions, IPResult, IPStatus
from kvsched.bounds.solvers import SolverUnavailable, native_stdout_to_stderr
from kvsched.bounds.volume import sum_output_bound, volume_bound
from kvsched.bounds.waste import waste_bound

INSTALL_HINT = "OR-Tools CP-SAT is not installed: pip install 'kvsched[cpsat]' (or 'ortools>=9.12,<9.16')"


def cpsat_available() -> bool:
    try:
        return importlib.util.find_spec("ortools") is not None
    except (ImportError, ValueError):
        return False


def _import_cp_model():
    try:
        from ortools.sat.python import cp_model
    except ImportError as exc:
        raise SolverUnavailable(INSTALL_HINT) from exc
    return cp_model


def _identical_groups(inst: Instance) -> list[list[int]]:
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i in range(inst.n):
        groups.setdefault((inst.arrival[i], inst.prompt_len[i], inst.output_len[i]), []).append(i)
    return [sorted(g, key=lambda i: inst.request_ids[i]) for g in groups.values() if len(g) > 1]


def solve_cpsat(
    inst: Instance,
    options: IPOptions | None = None,
    *,
    incumbent_starts: Sequence[int] | None = None,
    known_lower_bound: int | None = None,
    **overrides: object,
) -> IPResult:
    """Solve the hindsight problem with CP-SAT; the answer has `solve_ip`'s shape.

    Uses of `IPOptions`: `time_limit_s`, `threads` (CP-SAT workers; 1 for reproducible,
    single-core figures), `random_seed`, `tighten_horizon`, `greedy_incumbent`,
    `pass_warm_start` (the hint), `aggregate` or `symmetry_cuts` (order identical
    requests), `verbose`. `known_lower_bound`, a bound proven elsewhere (e.g. HiGHS), is
    added as `objective >= bound`; it is the caller's claim and is reported as such.
    """
    from kvsched.bounds.ip import _ceil_bound, _horizons, initial_incumbent

    opts = replace(options or IPOptions(), **overrides)  # type: ignore[arg-type]
    cp_model = _import_cp_model()
    notes: list[str] = []
    lb_vol = volume_bound(inst)
    lb_sum = sum_output_bound(inst)
    a, s, o = inst.arrays()
    const = int((o - a).sum())

    inc_starts, inc_tel, inc_source = initial_incumbent(inst, opts, incumbent_starts, notes)
    hz, kind, _, _ = _horizons(inst, replace(opts, horizon=None, horizon_margin=None), inc_tel, None)

    m = cp_model.CpModel()
    starts = [m.new_int_var(int(a[i]), int(hz[i]), f"p{i}") for i in range(inst.n)]
    intervals, demands = [], []
    for i, p in enumerate(starts):
        oi, si = int(o[i]), int(s[i])
        for k in range(1, oi + 1):
            intervals.append(m.new_fixed_size_interval_var(p + k, oi - k + 1, f"r{i}k{k}"))
            demands.append(si + 1 if k == 1 else 1)
    if intervals:
        m.add_cumulative(intervals, demands, inst.capacity)
    # Completion chains (kvsched.bounds.chain): the members' tails never overlap.
    for fam in chain_families(inst, opts.chain_cuts):
        m.add_no_overlap([
            m.new_fixed_size_interval_var(starts[k] + int(o[k]) - h + 1, h, f"tail{fam.threshold}_{k}")
            for k, h in zip(fam.members, fam.tail_len, strict=True)
        ])
    if opts.aggregate or opts.symmetry_cuts:
        for group in _identical_groups(inst):
            for i, j in itertools.pairwise(group):
                m.add(starts[i] <= starts[j])
    objective = sum(starts) + const if starts else 0
    lb_chain = chain_bound(inst) if opts.chain_cuts else lb_vol
    lb_waste = waste_bound(inst) if opts.waste_bound else lb_vol
    claimed = max(lb_vol, lb_sum, lb_chain, lb_waste, known_lower_bound or 0)
    if starts:
        m.add(objective >= claimed)
        if inc_tel is not None:
            m.add(objective <= inc_tel)  # the incumbent is feasible, so no optimum is cut
        m.minimize(objective)
    if inc_starts is not None and opts.pass_warm_start:
        for p, v in zip(starts, inc_starts, strict=True):
            m.add_hint(p, int(v))

    solver = cp_model.CpSolver()
    prm = solver.parameters
    if opts.time_limit_s is not None:
        prm.max_time_in_seconds = float(opts.time_limit_s)
    prm.num_workers = max(1, int(opts.threads))
    # One worker alone runs only the tree search; interleaving runs CP-SAT's portfolio
    # (LNS, LP-based bounding, restarts) in turns on that one thread, which found much
    # better schedules in our tests (docs/bounds.md).
    prm.interleave_search = prm.num_workers == 1
    prm.random_seed = int(opts.random_seed)
    prm.log_search_progress = bool(opts.verbose)
    prm.log_to_stdout = False  # the log (when verbose) goes to stderr, never to a --json stdout
    t0 = time.perf_counter()
    with native_stdout_to_stderr(quiet=not opts.verbose):
        code = solver.solve(m)
    elapsed = time.perf_counter() - t0
    raw = solver.status_name(code)

    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE) and starts:
        st = tuple(int(solver.value(p)) for p in starts)
        try:
            tel, _ = evaluate_starts(inst, st)
        except ValueError as exc:  # cannot happen for an exact integer model; keep it loud
            notes.append(f"CP-SAT solution rejected by replay: {exc}")
        else:
            if inc_tel is None or tel < inc_tel:
                inc_starts, inc_tel, inc_source = st, tel, "solver"
    # CP-SAT's bound is exact integer arithmetic; the tolerance only guards the float API.
    if code == cp_model.INFEASIBLE:
        # The incumbent satisfies every constraint of the model, so this can only mean a
        # `known_lower_bound` above its TEL: a wrong claim. Prove nothing from it.
        model_lb = -math.inf
        notes.append(f"CP-SAT found the model infeasible (given lower bound {known_lower_bound} vs incumbent "
                     f"{inc_tel}); its bound is ignored")
    elif starts and code in (cp_model.OPTIMAL, cp_model.FEASIBLE, cp_model.UNKNOWN) and math.isfinite(
        solver.best_objective_bound
    ):
        model_lb = float(_ceil_bound(solver.best_objective_bound))
    else:
        model_lb = -math.inf
    if code == cp_model.OPTIMAL and inc_tel is not None:
        model_lb = max(model_lb, float(inc_tel))
    candidates = [("volume", float(lb_vol)), ("sum-output", float(lb_sum)), ("chain", float(lb_chain)),
                  ("waste", float(lb_waste))]
    if math.isfinite(model_lb):
        # Last, so that a tie goes to the closed form: the model states `objective >= LB_vol`,
        # and CP-SAT repeating it proves nothing more.
        candidates.append(("cpsat-bound", model_lb))
    source, lower = max(candidates, key=lambda kv: kv[1])
    if known_lower_bound is not None and source == "cpsat-bound" and model_lb <= known_lower_bound:
        source = "given"  # CP-SAT only repeated the caller's bound
    lower_int = int(lower)
    if inc_tel is not None and lower_int > inc_tel:
        notes.append(f"lower bound {lower_int} ({source}) exceeded the incumbent and was clamped")
        lower_int = inc_tel
    if inc_tel is not None and lower_int >= inc_tel:
        status: IPStatus = "optimal"
    elif inc_tel is not None:
        status = "bounded"
    else:
        status = "no-solution"
    gap = None if inc_tel is None or inc_tel == 0 else (inc_tel - lower_int) / inc_tel
    lb_solver = {"cpsat-bound": "cpsat", "given": "caller"}.get(source, "closed-form")
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
        horizon_proven=True,
        dual_bound=float(solver.best_objective_bound)
        if starts and math.isfinite(solver.best_objective_bound) else None,
        solver_status=raw,
        solve_time_s=elapsed,
        solver="cpsat",
        num_vars=inst.n,
        num_rows=len(intervals),
        num_nonzeros=int(np.sum(o)),
        row_counts={"intervals": len(intervals), "order": sum(len(g) - 1 for g in _identical_groups(inst))},
        options=opts,
        notes=tuple(notes),
        formulation="intervals",
        lower_bound_solver=lb_solver,
    )
