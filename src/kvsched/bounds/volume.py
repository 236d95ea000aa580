"""Closed-form lower bounds on the hindsight-optimal TEL (the MC-SF paper's hindsight IP), O(n log n) with numpy.

* `volume_bound` (LB_vol): the k-th smallest completion time is at least
  `a_min + ceil(P_k / M)` (the k smallest memory-time areas must fit in the epochs
  since `a_min`) and at least the k-th smallest `a_i + o_i`.
* `lemma47_bound`: the weaker bound used in the proof of 2502.07115 (equal prompts,
  all arrivals at 0). Kept for completeness and tests.
* `sum_output_bound`: every request needs `o_i` rounds.
* `volume_bound_seconds`: the same argument on a real-time clock, valid whenever every
  round lasts at least `round_time_s` (trace mode).
* `volume_bound_without_each`: LB_vol of the instance minus request `i`, for every `i`;
  used by the IP to tighten per-request horizons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kvsched.bounds.instance import Instance

if TYPE_CHECKING:  # an annotation only: numpy.typing is not imported by every `simulate`
    from numpy.typing import ArrayLike


def request_volumes(prompt_len: np.ndarray, output_len: np.ndarray) -> np.ndarray:
    """Memory-time area of each request: `s o + o (o + 1) / 2` (int64)."""
    s = np.asarray(prompt_len, dtype=np.int64)
    o = np.asarray(output_len, dtype=np.int64)
    return s * o + o * (o + 1) // 2


def _volume_bound_arrays(a: np.ndarray, s: np.ndarray, o: np.ndarray, capacity: int) -> int:
    if a.size == 0:
        return 0
    prefix = np.cumsum(np.sort(request_volumes(s, o)))
    rounds = -(-prefix // capacity)  # ceil(P_k / M) in exact integer arithmetic
    earliest = np.sort(a + o)
    return int(np.maximum(a.min() + rounds, earliest).sum() - a.sum())


def volume_bound(inst: Instance) -> int:
    """LB_vol of the MC-SF paper's hindsight IP (valid for any prompts and arrivals)."""
    a, s, o = inst.arrays()
    return _volume_bound_arrays(a, s, o, inst.capacity)


def volume_bound_without_each(inst: Instance) -> np.ndarray:
    """`out[i]` = LB_vol of the instance with request `i` removed (int64 array).

    O(n^2 log n); the IP only needs it for instances it can solve (n in the hundreds).
    """
    a, s, o = inst.arrays()
    n = inst.n
    out = np.zeros(n, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        mask[i] = False
        out[i] = _volume_bound_arrays(a[mask], s[mask], o[mask], inst.capacity)
        mask[i] = True
    return out


def sum_output_bound(inst: Instance) -> int:
    """Trivial bound: `sum_i o_i`."""
    return int(sum(inst.output_len))


def lemma47_bound(inst: Instance) -> float | None:
    """Lemma 4.7 of 2502.07115; None unless all prompts are equal and all arrivals are 0.

    `(1/(6M)) sum_o n_o sum_{o' <= o} n_{o'} vol_{o'} + (1/6) sum_o n_o o`, sums over the
    distinct output lengths `o` with multiplicities `n_o`.
    """
    if inst.n == 0:
        return 0.0
    if len(set(inst.prompt_len)) != 1 or any(inst.arrival):
        return None
    s = inst.prompt_len[0]
    lengths, counts = np.unique(np.asarray(inst.output_len, dtype=np.int64), return_counts=True)
    vol = request_volumes(np.full_like(lengths, s), lengths)
    cumulative = np.cumsum(counts * vol)  # sum_{o' <= o} n_{o'} vol_{o'}
    first = float((counts * cumulative).sum()) / (6.0 * inst.capacity)
    second = float((counts * lengths).sum()) / 6.0
    return first + second


def volume_bound_seconds(
    arrival_times: ArrayLike,
    prompt_len: ArrayLike,
    output_len: ArrayLike,
    capacity: int,
    round_time_s: float,
) -> float:
    """Real-time LB_vol: a lower bound on total latency in seconds (trace mode).

    Valid for any schedule in which every round lasts at least `round_time_s` and a
    request that arrives at `a_i` cannot emit its first token before `a_i + round_time_s`:

    `sum_k max(a_min + ceil(P_k/M) * round_time_s, E_(k)) - sum_i a_i`,
    with `E_i = a_i + o_i * round_time_s`.

    The `k` requests finished first hold at least `P_k` token-rounds of memory, at most
    `M` per round, all after `a_min`: at least `ceil(P_k / M)` rounds.
    """
    a = np.asarray(arrival_times, dtype=np.float64)
    s = np.asarray(prompt_len, dtype=np.int64)
    o = np.asarray(output_len, dtype=np.int64)
    if not (a.shape == s.shape == o.shape) or a.ndim != 1:
        raise ValueError(f"arrays must be 1-D with equal lengths, got {a.shape}, {s.shape}, {o.shape}")
    if round_time_s < 0:
        raise ValueError(f"round_time_s must be >= 0, got {round_time_s}")
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if a.size == 0:
        return 0.0
    prefix = np.cumsum(np.sort(request_volumes(s, o)))
    rounds = -(-prefix // int(capacity))
    earliest = np.sort(a + o * float(round_time_s))
    return float(np.maximum(a.min() + rounds * float(round_time_s), earliest).sum() - a.sum())
