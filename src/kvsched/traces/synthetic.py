"""Synthetic workloads: arrival processes, length distributions, request-type mixtures.

Everything random takes an explicit `numpy.random.Generator`, so one seed gives one
workload. `synthetic_workload` draws in a fixed order (arrival times, then prompt
lengths, then output lengths, or the type of each request), which is part of the
reproducibility contract: changing that order changes every seeded workload.

Arrival processes start at t = 0 (the first request arrives at 0.0 s, like every
loaded trace) and return `n` non-decreasing times in seconds. Length distributions
return int64 arrays with every value >= 1 (draws below 1 are clipped up to 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kvsched.request import Request
from kvsched.traces.validate import TraceError, requests_from_arrays

ARRIVAL_KINDS = ("poisson", "gamma", "batch")


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise TraceError(f"number of requests n must be an integer >= 1, got {n!r}")


def _check_rate(rate: float | None, what: str = "arrival process") -> float:
    if rate is None or not np.isfinite(rate) or rate <= 0:
        raise TraceError(f"{what}: rate (requests/s) must be a finite number > 0, got {rate!r}")
    return float(rate)


def _times_from_gaps(gaps_s: np.ndarray) -> np.ndarray:
    """Arrival times with the first at 0 and the given n-1 gaps after it."""
    return np.concatenate(([0.0], np.cumsum(gaps_s)))


def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson process at `rate` requests/s: exponential gaps with mean 1/rate."""
    _check_n(n)
    return _times_from_gaps(rng.exponential(1.0 / _check_rate(rate), size=n - 1))


