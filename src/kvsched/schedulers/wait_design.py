"""Threshold design for the WAIT family, from the fluid solution (WAIT paper §4-§5; WAIT-CP budgets from the authors' code).

- `proportional_thresholds`: n_j = c lambda_j with dT* <= c <= C / S_tot (derived recipe);
  picks c automatically when not given and checks the rounded thresholds.
- `check_wait_thresholds`: WAIT's conditions, v4 eq. (9): load balance
  dT(n) <= n_j / lambda_j for every type, and memory M^pi(n) <= C.
- `booking_limit_thresholds`: the authors' 2025 rule n_j = max(1, int(tl lambda_j /
  sum_i lambda_i (l'_i + 1))); `batch_limit_thresholds`: v1's n_j = B rho_j / (l'_j + 1).
- `segment_budgets` and `rotating_limit`: WAIT-CP's per-segment budgets from a total limit
  tl, with margin eta on the continuation probabilities, spread over the stages of a
  segment by a rotating per-call limit.
- Nested WAIT (WAIT paper §5, Algorithm 2, WAIT paper Appendix A), in the paper's convention (l'_k decode
  iterations; an engine type with output o has l' = o - 1, A19): `solve_theta` (the
  boundary-queue tail exponent), `nested_memory_requirement` (M^pi, the safety buffers and
  M_req), `check_nested_thresholds` (entry drift, boundary drift, memory) and
  `nested_thresholds` (the smallest integer design with q_k = min(p_k + eta, 0.99));
  `nested_segments` turns request types into segments (l_bar_k = the largest prompt that
  reaches segment k).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kvsched.bounds.fluid import RequestType, fluid_benchmark


def _types(types) -> tuple[RequestType, ...]:
    return tuple(t if isinstance(t, RequestType) else RequestType(*t) for t in types)


def _mass(t: RequestType, first_token_in_prefill: bool = False, block_size: int = 1) -> float:
    """KV-time mass S_j: the KV held over a request's stages, sum_s (l_j + s). In the engine
    convention (the prefill emits the first token) a type with output o has stages 0..o-1.
    With block_size > 1 each stage holds whole blocks, which is what the KV cache allocates."""
    stages = t.output_len if first_token_in_prefill else t.output_len + 1
    if block_size == 1:
        return stages * (t.prompt_len + (stages - 1) / 2)
    return float(sum(-(-(t.prompt_len + s) // block_size) * block_size for s in range(stages)))


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
                          capacity_tokens: int, *, first_token_in_prefill: bool = False,
                          block_size: int = 1, d2_s_per_prefill_token: float = 0.0) -> ThresholdCheck:
    """first_token_in_prefill: types in the engine convention (docs/conventions.md#wait-steps); block_size: count the
    memory in whole KV blocks, as the cache allocates it; d2_s_per_prefill_token: the
    prefill-compute term of A3b, so that a full threshold batch (which prefills n_j
    requests of every type) lasts d0 + d1 M^pi + d2 sum_j n_j l_j."""
    kinds = _types(types)
    if len(thresholds) != len(kinds):
        raise ValueError(f"{len(thresholds)} thresholds for {len(kinds)} types")
    memory = sum(n * _mass(t, first_token_in_prefill, block_size) for n, t in zip(thresholds, kinds))
    prefill = sum(n * t.prompt_len for n, t in zip(thresholds, kinds))
    dt = d0_s + d1_s_per_token * memory + d2_s_per_prefill_token * prefill
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
                            c_s: float | None = None, *, first_token_in_prefill: bool = False,
                            block_size: int = 1, d2_s_per_prefill_token: float = 0.0) -> ProportionalDesign:
    """n_j = ceil(c lambda_j) (at least 1). Without `c_s`, scan c upward from dT* and take
    the first whose rounded thresholds satisfy WAIT's conditions; raise if none does.
    The keywords are those of `check_wait_thresholds`."""
    kinds = _types(types)
    conv = {"first_token_in_prefill": first_token_in_prefill, "block_size": block_size,
            "d2_s_per_prefill_token": d2_s_per_prefill_token}
    fluid = fluid_benchmark(kinds, d0_s, d1_s_per_token, capacity_tokens,
                            first_token_in_prefill=first_token_in_prefill)
    hi = capacity_tokens / fluid.total_mass
    lo = fluid.iteration_time_s
    if c_s is not None:
        n = [max(1, math.ceil(c_s * t.rate - 1e-12)) for t in kinds]
        return ProportionalDesign(c_s, (lo, hi), check_wait_thresholds(kinds, n, d0_s, d1_s_per_token,
                                                                       capacity_tokens, **conv))
    if fluid.verdict in ("UNSTABLE", "MEMORY_INFEASIBLE"):
        raise ValueError(f"no WAIT thresholds exist: the fluid verdict is {fluid.verdict} (rho = {fluid.rho:.4g}, "
                         f"M* = {fluid.memory_tokens:.6g} tokens, C = {capacity_tokens})")
    # Candidate scales: every c at which some rounded threshold steps up, from dT* on.
    steps = sorted({lo} | {k / t.rate for t in kinds for k in range(1, 1 + math.ceil(hi * t.rate) + 1)
                           if k / t.rate >= lo})
    for c in steps:
        n = [max(1, math.ceil(c * t.rate - 1e-12)) for t in kinds]
        check = check_wait_thresholds(kinds, n, d0_s, d1_s_per_token, capacity_tokens, **conv)
        if check.ok:
            return ProportionalDesign(c, (lo, hi), check)
        if check.memory_margin_tokens < 0:
            break
    load = sum(t.rate * (d1_s_per_token * _mass(t, first_token_in_prefill, block_size)
                         + d2_s_per_prefill_token * t.prompt_len) for t in kinds)
    if load >= 1.0:
        raise ValueError(f"no WAIT thresholds keep up: the workload is overloaded under the design time model "
                         f"(sum_j lambda_j (d1 S_j + d2 l_j) = {load:.4g} >= 1), so load balance fails for every n")
    floor = check_wait_thresholds(kinds, [1] * len(kinds), d0_s, d1_s_per_token, capacity_tokens, **conv)
    raise ValueError(f"no integer thresholds satisfy WAIT's conditions for c in [{lo:.6g}, {hi:.6g}]: rounding to "
                     f"integers leaves no room (one request per stage of each of the {len(kinds)} types alone needs "
                     f"M^pi = {floor.batch_memory_tokens:,.0f} KV tokens of {capacity_tokens:,}); add capacity, use "
                     f"fewer types, or use nested-wait / wait-cp")


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
    """WAIT-CP's segment budgets (WAIT-CP, the authors' code; docs/wait.md). `rates[k]`: arrival rate of the types whose
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


