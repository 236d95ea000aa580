"""The fluid benchmark of the WAIT paper (Ao et al., arXiv 2504.11320; WAIT paper §3).

For request types j with prompt length l_j, output length l'_j (decode iterations) and
Poisson rate lambda_j, an iteration that touches M KV tokens lasting d0 + d1 * M, and a KV
capacity C, the fluid model keeps n_j* requests of type j at each of its l'_j + 1 stages:

    S_j = (l'_j + 1)(l_j + l'_j / 2)          KV-time mass of one request
    S_tot = sum_j lambda_j S_j,   rho = d1 S_tot  (rho >= 1: no policy is stable)
    dT* = d0 / (1 - rho),   n_j* = lambda_j dT*,   M* = dT* S_tot,
    throughput* = sum_j lambda_j l'_j          (an upper bound for every policy, Prop. 2)

and a verdict: UNSTABLE (rho >= 1), MEMORY_INFEASIBLE (M* > C), BOUNDARY (M* = C, no
slack) or STABLE (M* < C). alpha* = C / (S_tot (d0 + d1 C)) is the factor by which every
rate can be scaled before M* reaches C. Fluid latency (l'_j + 1) dT* and TTFT dT* are
derived estimates, not statements of the paper.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

VERDICTS = ("UNSTABLE", "MEMORY_INFEASIBLE", "BOUNDARY", "STABLE")


@dataclass(frozen=True)
class RequestType:
    """One request type: prompt tokens, output tokens and arrival rate (requests per second)."""

    prompt_len: int
    output_len: int
    rate: float

    def __post_init__(self) -> None:
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError(f"request type {self}: prompt_len and output_len must be >= 1")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"request type {self}: rate must be a positive finite number")


@dataclass(frozen=True)
class FluidResult:
    """Everything `fluid_benchmark` computes (JSON-ready through `to_dict`)."""

    types: tuple[RequestType, ...]
    d0_s: float
    d1_s_per_token: float
    capacity_tokens: int
    mass: tuple[float, ...]  # S_j
    total_mass: float  # S_tot
    rho: float
    iteration_time_s: float  # dT* (inf when unstable)
    per_stage: tuple[float, ...]  # n_j*
    memory_tokens: float  # M*
    throughput_tokens_per_s: float  # sum_j lambda_j l'_j
    completion_rate: float  # sum_j lambda_j
    rate_scale_to_capacity: float  # alpha*
    latency_s: tuple[float, ...]  # (decode iterations + 1) dT*
    ttft_s: float
    verdict: str

    @property
    def memory_fraction(self) -> float:
        return self.memory_tokens / self.capacity_tokens

    @property
    def memory_slack_tokens(self) -> float:
        return self.capacity_tokens - self.memory_tokens

    def to_dict(self) -> dict:
        d = asdict(self)
        d["types"] = [asdict(t) for t in self.types]
        d["memory_fraction"] = self.memory_fraction
        d["memory_slack_tokens"] = self.memory_slack_tokens
        return {k: _finite_or_none(v) for k, v in d.items()}


def _finite_or_none(v):
    """Strict JSON has no infinity: an unstable system's equilibrium values become null."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_finite_or_none(x) for x in v]
    return v


def fluid_benchmark(types: Sequence[RequestType | tuple[int, int, float]], d0_s: float, d1_s_per_token: float,
                    capacity_tokens: int, *, first_token_in_prefill: bool = False,
                    tol: float = 1e-9) -> FluidResult:
    """The fluid equilibrium and stability verdict (WAIT paper §3).

    first_token_in_prefill: the engine convention, in which the prefill iteration emits
    the first output token, so a request makes output_len - 1 decode iterations (docs/conventions.md#wait-steps)."""
    kinds = tuple(t if isinstance(t, RequestType) else RequestType(*t) for t in types)
    if not kinds:
        raise ValueError("the fluid benchmark needs at least one request type "
                         "(kvsched fluid --type PROMPT,OUTPUT,RATE)")
    if d0_s < 0 or d1_s_per_token < 0 or capacity_tokens < 1:
        raise ValueError(f"need d0 >= 0, d1 >= 0 and capacity >= 1, got {d0_s}, {d1_s_per_token}, {capacity_tokens}")
    decodes = [t.output_len - 1 if first_token_in_prefill else t.output_len for t in kinds]
    mass = tuple((dec + 1) * (t.prompt_len + dec / 2) for t, dec in zip(kinds, decodes))
    total = sum(t.rate * s for t, s in zip(kinds, mass))
    rho = d1_s_per_token * total
    throughput = sum(t.rate * t.output_len for t in kinds)
    rate = sum(t.rate for t in kinds)
    alpha = capacity_tokens / (total * (d0_s + d1_s_per_token * capacity_tokens))
    if rho >= 1.0:
        inf = math.inf
        return FluidResult(kinds, d0_s, d1_s_per_token, capacity_tokens, mass, total, rho, inf,
                           tuple(inf for _ in kinds), inf, throughput, rate, alpha, tuple(inf for _ in kinds), inf,
                           "UNSTABLE")
    dt = d0_s / (1.0 - rho)
    memory = dt * total
    if memory < capacity_tokens * (1.0 - tol):
        verdict = "STABLE"
    elif memory <= capacity_tokens * (1.0 + tol):
        verdict = "BOUNDARY"
    else:
        verdict = "MEMORY_INFEASIBLE"
    return FluidResult(
        kinds, d0_s, d1_s_per_token, capacity_tokens, mass, total, rho, dt, tuple(t.rate * dt for t in kinds),
        memory, throughput, rate, alpha, tuple((dec + 1) * dt for dec in decodes), dt, verdict,
    )


def types_from_requests(requests: Sequence, *, num_bins: int = 50, max_distinct: int = 16,
                        rate: float | None = None) -> tuple[RequestType, ...]:
    """Request types of an empirical workload, for the fluid benchmark and WAIT's design.

    Arrival rate: `rate`, or the trace's empirical rate (n - 1) / (last - first arrival).
    Types: when the workload has at most `max_distinct` output lengths, one type per output
    length; otherwise `num_bins` equal-width bins over (0, max output], each type's output
    the bin's upper edge (the authors' 50 bins of 10 for lmsys, docs/conventions.md#wait-bins). A type's rate is
    the total rate times its share of requests and its prompt the mean prompt of its
    requests, rounded (A22; with mixed prompts WAIT's LIFO repair covers the rest, 4.10)."""
    reqs = list(requests)
    if not reqs:
        raise ValueError("the workload is empty: no requests to bin into types")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if rate is None:
        times = [r.arrival_time for r in reqs]
        span = max(times) - min(times)
        if len(reqs) < 2 or span <= 0:
            raise ValueError("every request arrives at the same time, so the workload has no arrival rate to "
                             "derive request types from")
        rate = (len(reqs) - 1) / span
    outputs = sorted({r.output_len for r in reqs})
    if len(outputs) <= max_distinct:
        edges = outputs
    else:
        width = math.ceil(outputs[-1] / num_bins)
        edges = sorted({width * math.ceil(o / width) for o in outputs})
    groups: dict[int, list[int]] = {}
    for r in reqs:
        edge = edges[bisect.bisect_left(edges, r.output_len)]
        groups.setdefault(edge, []).append(r.prompt_len)
    return tuple(RequestType(max(1, round(sum(p) / len(p))), edge, rate * len(p) / len(reqs))
                 for edge, p in sorted(groups.items()))
