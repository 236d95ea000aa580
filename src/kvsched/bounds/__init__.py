"""Hindsight optimum and lower bounds on total end-to-end latency (the MC-SF paper's hindsight IP).

* `Instance`: theory-mode data (integer epochs, prompt/output lengths, capacity `M`).
* `evaluate_starts`, `greedy_starts`: replay a schedule / build a feasible one.
* `volume_bound`, `lemma47_bound`, `sum_output_bound`, `volume_bound_seconds`:
  closed-form lower bounds (the MC-SF paper's hindsight IP).
* `solve_ip`, `solve_lp`: the time-indexed IP of the MC-SF paper's hindsight IP and its LP relaxation, solved
  with HiGHS (highspy preferred, scipy.optimize.milp as fallback), imported lazily so the
  package works without any solver.
* `bound_report`: all of the above for one instance.
"""

from kvsched.bounds.instance import (
    InfeasibleSchedule,
    Instance,
    best_greedy_starts,
    evaluate_starts,
    greedy_starts,
    makespan,
)
from kvsched.bounds.ip import canonical_starts, solve_ip, solve_lp
from kvsched.bounds.report import BoundReport, bound_report
from kvsched.bounds.results import IPOptions, IPResult, LPResult
from kvsched.bounds.solvers import SolverUnavailable, available_solver, solver_available
from kvsched.bounds.volume import (
    lemma47_bound,
    sum_output_bound,
    volume_bound,
    volume_bound_seconds,
)

__all__ = [
    "BoundReport",
    "IPOptions",
    "IPResult",
    "InfeasibleSchedule",
    "Instance",
    "LPResult",
    "SolverUnavailable",
    "available_solver",
    "best_greedy_starts",
    "bound_report",
    "canonical_starts",
    "evaluate_starts",
    "greedy_starts",
    "lemma47_bound",
    "makespan",
    "solve_ip",
    "solve_lp",
    "solver_available",
    "sum_output_bound",
    "volume_bound",
    "volume_bound_seconds",
]
