"""Re-check a hindsight answer with code that shares nothing with the solvers.

`check_result(inst, res)` raises `CertificateError` unless

* the incumbent's start epochs replay (pure-Python `evaluate_starts`: arrivals, memory at
  every epoch) to exactly the reported upper bound;
* a lower bound from a closed form ("volume", "sum-output", "chain" from `kvsched.bounds.chain`,
  "waste" from `kvsched.bounds.waste`) equals that bound recomputed,
  and no reported lower bound is below them (the code always keeps the strongest);
* the lower bound names who proved it (`lower_bound_solver`) and does not exceed the
  upper bound, and "optimal" means the two meet.

A bound from a solver's search ("ip-dual" from HiGHS, "cpsat-bound") cannot be re-derived
here; the certificate names the solver, and `tests/test_hindsight.py` checks every method
against brute force on random tiny instances.

The LP relaxation's bound can be: `lagrangian_bound(inst, prices)` prices memory at each
epoch (`lambda_t >= 0`) and returns `sum_i min_p [p + o_i - a_i + sum_k lambda_{p+k} (s_i + k)]
- M sum_t lambda_t`. For any schedule, adding `lambda_t (mem_t - M) <= 0` to its TEL gives
at most the TEL, and each request's term is at least its minimum over all starts `p >= a_i`
(prices past the last epoch are 0, so starts beyond it only cost more), so this is a lower
bound on every schedule's TEL for any prices: weak duality, with no horizon assumed. With
the LP's memory duals as prices (`solve_lp(...).memory_prices`) it equals the LP value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
    if res.lower_bound_source == "chain":
        from kvsched.bounds.chain import chain_bound

        closed["chain"] = chain_bound(inst)
    if res.lower_bound_source == "waste":
        from kvsched.bounds.waste import waste_bound

        closed["waste"] = waste_bound(inst)
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


def lagrangian_bound(inst: Instance, prices: Sequence[float]) -> float:
    """The Lagrangian lower bound on the optimal TEL for memory prices `prices[t-1]` at epoch `t`.

    Valid for any non-negative prices (module docstring); negative ones raise ValueError.
    """
    lam = np.asarray(prices, dtype=np.float64)
    if lam.size and (not np.all(np.isfinite(lam)) or lam.min() < 0):
        raise ValueError("memory prices must be finite and >= 0")
    if inst.n == 0:
        return 0.0
    a, s, o = inst.arrays()
    last = int(max(lam.size, a.max()))  # starts up to here; later ones see no price
    padded = np.zeros(last + int(o.max()) + 2)
    padded[1 : lam.size + 1] = lam  # padded[t] = price at epoch t
    total = 0.0
    for i in range(inst.n):
        ai, si, oi = int(a[i]), int(s[i]), int(o[i])
        weights = si + np.arange(1, oi + 1, dtype=np.float64)
        # priced[p] = sum_k padded[p + k] * (s + k), for starts p = 0..last
        priced = np.correlate(padded[1 : last + oi + 1], weights, mode="valid")
        p = np.arange(priced.size)
        cost = (p + oi - ai) + priced
        total += float(cost[ai:].min())
    return total - inst.capacity * float(lam.sum())