def gamma_arrivals(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma-renewal arrivals: gaps with mean 1/rate and coefficient of variation `cv`.

    shape k = 1/cv^2 and scale = 1/(rate k) give mean 1/rate and std cv/rate; cv = 1
    is Poisson, cv > 1 bursty, cv = 0 evenly spaced.
    """
    _check_n(n)
    rate = _check_rate(rate)
    if cv is None or not np.isfinite(cv) or cv < 0:
        raise TraceError(f"gamma arrivals: cv must be a finite number >= 0, got {cv!r}")
    if cv == 0:
        return _times_from_gaps(np.full(n - 1, 1.0 / rate))
    shape = 1.0 / cv**2
    return _times_from_gaps(rng.gamma(shape, 1.0 / (rate * shape), size=n - 1))


def batch_arrivals(n: int) -> np.ndarray:
    """Every request at t = 0 (the offline / batch setting of the theory papers)."""
    _check_n(n)
    return np.zeros(n)


def arrival_times(kind: str, n: int, *, rate: float | None = None, cv: float | None = None,
                  rng: np.random.Generator | None = None, what: str = "arrival process") -> np.ndarray:
    """Dispatch on the arrival kind; arguments a kind does not use must be left None."""
    if kind == "batch":
        if rate is not None or cv is not None:
            raise TraceError(f"{what}: batch arrivals take no rate or cv (got rate={rate}, cv={cv})")
        return batch_arrivals(n)
    if kind not in ARRIVAL_KINDS:
        raise TraceError(f"{what}: unknown arrival process {kind!r}; known: {', '.join(ARRIVAL_KINDS)}")
    if not isinstance(rng, np.random.Generator):
        raise TraceError(f"{what}: {kind} arrivals need an explicit numpy.random.Generator (rng), got {rng!r}")
    _check_rate(rate, what)
    if kind == "poisson":
        if cv is not None:
            raise TraceError(f"{what}: cv={cv} only applies to gamma arrivals (Poisson has cv = 1)")
        return poisson_arrivals(n, rate, rng)
    return gamma_arrivals(n, rate, cv, rng)


# --- length distributions -------------------------------------------------------------


class LengthDist(Protocol):
    """Draws `n` token lengths, each an integer >= 1."""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


def _at_least_one(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, 1).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Fixed:
    length: int

    def __post_init__(self) -> None:
        if int(self.length) != self.length or self.length < 1:
            raise TraceError(f"fixed length must be an integer >= 1, got {self.length!r}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.length, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class UniformInt:
    """Uniform over the integers low..high, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if int(self.low) != self.low or int(self.high) != self.high or not 1 <= self.low <= self.high:
            raise TraceError(f"uniform lengths need integers 1 <= low <= high, got ({self.low}, {self.high})")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.low, self.high, size=n, endpoint=True, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Geometric:
    """Geometric on 1, 2, ... with the given mean: the discrete exponential (memoryless lengths)."""

    mean: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.mean) or self.mean < 1:
            raise TraceError(f"geometric mean length must be >= 1, got {self.mean!r}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.geometric(1.0 / self.mean, size=n).astype(np.int64)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """round(exp(N(mu, sigma^2))), clipped to >= 1; the median length is about e^mu."""

    mu: float
    sigma: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.mu) or not np.isfinite(self.sigma) or self.sigma < 0:
            raise TraceError(f"lognormal needs finite mu and sigma >= 0, got ({self.mu}, {self.sigma})")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _at_least_one(np.rint(rng.lognormal(self.mu, self.sigma, size=n)))


@dataclass(frozen=True, slots=True, eq=False)
class Empirical:
    """Resample (with replacement) the lengths of a real trace; `name` is for messages."""

    values: np.ndarray
    name: str = field(default="empirical")

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.size == 0 or values.min() < 1:
            raise TraceError(f"{self.name}: empirical lengths must be non-empty and >= 1")
        object.__setattr__(self, "values", values.astype(np.int64))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.values[rng.integers(0, self.values.size, size=n)]


def as_length_dist(spec: int | LengthDist, what: str) -> LengthDist:
    """An int means a fixed length; anything else must already be a distribution."""
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return Fixed(int(spec))
    if not hasattr(spec, "sample"):
        raise TraceError(f"{what}: expected a length (int) or a length distribution, got {spec!r}")
    return spec


# --- request types ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestType:
    """A request shape drawn with probability proportional to `weight`."""

    prompt_len: int
    output_len: int
    weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prompt_len", "output_len"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise TraceError(f"request type: {name} must be an integer >= 1, got {value!r}")
        if not np.isfinite(self.weight) or self.weight <= 0:
            raise TraceError(f"request type: weight must be > 0, got {self.weight!r}")


def mixture(types: Sequence[RequestType], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_lens, output_lens) of `n` requests, each of a type drawn with P ∝ weight."""
    _check_n(n)
    if not types:
        raise TraceError("mixture needs at least one request type")
    weights = np.array([t.weight for t in types], dtype=np.float64)
    picks = rng.choice(len(types), size=n, p=weights / weights.sum())
    prompts = np.array([t.prompt_len for t in types], dtype=np.int64)
    outputs = np.array([t.output_len for t in types], dtype=np.int64)
    return prompts[picks], outputs[picks]


def synthetic_workload(
    n: int,
    *,
    rng: np.random.Generator,
    arrival: str = "poisson",
    rate: float | None = None,
    cv: float | None = None,
    prompt: int | LengthDist | None = None,
    output: int | LengthDist | None = None,
    types: Sequence[RequestType] | None = None,
    shared_prefix: int | LengthDist | None = None,
    num_prefixes: int = 1,
    turns: int = 1,
) -> list[Request]:
    """`n` requests: times from the arrival process, lengths from `prompt`/`output` or `types`.

    Give either both `prompt` and `output` (independent draws) or `types` (a mixture
    of fixed shapes). Draw order: arrivals, then prompt, then output (or types), then
    the shared-prefix lengths and picks (only when asked, so other workloads are unchanged).

    Shared prefixes (prefix caching workloads, with token-id-free identities): with
    `shared_prefix` (a length), `num_prefixes` system prompts get a length each, every
    conversation picks one uniformly, and it precedes the drawn prompt. With `turns` > 1
    the requests form ceil(n / turns) conversations served round-robin in arrival order
    (request i is turn i // C of conversation i % C); turn t's prompt is turn t-1's prompt
    and output plus t's drawn prompt (its new user tokens). Prefix identities come in
    blocks of SYNTHETIC_PREFIX_BLOCK tokens: a system prompt's full blocks are shared by
    everyone who picked it, a conversation's other blocks by its own turns.
    """
    if not isinstance(rng, np.random.Generator):
        raise TraceError(f"synthetic workload needs an explicit numpy.random.Generator (rng), got {rng!r}")
    if types is not None and (prompt is not None or output is not None):
        raise TraceError("synthetic workload: give prompt/output lengths or types, not both")
    if types is None and (prompt is None or output is None):
        raise TraceError("synthetic workload: give both prompt and output lengths (or types)")
    times_s = arrival_times(arrival, n, rate=rate, cv=cv, rng=rng, what="synthetic workload")
    if types is not None:
        prompt_lens, output_lens = mixture(types, n, rng)
    else:
        prompt_lens = as_length_dist(prompt, "prompt").sample(n, rng)
        output_lens = as_length_dist(output, "output").sample(n, rng)
    if shared_prefix is None and turns == 1:
        if num_prefixes != 1:
            raise TraceError("synthetic workload: num_prefixes needs shared_prefix")
        return requests_from_arrays(times_s, prompt_lens, output_lens)
    prompt_lens, ids = _shared_prefixes(n, rng, prompt_lens, output_lens, shared_prefix, num_prefixes, turns)
    return requests_from_arrays(times_s, prompt_lens, output_lens, ids, SYNTHETIC_PREFIX_BLOCK)


SYNTHETIC_PREFIX_BLOCK = 16  # tokens per prefix identity in synthetic workloads


def _shared_prefixes(n, rng, user_lens, output_lens, shared_prefix, num_prefixes, turns):
    """(prompt lengths, prefix ids) of the shared-prefix / multi-turn workload (see above)."""
    if not isinstance(num_prefixes, (int, np.integer)) or num_prefixes < 1:
        raise TraceError(f"synthetic workload: num_prefixes must be an integer >= 1, got {num_prefixes!r}")
    if not isinstance(turns, (int, np.integer)) or turns < 1:
        raise TraceError(f"synthetic workload: turns must be an integer >= 1, got {turns!r}")
    if shared_prefix is None and num_prefixes != 1:
        raise TraceError("synthetic workload: num_prefixes needs shared_prefix")
    bs = SYNTHETIC_PREFIX_BLOCK
    if shared_prefix is None:
        sys_lens = np.zeros(1, dtype=np.int64)
    else:
        sys_lens = as_length_dist(shared_prefix, "shared_prefix").sample(num_prefixes, rng)
    num_conv = -(-n // turns)
    picks = rng.integers(0, num_prefixes, size=num_conv) if num_prefixes > 1 else np.zeros(num_conv, dtype=np.int64)
    next_id = 0
    sys_ids = []
    for length in sys_lens.tolist():
        sys_ids.append(list(range(next_id, next_id + length // bs)))
        next_id += length // bs
    users, outs = user_lens.tolist(), output_lens.tolist()
    prompts = [0] * n
    ids: list[tuple[int, ...]] = [()] * n
    for c in range(num_conv):
        k = int(picks[c])
        stream = list(sys_ids[k])  # ids of the conversation's tokens so far, by 16-token block
        context = int(sys_lens[k])  # tokens before this turn's user tokens
        for i in range(c, n, num_conv):
            prompts[i] = context + users[i]
            end = prompts[i] + outs[i]
            need = -(-end // bs)
            if need > len(stream):
                stream.extend(range(next_id, next_id + need - len(stream)))
                next_id = stream[-1] + 1
            ids[i] = tuple(stream[:need])
            context = end
    return np.asarray(prompts, dtype=np.int64), ids
