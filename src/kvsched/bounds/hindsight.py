"""One entry point for the hindsight optimum: HiGHS, CP-SAT, or both in turn.

* `"highs"`: `kvsched.bounds.ip.solve_ip`, the MC-SF paper's time-indexed IP (the
  stronger lower bound at the papers' size);
* `"cpsat"`: `kvsched.bounds.cpsat.solve_cpsat`, one start variable per request under a
  cumulative (the better schedules; closes small instances fast);
* `"best"`: a short CP-SAT probe (5 % of the limit; it closes small instances in a
  fraction of a second), then HiGHS for most of what is left (it proves more), then,
  unless one of them proved optimality, CP-SAT for the rest, started from the best schedule
  and given HiGHS's bound; the answer keeps the better end of each: the lower upper bound
  and the higher proven lower bound, each with the solver that produced it;
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
    inst: Instance, opts: IPOptions, incumbent_starts: Sequence[int] | None, cpsat_share: float,
    probe_share: float = 0.05,
) -> IPResult:
    from kvsched.bounds.cpsat import solve_cpsat
    from kvsched.bounds.ip import solve_ip

    if not 0 < cpsat_share < 1:
        raise ValueError(f"cpsat_share must be in (0, 1), got {cpsat_share}")
    total = opts.time_limit_s
    runs: list[tuple[str, IPResult]] = []
    # The growth-waste bound costs up to a second at paper size: compute it once, hand it to
    # the CP-SAT stages as their objective row, and credit it to the closed form in `_combine`.
    closed = None
    if opts.waste_bound:
        from kvsched.bounds.waste import waste_bound

        closed = waste_bound(inst)
        opts = replace(opts, waste_bound=False)

    def left() -> float | None:
        return None if total is None else max(total - sum(r.solve_time_s for _, r in runs), 0.05 * total)

    def starts_so_far() -> Sequence[int] | None:
        done = [r for _, r in runs if r.starts is not None]
        return min(done, key=lambda r: r.objective).starts if done else incumbent_starts

    # 1. A short CP-SAT probe: it proves small instances in a fraction of a second, where
    #    HiGHS takes seconds (docs/bounds.md, medium instances).
    if total is not None:
        runs.append(("cpsat-probe", solve_cpsat(inst, replace(opts, time_limit_s=total * probe_share),
                                                incumbent_starts=incumbent_starts, known_lower_bound=closed)))
    # 2. HiGHS, the better prover, for most of what is left.
    if not runs or runs[-1][1].status != "optimal":
        budget = left()
        hi = solve_ip(inst, replace(opts, time_limit_s=None if budget is None else budget * (1 - cpsat_share)),
                      incumbent_starts=starts_so_far())
        runs.append(("highs", hi))
        # 3. CP-SAT for the rest, from the best schedule and with HiGHS's proven bound as a
        #    row, so that a schedule meeting that bound ends the search as proven.
        if hi.status != "optimal" and hi.starts is not None:
            given = hi.lower_bound if closed is None else max(hi.lower_bound, closed)
            runs.append(("cpsat", solve_cpsat(inst, replace(opts, time_limit_s=left()),
                                              incumbent_starts=starts_so_far(), known_lower_bound=given)))
    return _combine(runs, replace(opts, waste_bound=closed is not None), closed)


def _combine(runs: list[tuple[str, IPResult]], opts: IPOptions, waste: int | None = None) -> IPResult:
    """The lowest upper bound and the highest lower bound of the runs, each with its source;
    `waste`, the growth-waste bound computed once for all runs, wins ties."""
    with_schedule = [r for _, r in runs if r.starts is not None]
    best_up = min(with_schedule, key=lambda r: r.objective) if with_schedule else None
    # Ties go to the earliest run: a later CP-SAT run was handed HiGHS's bound as a row.
    low = max((r for _, r in runs), key=lambda r: r.lower_bound)
    upper = None if best_up is None else best_up.objective
    lower, lower_source, lower_solver = low.lower_bound, low.lower_bound_source, low.lower_bound_solver
    if waste is not None and waste >= lower:
        lower, lower_source, lower_solver = waste, "waste", "closed-form"
    if best_up is None:
        upper_from = None
    elif best_up.incumbent_source == "solver":
        upper_from = best_up.solver
    else:  # a run that kept the schedule it was given: whoever found that one first
        upper_from = next((r.solver if r.incumbent_source == "solver" else r.incumbent_source
                           for _, r in runs if r.objective == upper), best_up.incumbent_source)
    status: IPStatus = "optimal" if upper is not None and lower >= upper else \
        "bounded" if upper is not None else "no-solution"
    base = next((r for name, r in runs if name == "highs"), runs[-1][1])
    return replace(
        base,
        status=status,
        objective=upper,
        upper_bound=upper,
        lower_bound=lower,
        lower_bound_source=lower_source,
        lower_bound_solver=lower_solver,
        gap=None if not upper else (upper - lower) / upper,
        starts=None if best_up is None else best_up.starts,
        incumbent_source=upper_from,
        solve_time_s=sum(r.solve_time_s for _, r in runs),
        solver="+".join(dict.fromkeys(r.solver for _, r in runs)),
        formulation="+".join(dict.fromkeys(r.formulation for _, r in runs)),
        notes=tuple(f"{name}: {n}" for name, r in runs for n in r.notes),
        parts=tuple(_part(r, name) for name, r in runs),
        options=opts,
    )
