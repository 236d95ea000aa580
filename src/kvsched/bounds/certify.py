"""Re-check a hindsight answer with code that shares nothing with the solvers.

`check_result(inst, res)` raises `CertificateError` unless

* the incumbent's start epochs replay (pure-Python `evaluate_starts`: arrivals, memory at
  every epoch) to exactly the reported upper bound;
* a lower bound from a closed form ("volume", "sum-output") equals that bound recomputed,
  and no reported lower bound is below them (the code always keeps the strongest);
* the lower bound names who proved it (`lower_bound_solver`) and does not exceed the
  upper bound, and "optimal" means the two meet.

A bound from a solver's search ("ip-dual" from HiGHS, "cpsat-bound") cannot be re-derived
here; the certificate names the solver, and `tests/test_hindsight.py` checks every method
against brute force on random tiny instances.
"""

from __future__ import annotations

from kvsched.bounds.instance import Instance, evaluate_starts
from kvsched.bounds.results import IPResult
from kvsched.bounds.volume import sum_output_bound, volume_bound


class CertificateError(ValueError):
    """A hindsight answer whose certificate does not check out."""


def check_result(inst: Instance, res: IPResult) -> None:
    """Raise `CertificateError` naming the first part of `res` that does not verify."""
    if res.starts is not None:
        tel, _ = evaluate_starts(inst, res.starts)  # raises InfeasibleSchedule (a ValueError)
        if tel != res.objective or tel != res.upper_bound:
            raise CertificateError(f"incumbent replays to TEL {tel}, reported {res.objective}/{res.upper_bound}")
    elif res.objective is not None:
        raise CertificateError(f"upper bound {res.objective} reported without a schedule to replay")
    closed = {"volume": volume_bound(inst), "sum-output": sum_output_bound(inst)}
    if res.lower_bound_source in closed and res.lower_bound != closed[res.lower_bound_source]:
        raise CertificateError(
            f"lower bound {res.lower_bound} claims {res.lower_bound_source} = {closed[res.lower_bound_source]}"
        )
    weakest = max(closed.values())
    if res.lower_bound < weakest and not (res.objective is not None and res.objective < weakest):
        raise CertificateError(f"lower bound {res.lower_bound} is below the closed-form bound {weakest}")
    if not res.lower_bound_solver:
        raise CertificateError("lower bound without the solver that proved it")
    if res.objective is not None and res.lower_bound > res.objective:
        raise CertificateError(f"lower bound {res.lower_bound} above the incumbent TEL {res.objective}")
    proven = res.objective is not None and res.lower_bound == res.objective
    if (res.status == "optimal") != proven:
        raise CertificateError(f"status {res.status!r} with interval [{res.lower_bound}, {res.objective}]")
