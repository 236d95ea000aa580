"""Hindsight optimum and lower bounds on total end-to-end latency (the MC-SF paper's hindsight IP).

* `Instance`: theory-mode data (integer epochs, prompt/output lengths, capacity `M`).
* `evaluate_starts`, `greedy_starts`: replay a schedule / build a feasible one.
* `volume_bound`, `lemma47_bound`, `sum_output_bound`, `volume_bound_seconds`:
  closed-form lower bounds (the MC-SF paper's hindsight IP); `waste_bound`: LB_vol plus the
  memory that growing requests must leave free before each completion (`kvsched.bounds.waste`).
* `solve_ip`, `solve_lp`: the time-indexed IP of the MC-SF paper's hindsight IP and its LP relaxation, solved
  with HiGHS (highspy preferred, scipy.optimize.milp as fallback), imported lazily so the
  package works without any solver.
* `solve_cpsat`: the same optimum with OR-Tools CP-SAT (optional `ortools`), one start
  variable per request under a cumulative; `solve_hindsight` picks HiGHS, CP-SAT or both.
* `check_result`: re-checks an answer's certificate (replay, closed-form bounds, sources).
* `bound_report`: all of the above for one instance.
* `IsolatedWorker`: runs solver calls in a child process, so that a crash in a solver's
  native code raises `SolverCrashed` instead of ending the caller.
"""

import importlib

# Public name -> submodule. Resolved on first use (PEP 562), so importing one submodule
# (the WAIT schedulers import `bounds.fluid` at start-up) does not load the IP and report
# modules: `kvsched simulate` starts faster.
_EXPORTS = {
    "InfeasibleSchedule": "instance", "Instance": "instance", "best_greedy_starts": "instance",
    "evaluate_starts": "instance", "greedy_starts": "instance", "makespan": "instance",
    "CertificateError": "certify", "check_result": "certify",
    "cpsat_available": "cpsat", "solve_cpsat": "cpsat", "solve_hindsight": "hindsight",
    "IsolatedWorker": "isolated", "SolverCrashed": "isolated",
    "canonical_starts": "ip", "solve_ip": "ip", "solve_lp": "ip",
    "BoundReport": "report", "bound_report": "report",
    "IPOptions": "results", "IPResult": "results", "LPResult": "results",
    "SolverUnavailable": "solvers", "available_solver": "solvers", "solver_available": "solvers",
    "lemma47_bound": "volume", "sum_output_bound": "volume", "volume_bound": "volume",
    "volume_bound_seconds": "volume", "waste_bound": "waste",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvsched.bounds' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kvsched.bounds.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "BoundReport",
    "CertificateError",
    "IPOptions",
    "IPResult",
    "InfeasibleSchedule",
    "Instance",
    "IsolatedWorker",
    "LPResult",
    "SolverCrashed",
    "SolverUnavailable",
    "available_solver",
    "best_greedy_starts",
    "bound_report",
    "canonical_starts",
    "check_result",
    "cpsat_available",
    "evaluate_starts",
    "greedy_starts",
    "lemma47_bound",
    "makespan",
    "solve_cpsat",
    "solve_hindsight",
    "solve_ip",
    "solve_lp",
    "solver_available",
    "sum_output_bound",
    "volume_bound",
    "volume_bound_seconds",
    "waste_bound",
]