# --- Nested WAIT (unknown lengths; WAIT paper §5, Algorithm 2, and Appendix A) -------------------------------
# Written in the paper's convention: decode_boundaries are l'_1 < ... < l'_m (decode
# iterations), segment 1 holds stages 0..l'_1 and segment k >= 2 stages l'_{k-1}+1 .. l'_k;
# a request served at stage s holds l + s KV tokens afterwards. An engine-convention type
# with output o has l' = o - 1 (docs/conventions.md#wait-steps); `nested_segments` converts.


def _log_mgf(theta: float, p: float) -> float:
    """ln(1 - p + p e^theta): log1p form for small theta (precision), theta + ln(p + (1-p)
    e^-theta) for large theta (no overflow)."""
    if theta < 1.0:
        return math.log1p(p * math.expm1(theta))
    return theta + math.log(p + (1.0 - p) * math.exp(-theta))


def solve_theta(n_prev: float, n_k: float, p_k: float) -> float:
    """theta_k of the boundary-queue tail bound (WAIT paper §5, Algorithm 2): the unique theta > 0 with
    -theta n_k + n_prev ln(1 - p_k + p_k e^theta) = 0. The left side is convex, falls at 0
    and grows without bound exactly when p_k n_prev < n_k < n_prev (0 < p_k < 1), so the
    root exists only then; otherwise ValueError. Bisection, bracketed by doubling from 1."""
    if not 0.0 < p_k < 1.0:
        raise ValueError(f"solve_theta: p_k must be in (0, 1), got {p_k}")
    if not p_k * n_prev < n_k < n_prev:
        hint = (" (n_k >= n_prev: the boundary queue is bounded deterministically; drop the log term)"
                if n_k >= n_prev else " (n_k <= p_k n_prev: the boundary queue drifts upward)")
        raise ValueError(f"solve_theta: a positive root exists only when p_k n_prev < n_k < n_prev; got "
                         f"n_prev={n_prev}, n_k={n_k}, p_k={p_k}{hint}")

    def f(theta: float) -> float:
        return -theta * n_k + n_prev * _log_mgf(theta, p_k)

    hi = 1.0
    while f(hi) <= 0.0:
        hi *= 2.0
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:  # the bracket is one float wide
            break
        if f(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _held_tokens(kv_len: int, block_size: int, lookahead_tokens: int) -> int:
    """KV tokens the cache allocates for a request with kv_len computed tokens."""
    return -(-(kv_len + lookahead_tokens) // block_size) * block_size


@dataclass(frozen=True)
class _Layout:
    prompt_lens: tuple[int, ...]  # l_bar_k
    decode_boundaries: tuple[int, ...]  # l'_k
    segment_steps: tuple[int, ...]  # delta_k
    mean_stage: tuple[float, ...]  # s_bar_k
    segment_mass_tokens: tuple[float, ...]  # sum over segment k's stages of the KV held after service
    boundary_tokens: tuple[int, ...]  # k = 2..m: KV held by one request waiting at boundary k


def _nested_layout(prompt_len, decode_boundaries: Sequence[int], block_size: int = 1,
                   lookahead_tokens: int = 0) -> _Layout:
    bounds = tuple(int(b) for b in decode_boundaries)
    m = len(bounds)
    if m == 0 or bounds[0] < 0 or any(bounds[i] >= bounds[i + 1] for i in range(m - 1)):
        raise ValueError(f"decode_boundaries must be increasing integers >= 0, got {bounds}")
    prompts = tuple(int(p) for p in prompt_len) if hasattr(prompt_len, "__iter__") else (int(prompt_len),) * m
    if len(prompts) != m or min(prompts) < 1:
        raise ValueError(f"prompt_len: one prompt length >= 1 per segment ({m}), got {prompt_len}")
    if block_size < 1 or lookahead_tokens < 0:
        raise ValueError(f"block_size must be >= 1 and lookahead_tokens >= 0, got {block_size}, {lookahead_tokens}")
    lows = (0, *(b + 1 for b in bounds[:-1]))  # first stage of each segment
    steps = tuple(hi - lo + 1 for lo, hi in zip(lows, bounds))
    mean = tuple((lo + hi) / 2 for lo, hi in zip(lows, bounds))
    if block_size == 1 and lookahead_tokens == 0:
        mass = tuple((p + s) * d for p, s, d in zip(prompts, mean, steps))  # the closed form of WAIT paper §5, Algorithm 2
    else:
        mass = tuple(float(sum(_held_tokens(p + s, block_size, lookahead_tokens) for s in range(lo, hi + 1)))
                     for p, lo, hi in zip(prompts, lows, bounds))
    boundary = tuple(_held_tokens(prompts[k] + bounds[k - 1], block_size, lookahead_tokens) for k in range(1, m))
    return _Layout(prompts, bounds, steps, mean, mass, boundary)


@dataclass(frozen=True)
class NestedMemory:
    """Nested WAIT's memory for segment thresholds n (WAIT paper §5, Algorithm 2):
    M^pi = sum_k n_k (l_bar_k + s_bar_k) delta_k and
    M_req = M^pi + sum_{k>=2} (l_bar_k + l'_{k-1}) (n_k + ln(m (1 + H/d0) / delta) / theta_k),
    the log term dropped where n_k >= n_{k-1} (theta_k = inf). theta_k = 0 marks a boundary
    without a root (n_k <= p_k n_{k-1}): its queue drifts upward and M_req is infinite."""

    prompt_lens: tuple[int, ...]  # l_bar_k: the largest prompt of the classes reaching segment k
    decode_boundaries: tuple[int, ...]  # l'_k
    thresholds: tuple[float, ...]  # n_k
    segment_steps: tuple[int, ...]  # delta_k
    mean_stage: tuple[float, ...]  # s_bar_k
    segment_mass_tokens: tuple[float, ...]  # (l_bar_k + s_bar_k) delta_k (whole blocks when block_size > 1)
    batch_memory_tokens: float  # M^pi
    theta: tuple[float, ...]  # theta_k, k = 2..m
    log_term: float  # ln(m (1 + H/d0) / delta)
    buffer_tokens: tuple[float, ...]  # the buffer term of each boundary k = 2..m
    required_tokens: float  # M_req


def _log_term(num_types: int, delta: float, horizon_over_d0: float) -> float:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not horizon_over_d0 >= 0.0:
        raise ValueError(f"horizon_over_d0 must be >= 0, got {horizon_over_d0}")
    return math.log(num_types * (1.0 + horizon_over_d0) / delta)


def _nested_memory(layout: _Layout, thresholds: Sequence[float], continuation: Sequence[float],
                   log_term: float) -> NestedMemory:
    m = len(layout.decode_boundaries)
    n = tuple(thresholds)
    if len(n) != m or min(n) <= 0:
        raise ValueError(f"thresholds: one value > 0 per segment ({m}), got {n}")
    if len(continuation) != m - 1:
        raise ValueError(f"continuation: one p_k per boundary k = 2..{m}, got {len(continuation)}")
    thetas, buffers = [], []
    for k in range(1, m):
        p, size = continuation[k - 1], layout.boundary_tokens[k - 1]
        if n[k] >= n[k - 1] or p <= 0.0:
            theta, buffer = math.inf, size * n[k]  # bounded deterministically: no log term
        elif n[k] <= p * n[k - 1]:
            theta, buffer = 0.0, math.inf
        else:
            theta = solve_theta(n[k - 1], n[k], p)
            buffer = size * (n[k] + log_term / theta)
        thetas.append(theta)
        buffers.append(buffer)
    batch = sum(nk * w for nk, w in zip(n, layout.segment_mass_tokens))
    return NestedMemory(layout.prompt_lens, layout.decode_boundaries, n, layout.segment_steps, layout.mean_stage,
                        layout.segment_mass_tokens, batch, tuple(thetas), log_term, tuple(buffers),
                        batch + sum(buffers))


def nested_memory_requirement(prompt_len, decode_boundaries: Sequence[int], thresholds: Sequence[float],
                              continuation: Sequence[float], delta: float, horizon_over_d0: float,
                              num_types: int | None = None, *, block_size: int = 1,
                              lookahead_tokens: int = 0) -> NestedMemory:
    """M^pi, the buffer terms and M_req (WAIT paper §5, Algorithm 2) in the paper's convention.

    prompt_len: l, or l_bar_k per segment (WAIT paper Appendix A); decode_boundaries: l'_1 < ... < l'_m;
    continuation: p_2..p_m; horizon_over_d0: H / d0, the bound on the number of iterations
    in the log term, which uses num_types (default: the number of segments; with fewer
    segments than types, 10.1, the log keeps m). block_size / lookahead_tokens: count each
    request's KV as the cache allocates it (whole blocks, lookahead slots); 1 / 0 is the
    paper's token-exact ledger."""
    layout = _nested_layout(prompt_len, decode_boundaries, block_size, lookahead_tokens)
    log = _log_term(num_types or len(layout.decode_boundaries), delta, horizon_over_d0)
    return _nested_memory(layout, thresholds, continuation, log)


@dataclass(frozen=True)
class NestedThresholdCheck:
    """Margins of Nested WAIT's conditions (WAIT paper §5, Algorithm 2); a margin > 0 means satisfied."""

    thresholds: tuple[float, ...]
    continuation: tuple[float, ...]  # p_k, k = 2..m
    memory: NestedMemory
    iteration_time_s: float  # dT(n) = d0 + d1 M^pi (+ d2 n_1 l_bar_1, the prefills of a full batch)
    entry_drift_margin_s: float  # n_1 / sum lambda - dT(n)
    boundary_drift_margins: tuple[float, ...]  # n_k / n_{k-1} - p_k
    memory_margin_tokens: float  # C - M_req
    capacity_tokens: int

    @property
    def deterministic_boundaries(self) -> tuple[int, ...]:
        """Segments k (1-based) with n_k >= n_{k-1}: boundary queue bounded without the log term."""
        n = self.thresholds
        return tuple(k + 1 for k in range(1, len(n)) if n[k] >= n[k - 1])

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        out = []
        if not self.entry_drift_margin_s > 0:
            out.append(f"entry drift: dT(n) = {self.iteration_time_s:.6g} s is not below n_1 / sum lambda = "
                       f"{self.iteration_time_s + self.entry_drift_margin_s:.6g} s")
        for k, margin in enumerate(self.boundary_drift_margins, start=2):
            if not margin > 1e-12:
                out.append(f"boundary drift into segment {k}: n_{k}/n_{k - 1} = "
                           f"{self.thresholds[k - 1]:g}/{self.thresholds[k - 2]:g} is not above p_{k} = "
                           f"{self.continuation[k - 2]:.6g}")
        if not self.memory_margin_tokens >= 0:
            out.append(f"memory: M_req = {self.memory.required_tokens:,.0f} KV tokens (M^pi = "
                       f"{self.memory.batch_memory_tokens:,.0f} + buffers) exceeds the capacity "
                       f"{self.capacity_tokens:,}")
        return out

    @property
    def notes(self) -> list[str]:
        return [f"n_{k} >= n_{k - 1}: boundary queue {k} is bounded deterministically (no log term)"
                for k in self.deterministic_boundaries]


def _nested_check(layout: _Layout, rates: Sequence[float], thresholds: Sequence[float], d0_s: float,
                  d1_s_per_token: float, d2_s_per_prefill_token: float, capacity_tokens: int,
                  log_term: float) -> NestedThresholdCheck:
    reach = [sum(rates[k:]) for k in range(len(rates))]  # Lambda_k
    cont = tuple(reach[k] / reach[k - 1] for k in range(1, len(rates)))
    memory = _nested_memory(layout, thresholds, cont, log_term)
    n = memory.thresholds
    dt = d0_s + d1_s_per_token * memory.batch_memory_tokens + d2_s_per_prefill_token * n[0] * layout.prompt_lens[0]
    return NestedThresholdCheck(n, cont, memory, dt, n[0] / reach[0] - dt,
                                tuple(n[k] / n[k - 1] - cont[k - 1] for k in range(1, len(n))),
                                capacity_tokens - memory.required_tokens, capacity_tokens)


def _check_time_model(d0_s: float, d1_s_per_token: float, d2_s_per_prefill_token: float) -> None:
    if not d0_s > 0:
        raise ValueError(f"d0_s must be > 0 (it bounds the number of iterations in the log term), got {d0_s}")
    if min(d1_s_per_token, d2_s_per_prefill_token) < 0:
        raise ValueError("d1_s_per_token and d2_s_per_prefill_token must be >= 0")


def check_nested_thresholds(prompt_len, decode_boundaries: Sequence[int], rates: Sequence[float],
                            thresholds: Sequence[float], d0_s: float, d1_s_per_token: float, capacity_tokens: int,
                            *, delta: float = 0.05, horizon_s: float = 3600.0, num_types: int | None = None,
                            d2_s_per_prefill_token: float = 0.0, block_size: int = 1,
                            lookahead_tokens: int = 0) -> NestedThresholdCheck:
    """Nested WAIT's conditions (WAIT paper §5, Algorithm 2) for segment thresholds n, paper convention:
    entry drift d0 + d1 M^pi < n_1 / sum lambda; boundary drift p_k < n_k / n_{k-1} (and
    < 1, else the boundary is deterministic: allowed, see `notes`); memory M_req <= C.
    rates[k]: arrival rate of the class whose length is boundary k (lambda_k > 0); the
    other arguments are those of `nested_memory_requirement`."""
    _check_time_model(d0_s, d1_s_per_token, d2_s_per_prefill_token)
    if len(rates) != len(decode_boundaries) or not all(r > 0 for r in rates):
        raise ValueError(f"rates: one rate > 0 per segment ({len(decode_boundaries)}), got {tuple(rates)}")
    layout = _nested_layout(prompt_len, decode_boundaries, block_size, lookahead_tokens)
    log = _log_term(num_types or len(rates), delta, horizon_s / d0_s)
    return _nested_check(layout, rates, thresholds, d0_s, d1_s_per_token, d2_s_per_prefill_token, capacity_tokens,
                         log)


@dataclass(frozen=True)
class NestedSegments:
    """Nested WAIT's segments of a workload, paper convention (WAIT paper §5, Algorithm 2, WAIT paper Appendix A)."""

    prompt_lens: tuple[int, ...]  # l_bar_k = max prompt over the types that reach segment k
    decode_boundaries: tuple[int, ...]  # l'_k
    rates: tuple[float, ...]  # lambda_k


def nested_segments(types, first_token_in_prefill: bool = True) -> NestedSegments:
    """Segments of request types (sorted by output length): with first_token_in_prefill
    (the engine convention, A19) a type with output o has l' = o - 1."""
    kinds = sorted(_types(types), key=lambda t: t.output_len)
    shift = 1 if first_token_in_prefill else 0
    return NestedSegments(tuple(max(t.prompt_len for t in kinds[k:]) for k in range(len(kinds))),
                          tuple(t.output_len - shift for t in kinds), tuple(t.rate for t in kinds))


@dataclass(frozen=True)
class NestedDesign:
    segments: NestedSegments
    ratios: tuple[float, ...]  # q_k = min(p_k + eta, 0.99), k = 2..m
    check: NestedThresholdCheck

    @property
    def thresholds(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.check.thresholds)

    @property
    def memory(self) -> NestedMemory:
        return self.check.memory


def _threshold_chain(n_1: int, continuation: Sequence[float], ratios: Sequence[float]) -> list[int]:
    """n_k = max(floor(p_k n_{k-1}) + 1, ceil(q_k n_{k-1})): the smallest integer >= q_k n_{k-1}
    that is strictly above p_k n_{k-1}; it never exceeds n_{k-1} since q_k, p_k < 1."""
    n = [n_1]
    for p, q in zip(continuation, ratios):
        n.append(min(n[-1], max(math.floor(p * n[-1]) + 1, math.ceil(q * n[-1] - 1e-9))))
    return n


def nested_thresholds(types, d0_s: float, d1_s_per_token: float, capacity_tokens: int, eta: float = 0.05,
                      delta: float = 0.05, horizon_s: float = 3600.0, first_token_in_prefill: bool = True, *,
                      d2_s_per_prefill_token: float = 0.0, block_size: int = 1,
                      lookahead_tokens: int = 0) -> NestedDesign:
    """Integer segment thresholds (WAIT paper §5, Algorithm 2): q_k = min(p_k + eta, 0.99), n_k from n_{k-1}
    by `_threshold_chain` (so n_k >= n_1 Q_k and p_k < n_k / n_{k-1} <= 1), and the
    smallest n_1 >= 1 whose vector passes `check_nested_thresholds`. The search starts at
    the entry-drift bound n_1 > d0 Lambda / (1 - Lambda (d1 W + d2 l_bar_1)), W = sum_k
    Q_k (l_bar_k + s_bar_k) delta_k, and stops once M^pi alone exceeds C (it grows with n_1).
    Raises ValueError naming the condition that fails."""
    _check_time_model(d0_s, d1_s_per_token, d2_s_per_prefill_token)
    if not 0.0 <= eta < 1.0:
        raise ValueError(f"eta must be in [0, 1), got {eta}")
    seg = nested_segments(types, first_token_in_prefill)
    layout = _nested_layout(seg.prompt_lens, seg.decode_boundaries, block_size, lookahead_tokens)
    log = _log_term(len(seg.rates), delta, horizon_s / d0_s)
    reach = [sum(seg.rates[k:]) for k in range(len(seg.rates))]
    cont = [reach[k] / reach[k - 1] for k in range(1, len(reach))]
    ratios = tuple(min(p + eta, 0.99) for p in cont)
    weights = [1.0]
    for q in ratios:
        weights.append(weights[-1] * q)
    per_n1_s = (d1_s_per_token * sum(w * mass for w, mass in zip(weights, layout.segment_mass_tokens))
                + d2_s_per_prefill_token * layout.prompt_lens[0])  # dT(n) = d0 + n_1 per_n1_s, real-valued n
    slack = 1.0 - reach[0] * per_n1_s
    if slack <= 0:
        raise ValueError(f"entry drift cannot hold for any n_1: a threshold batch costs {per_n1_s:.6g} s per request "
                         f"of n_1 while requests arrive every {1 / reach[0]:.6g} s (the load is unstable; "
                         f"lower the rates or eta)")
    first = max(1, math.floor(d0_s * reach[0] / slack))
    closest = None
    n_1 = first
    while True:
        check = _nested_check(layout, seg.rates, _threshold_chain(n_1, cont, ratios), d0_s, d1_s_per_token,
                              d2_s_per_prefill_token, capacity_tokens, log)
        if check.ok:
            return NestedDesign(seg, ratios, check)
        if closest is None and check.entry_drift_margin_s > 0:
            closest = check
        if check.memory.batch_memory_tokens > capacity_tokens:
            break
        n_1 += 1
    shown = closest or check
    raise ValueError(f"no integer Nested WAIT thresholds fit (n_1 = {first}..{n_1} tried, eta = {eta}); at n = "
                     f"{tuple(int(x) for x in shown.thresholds)}: " + "; ".join(shown.failures))
