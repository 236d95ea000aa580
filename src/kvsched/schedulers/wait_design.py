"""Threshold design for the WAIT family, from the fluid solution (spec wait.md 7.3, 9.2).

- `proportional_thresholds`: n_j = c lambda_j with dT* <= c <= C / S_tot (derived recipe);
  picks c automatically when not given and checks the rounded thresholds.
- `check_wait_thresholds`: WAIT's conditions, v4 eq. (9): load balance
  dT(n) <= n_j / lambda_j for every type, and memory M^pi(n) <= C.
- `booking_limit_thresholds`: the authors' 2025 rule n_j = max(1, int(tl lambda_j /
  sum_i lambda_i (l'_i + 1))); `batch_limit_thresholds`: v1's n_j = B rho_j / (l'_j + 1).
- `segment_budgets` and `rotating_limit`: WAIT-CP's per-segment budgets from a total limit
  tl, with margin eta on the continuation probabilities, spread over the stages of a
  segment by a rotating per-call limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kvsched.bounds.fluid import RequestType, fluid_benchmark


def _types(types) -> tuple[RequestType, ...]:
    return tuple(t if isinstance(t, RequestType) else RequestType(*t) for t in types)


def _mass(t: RequestType) -> float:
    return (t.output_len + 1) * (t.prompt_len + t.output_len / 2)


@dataclass(frozen=True)
class ThresholdCheck:
    """Margins of WAIT's conditions for a threshold vector (>= 0 means satisfied)."""

    thresholds: tuple[int, ...]
    batch_memory_tokens: float  # M^pi(n)
    iteration_time_s: float  # dT(n) = d0 + d1 M^pi(n)
    load_balance_margins_s: tuple[float, ...]  # n_j / lambda_j - dT(n)
    memory_margin_tokens: float  # C - M^pi(n)

    @property
    def ok(self) -> bool:
        # A relative tolerance: the fluid boundary (margin exactly 0) must pass despite round-off.
        tol = 1e-9
        return self.memory_margin_tokens >= -tol * max(1.0, self.batch_memory_tokens) and all(
            m >= -tol * max(1e-9, self.iteration_time_s) for m in self.load_balance_margins_s)

    @property
    def failures(self) -> list[str]:
        out = [f"load balance of type {j}: dT(n) = {self.iteration_time_s:.6g} s exceeds n_j / lambda_j by "
               f"{-m:.6g} s" for j, m in enumerate(self.load_balance_margins_s) if m < 0]
        if self.memory_margin_tokens < 0:
            out.append(f"memory: M^pi = {self.batch_memory_tokens:,.0f} tokens exceeds the capacity by "
                       f"{-self.memory_margin_tokens:,.0f}")
        return out


def check_wait_thresholds(types, thresholds: Sequence[int], d0_s: float, d1_s_per_token: float,
                          capacity_tokens: int) -> ThresholdCheck:
    kinds = _types(types)
    if len(thresholds) != len(kinds):
        raise ValueError(f"{len(thresholds)} thresholds for {len(kinds)} types")
    memory = sum(n * _mass(t) for n, t in zip(thresholds, kinds))
    dt = d0_s + d1_s_per_token * memory
    return ThresholdCheck(tuple(int(n) for n in thresholds), memory, dt,
                          tuple(n / t.rate - dt for n, t in zip(thresholds, kinds)), capacity_tokens - memory)


@dataclass(frozen=True)
class ProportionalDesign:
    c_s: float  # the scale: n_j = round(c lambda_j)
    c_range_s: tuple[float, float]  # feasible [dT*, C / S_tot] before rounding
    check: ThresholdCheck

    @property
    def thresholds(self) -> tuple[int, ...]:
        return self.check.thresholds


