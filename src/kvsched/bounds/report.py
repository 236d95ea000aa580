"""One call that gathers every lower bound (and the optimum when the IP closes) for an instance."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvsched.bounds.cpsat import cpsat_available
from kvsched.bounds.hindsight import resolve_method, solve_hindsight
from kvsched.bounds.instance import Instance
from kvsched.bounds.ip import _ceil_bound, solve_lp
from kvsched.bounds.results import IPOptions, IPResult, LPResult
from kvsched.bounds.solvers import SolverName, solver_available
from kvsched.bounds.volume import lemma47_bound, sum_output_bound, volume_bound
from kvsched.bounds.waste import waste_bound

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BoundReport:
    """`bounds`: (name, value) pairs, all valid lower bounds on the optimal TEL.

    `optimum` is `{"status": "optimal", "value": v}`, `{"status": "interval", "lower": l,
    "upper": u}` or None (IP not run, or no incumbent).
    """

    bounds: list[tuple[str, float]]
    best_lower_bound: tuple[str, float]
    optimum: dict[str, object] | None
    ip: IPResult | None = None
    lp: LPResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "bounds": [{"name": k, "value": v} for k, v in self.bounds],
            "best_lower_bound": {"name": self.best_lower_bound[0], "value": self.best_lower_bound[1]},
            "optimum": self.optimum,
            "ip": None if self.ip is None else self.ip.to_dict(),
            "lp": None
            if self.lp is None
            else {"value": self.lp.value, "ceil": self.lp.ceil_value, "status": self.lp.status,
                  "solve_time_s": self.lp.solve_time_s, "solver": self.lp.solver,
                  "certified_value": self.lp.certified_value,
                  "certificate": "Lagrangian bound recomputed from the LP's memory prices"
                  if self.lp.certified_value is not None else None},
            "notes": list(self.notes),
        }


def bound_report(
    inst: Instance,
    *,
    ip: bool = True,
    lp: bool = True,
    time_limit_s: float = 60.0,
    incumbent_starts: Sequence[int] | None = None,
    solver: SolverName = "auto",
    ip_options: IPOptions | None = None,
    method: str = "highs",
) -> BoundReport:
    """Closed-form bounds always; the LP and the IP when a solver is importable.

    The LP value enters as `ceil(LP)` (TEL is integral). "ip-dual" is the IP's proven
    lower bound (`IPResult.lower_bound`), which already includes LB_vol when stronger;
    `method` ("highs", "cpsat", "best", "auto"; `kvsched.bounds.hindsight`) picks who
    solves it, and `ip.certificate()` says which solver proved each end.
    """
    bounds: list[tuple[str, float]] = [
        ("sum-output", float(sum_output_bound(inst))),
        ("volume", float(volume_bound(inst))),
        ("waste", float(waste_bound(inst))),
    ]
    l47 = lemma47_bound(inst)
    if l47 is not None:
        bounds.append(("lemma-4.7", l47))
    notes: list[str] = []
    how = resolve_method(method)
    have_solver = cpsat_available() if how == "cpsat" else solver_available(solver)
    if not have_solver and (ip or lp):
        notes.append("no solver installed: LP and IP skipped")
    lp_res: LPResult | None = None
    if lp and solver_available(solver):
        lp_res = solve_lp(inst, time_limit_s=time_limit_s, solver=solver)
        if lp_res.certified_value is not None:
            # The Lagrangian bound kvsched recomputed from the LP's memory prices (certify.py),
            # not the solver's float: the bound in the report is re-verified.
            bounds.append(("lp", float(_ceil_bound(lp_res.certified_value))))
        elif lp_res.ceil_value is not None:
            bounds.append(("lp", float(lp_res.ceil_value)))
        else:
            notes.append(f"LP did not finish: {lp_res.status}")
    ip_res: IPResult | None = None
    optimum: dict[str, object] | None = None
    if ip and have_solver:
        opts = ip_options or IPOptions()
        ip_res = solve_hindsight(
            inst, opts, method=how, incumbent_starts=incumbent_starts, time_limit_s=time_limit_s, solver=solver
        )
        # Named by who proved it: "ip-dual" (HiGHS) or "cpsat-bound"; a closed form that won keeps "ip-dual".
        name = ip_res.lower_bound_source if ip_res.lower_bound_source in ("cpsat-bound", "horizon-check") else "ip-dual"
        bounds.append((name, float(ip_res.lower_bound)))
        if ip_res.status == "optimal":
            optimum = {"status": "optimal", "value": ip_res.objective}
        elif ip_res.status == "bounded":
            optimum = {"status": "interval", "lower": ip_res.lower_bound, "upper": ip_res.upper_bound}
        if optimum is not None:
            optimum["certificate"] = ip_res.certificate()
        notes.extend(ip_res.notes)
    best = max(bounds, key=lambda kv: kv[1])
    return BoundReport(bounds, best, optimum, ip_res, lp_res, notes)
