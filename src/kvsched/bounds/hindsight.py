"""One entry point for the hindsight optimum: HiGHS, CP-SAT, or both in turn.

* `"highs"`: `kvsched.bounds.ip.solve_ip`, the MC-SF paper's time-indexed IP (the
  stronger lower bound at the papers' size);
* `"cpsat"`: `kvsched.bounds.cpsat.solve_cpsat`, one start variable per request under a
  cumulative (the better schedules; closes small instances fast);
* `"best"`: HiGHS for most of the time limit (it proves more), then, unless it proved
  optimality, CP-SAT for the rest, started from HiGHS's schedule and given HiGHS's bound;
  the answer keeps the better end of each: the lower upper bound and the higher proven
  lower bound, each with the solver that produced it;
* `"auto"`: `"best"` when OR-Tools is installed, else `"highs"`.

Every answer goes through `kvsched.bounds.certify.check_result` before it is returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from kvsched.bounds.instance import Instance
from kvsched.bounds.results import IPOptions, IPResult, IPStatus

Method = Literal["auto", "highs", "cpsat", "best"]
METHODS: tuple[str, ...] = ("auto", "highs", "cpsat", "best")


def resolve_method(method: str) -> str:
    """`auto` -> `best` with OR-Tools, else `highs`; unknown names raise ValueError."""
    if method not in METHODS:
        raise ValueError(f"unknown solver method {method!r}; use one of {', '.join(METHODS)}")
    if method == "auto":
        from kvsched.bounds.cpsat import cpsat_available

        return "best" if cpsat_available() else "highs"
    return method


def _part(res: IPResult, role: str) -> dict[str, object]:
    return {"role": role, "solver": res.solver, "formulation": res.formulation, "status": res.status,
            "objective": res.objective, "lower_bound": res.lower_bound,
            "lower_bound_source": res.lower_bound_source, "lower_bound_solver": res.lower_bound_solver,
            "solve_time_s": res.solve_time_s, "solver_status": res.solver_status}


def solve_hindsight(
    inst: Instance,
    options: IPOptions | None = None,
    *,
    method: str = "auto",
    incumbent_starts: Sequence[int] | None = None,
    cpsat_share: float = 1 / 3,
    **overrides: object,
) -> IPResult:
    """The hindsight optimum (or a proven interval) by `method`; see the module docstring.

    `time_limit_s` in the options is the total for `"best"`: CP-SAT gets `cpsat_share` of it
    (more if HiGHS stopped early).
    """
    from kvsched.bounds.certify import check_result

    opts = replace(options or IPOptions(), **overrides)  # type: ignore[arg-type]
    how = resolve_method(method)
    if how == "highs":
        from kvsched.bounds.ip import solve_ip

        res = solve_ip(inst, opts, incumbent_starts=incumbent_starts)
        res = replace(res, parts=(_part(res, "all"),))
    elif how == "cpsat":
        from kvsched.bounds.cpsat import solve_cpsat

        res = solve_cpsat(inst, opts, incumbent_starts=incumbent_starts)
        res = replace(res, parts=(_part(res, "all"),))
    else:
        res = _solve_best(inst, opts, incumbent_starts, cpsat_share)
    check_result(inst, res)
    return res


def _solve_best(
    inst: Instance, opts: IPOptions, incumbent_starts: Sequence[int] | None, cpsat_share: float
) -> IPResult:
    from kvsched.bounds.cpsat import solve_cpsat
    from kvsched.bounds.ip import solve_ip

    if not 0 < cpsat_share < 1:
        raise ValueError(f"cpsat_share must be in (0, 1), got {cpsat_share}")
    total = opts.time_limit_s
    # HiGHS first: it is the better prover (docs/bounds.md), and a proof ends the solve.
    hi = solve_ip(inst, replace(opts, time_limit_s=None if total is None else total * (1 - cpsat_share)),
                  incumbent_starts=incumbent_starts)
    if hi.status == "optimal" or hi.starts is None:
        return replace(hi, parts=(_part(hi, "highs"),))
    # CP-SAT for the rest, from HiGHS's schedule and with HiGHS's proven bound as a row, so
    # that a schedule meeting that bound ends the search as proven.
    cp_limit = None if total is None else max(total - hi.solve_time_s, total * cpsat_share)
    cp = solve_cpsat(inst, replace(opts, time_limit_s=cp_limit), incumbent_starts=hi.starts,
                     known_lower_bound=hi.lower_bound)
    hi_from = "highspy" if hi.incumbent_source == "solver" else hi.incumbent_source
    if cp.objective is not None and hi.objective is not None and cp.objective < hi.objective:
        upper, starts, upper_from = cp.objective, cp.starts, "cpsat"
    else:
        upper, starts, upper_from = hi.objective, hi.starts, hi_from
    # Ties go to HiGHS: CP-SAT was handed HiGHS's bound and may only have repeated it.
    low = max((hi, cp), key=lambda r: r.lower_bound)
    lower = low.lower_bound
    notes = tuple(f"highs: {n}" for n in hi.notes) + tuple(f"cpsat: {n}" for n in cp.notes)
    status: IPStatus = "optimal" if upper is not None and lower >= upper else "bounded"
    return replace(
        hi,
        status=status,
        objective=upper,
        upper_bound=upper,
        lower_bound=lower,
        lower_bound_source=low.lower_bound_source,
        lower_bound_solver=low.lower_bound_solver,
        gap=None if not upper else (upper - lower) / upper,
        starts=starts,
        incumbent_source=upper_from,
        solve_time_s=hi.solve_time_s + cp.solve_time_s,
        solver=f"{hi.solver}+cpsat",
        formulation="time-indexed+intervals",
        notes=notes,
        parts=(_part(hi, "highs"), _part(cp, "cpsat")),
        options=opts,
    )