def proportional_thresholds(types, d0_s: float, d1_s_per_token: float, capacity_tokens: int,
                            c_s: float | None = None) -> ProportionalDesign:
    """n_j = ceil(c lambda_j) (at least 1). Without `c_s`, scan c upward from dT* and take
    the first whose rounded thresholds satisfy WAIT's conditions; raise if none does."""
    kinds = _types(types)
    fluid = fluid_benchmark(kinds, d0_s, d1_s_per_token, capacity_tokens)
    hi = capacity_tokens / fluid.total_mass
    lo = fluid.iteration_time_s
    if c_s is not None:
        n = [max(1, math.ceil(c_s * t.rate - 1e-12)) for t in kinds]
        return ProportionalDesign(c_s, (lo, hi), check_wait_thresholds(kinds, n, d0_s, d1_s_per_token,
                                                                       capacity_tokens))
    if fluid.verdict in ("UNSTABLE", "MEMORY_INFEASIBLE"):
        raise ValueError(f"no WAIT thresholds exist: the fluid verdict is {fluid.verdict} (rho = {fluid.rho:.4g}, "
                         f"M* = {fluid.memory_tokens:.6g} tokens, C = {capacity_tokens})")
    # Candidate scales: every c at which some rounded threshold steps up, from dT* on.
    steps = sorted({lo} | {k / t.rate for t in kinds for k in range(1, 1 + math.ceil(hi * t.rate) + 1)
                           if k / t.rate >= lo})
    for c in steps:
        n = [max(1, math.ceil(c * t.rate - 1e-12)) for t in kinds]
        check = check_wait_thresholds(kinds, n, d0_s, d1_s_per_token, capacity_tokens)
        if check.ok:
            return ProportionalDesign(c, (lo, hi), check)
        if check.memory_margin_tokens < 0:
            break
    raise ValueError(f"no integer thresholds satisfy WAIT's conditions for c in [{lo:.6g}, {hi:.6g}] "
                     f"(rounding to integers leaves no room); add capacity or lower the rates")


def booking_limit_thresholds(types, total_limit: int) -> tuple[int, ...]:
    """The authors' 2025 rule: n_j = max(1, int(tl lambda_j / sum_i lambda_i (l'_i + 1)))."""
    kinds = _types(types)
    denom = sum(t.rate * (t.output_len + 1) for t in kinds)
    return tuple(max(1, int(total_limit * t.rate / denom)) for t in kinds)


def batch_limit_thresholds(types, batch_limit: int) -> tuple[float, ...]:
    """v1's rule: n_j = B rho_j / (l'_j + 1), rho_j = lambda_j / sum lambda."""
    kinds = _types(types)
    total = sum(t.rate for t in kinds)
    return tuple(batch_limit * t.rate / total / (t.output_len + 1) for t in kinds)


@dataclass(frozen=True)
class SegmentBudgets:
    per_stage: tuple[float, ...]  # n_k (real-valued)
    budgets_exact: tuple[float, ...]  # n_k count_k
    budgets: tuple[int, ...]  # B_k
    counts: tuple[int, ...]  # stages per segment


def segment_budgets(rates: Sequence[float], counts: Sequence[int], total_limit: float,
                    eta: float = 0.0) -> SegmentBudgets:
    """WAIT-CP's segment budgets (spec 9.2). `rates[k]`: arrival rate of the types whose
    output ends in segment k (segments sorted by output length); `counts[k]`: its stages."""
    if len(rates) != len(counts) or not rates:
        raise ValueError("rates and counts need one entry per segment")
    reach = [sum(rates[k:]) for k in range(len(rates))]  # Lambda_k
    coeff = [1.0]
    for k in range(1, len(rates)):
        p = reach[k] / reach[k - 1]
        coeff.append(coeff[-1] * min(p + eta, 0.99))
    n1 = total_limit / sum(c * w for c, w in zip(counts, coeff))
    per_stage = tuple(n1 * w for w in coeff)
    exact = tuple(n * c for n, c in zip(per_stage, counts))
    budgets = tuple(max(1, round(b)) if reach[k] > 0 else round(b) for k, b in enumerate(exact))
    return SegmentBudgets(per_stage, exact, budgets, tuple(counts))


def rotating_limit(budget: int, count: int, call: int) -> int:
    """Per-stage limit at scheduling call `call`: spreads `budget` exactly over `count` calls."""
    return budget // count + (1 if call % count < budget % count else 0)
