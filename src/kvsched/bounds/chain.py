"""Completion-chain bounds: tall requests of the hindsight model finish nearly one after another.

The model (the MC-SF paper's hindsight IP): a request started at `p` holds `s + j` tokens at
epoch `p + j`, `j = 1..o`, and completes at `C = p + o` holding its peak `s + o`.

**Pair gap.** Take requests `i`, `k` with `C_i <= C_k`. At epoch `C_i` request `i` holds
`s_i + o_i`, so every other request holds at most `M - s_i - o_i` then. If `k` is running at
`C_i` it holds `s_k + (C_i - p_k)` there, so `C_i - p_k <= M - s_i - o_i - s_k` and
`C_k = p_k + o_k >= C_i + o_k - (M - s_i - o_i - s_k)`; if it is not running then, it starts
at `C_i` or later and `C_k >= C_i + o_k`. Either way

    C_k - C_i >= g(i, k) = o_k - max(0, M - s_i - o_i - s_k).

**Chain family.** For a set `S` of requests give each `k` in `S` the tail length
`h_k = min(o_k, min over i in S, i != k of g(i, k)) = o_k - max(0, M - s_k - min_{i in S - k}(s_i + o_i))`.
Then the tails `(C_k - h_k, C_k]` of the members of `S` are pairwise disjoint: for `C_k <= C_l`,
`C_l - h_l >= C_l - g(k, l) >= C_k`. So the members of `S` behave like jobs of length `h_k` on
one machine, each released at `r_k = a_k + o_k - h_k` (since `C_k >= a_k + o_k`). The
families used are `S_theta = {i : s_i + o_i >= theta}`, one per distinct peak `theta`:
with outputs up to `M - s`, the tall requests' tails are most of their outputs.

Two uses:

* `chain_bound(inst)`, a closed form. Preemptive shortest-remaining-processing-time on
  the single machine completes, by every time, at least as many jobs as any schedule
  (Schrage's result for `1|r_j, pmtn|sum C_j`), so its `j`-th completion is a lower bound on
  the `j`-th smallest completion in `S` of every feasible schedule; so is the volume
  argument of LB_vol applied to `S` alone. The bound is `sum_j max(those) - sum_S a` plus
  LB_vol of the requests outside `S` (any schedule restricted to them is feasible for them),
  maximised over the families and never below LB_vol; and `throughput_bound`, which counts
  the requests any schedule can have completed by each epoch under the volume and one
  family's tail constraint at once (its docstring).
* `chain_families(inst, k)`: the `k` families with the largest single-machine bound, for
  the time-indexed IP (`kvsched.bounds.model`: at most one tail covers any epoch) and for
  CP-SAT (a no-overlap constraint on the tails).

`tests/test_chain.py` checks both against brute force on random tiny instances.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kvsched.bounds.instance import Instance
from kvsched.bounds.volume import _volume_bound_arrays, request_volumes, volume_bound


@dataclass(frozen=True, slots=True)
class ChainFamily:
    """Requests `members` whose tails `(C_k - tail_len[k], C_k]` are pairwise disjoint."""

    threshold: int  # every member has s + o >= threshold
    members: tuple[int, ...]  # request indices, tail_len >= 1
    tail_len: tuple[int, ...]  # h_k, aligned with members


def family_for_threshold(inst: Instance, threshold: int) -> ChainFamily:
    _, s, o = inst.arrays()
    peak = s + o
    idx = np.flatnonzero(peak >= threshold)
    if idx.size < 2:
        return ChainFamily(int(threshold), (), ())
    order = np.sort(peak[idx])
    smallest, second = int(order[0]), int(order[1])
    members, tails = [], []
    for k in idx.tolist():
        # smallest peak among the other members
        other = second if peak[k] == smallest else smallest
        h = int(o[k]) - max(0, inst.capacity - int(s[k]) - other)
        if h >= 1:
            members.append(int(k))
            tails.append(min(h, int(o[k])))
    if len(members) < 2:
        return ChainFamily(int(threshold), (), ())
    return ChainFamily(int(threshold), tuple(members), tuple(tails))


def srpt_completions(release: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Sorted completion times of preemptive SRPT on one machine (integer data)."""
    jobs = sorted(zip(release.tolist(), length.tolist(), strict=True))
    out: list[int] = []
    heap: list[int] = []  # remaining lengths of released, unfinished jobs
    t, nxt = 0, 0
    while nxt < len(jobs) or heap:
        if not heap:
            t = max(t, jobs[nxt][0])
        while nxt < len(jobs) and jobs[nxt][0] <= t:
            heapq.heappush(heap, jobs[nxt][1])
            nxt += 1
        rem = heapq.heappop(heap)
        until = jobs[nxt][0] if nxt < len(jobs) else None
        if until is None or t + rem <= until:
            t += rem
            out.append(t)
        else:  # run until the next release, then reconsider
            heapq.heappush(heap, rem - (until - t))
            t = until
    return np.asarray(sorted(out), dtype=np.int64)


def family_bound(inst: Instance, fam: ChainFamily) -> int:
    """Lower bound on TEL from one family (module docstring); LB_vol when the family is empty."""
    if not fam.members:
        return volume_bound(inst)
    a, s, o = inst.arrays()
    mem = np.asarray(fam.members, dtype=np.int64)
    h = np.asarray(fam.tail_len, dtype=np.int64)
    chain = srpt_completions(a[mem] + o[mem] - h, h)
    prefix = np.cumsum(np.sort(request_volumes(s[mem], o[mem])))
    vol = a[mem].min() + -(-prefix // inst.capacity)
    earliest = np.sort(a[mem] + o[mem])
    inside = int(np.maximum(np.maximum(chain, vol), earliest).sum() - a[mem].sum())
    rest = np.ones(inst.n, dtype=bool)
    rest[mem] = False
    outside = _volume_bound_arrays(a[rest], s[rest], o[rest], inst.capacity)
    return inside + outside


def _candidate_families(inst: Instance) -> list[ChainFamily]:
    _, s, o = inst.arrays()
    fams = [family_for_threshold(inst, int(t)) for t in np.unique(s + o)]
    return [f for f in fams if f.members]


def chain_bound(inst: Instance) -> int:
    """max(LB_vol, best family bound, throughput bound): a valid lower bound on the optimal TEL."""
    fams = _candidate_families(inst)
    best = max(volume_bound(inst), throughput_bound(inst, fams))
    for fam in fams:
        best = max(best, family_bound(inst, fam))
    return best


def _machine_value(inst: Instance, fam: ChainFamily) -> int:
    a, _, o = inst.arrays()
    mem = np.asarray(fam.members, dtype=np.int64)
    h = np.asarray(fam.tail_len, dtype=np.int64)
    return int(srpt_completions(a[mem] + o[mem] - h, h).sum())


def chain_families(inst: Instance, count: int) -> list[ChainFamily]:
    """Up to `count` families with the largest single-machine bound, distinct member sets."""
    if count <= 0:
        return []
    fams = sorted(_candidate_families(inst), key=lambda f: -_machine_value(inst, f))
    out: list[ChainFamily] = []
    seen: set[tuple[int, ...]] = set()
    for f in fams:
        if f.members not in seen:
            seen.add(f.members)
            out.append(f)
        if len(out) == count:
            break
    return out


def throughput_bound(inst: Instance, families: Sequence[ChainFamily] | None = None, grid: int = 11) -> int:
    """`sum_t (A(t) - D(t))` with `D(t)` a surrogate bound on the requests done by epoch `t`.

    TEL `= sum_{t >= 0} (A(t) - done(t))`, `A(t)` the requests arrived by `t` and `done(t)`
    those with `C <= t`. A set `F` done by `t` has `a + o <= t` for each member, fits its
    memory-time volume into epochs `a_min+1..t` (`sum_F vol <= M (t - a_min)`), and, for a
    family, fits the members' disjoint tails after the earliest release
    (`sum_{F in S} h <= t - min_S (a + o - h)`). Any weighted sum of two such constraints
    (weights `alpha`, `1 - alpha`) is valid, and the most requests meeting it is the count
    of the smallest weights; `D(t)` is the least such count over the families and a grid of
    `alpha` (alpha = 1 is the volume constraint alone).
    """
    if inst.n == 0:
        return 0
    a, s, o = inst.arrays()
    fams = list(_candidate_families(inst) if families is None else families)
    vol = request_volumes(s, o).astype(np.float64)
    alphas = np.linspace(0.0, 1.0, grid)
    # rows: (family, alpha); columns: requests. Chain part is 0 for non-members.
    h_rows = np.zeros((max(len(fams), 1), inst.n))
    release = np.full(max(len(fams), 1), np.inf)
    for f, fam in enumerate(fams):
        mem = np.asarray(fam.members, dtype=np.int64)
        h_rows[f, mem] = fam.tail_len
        release[f] = float((a[mem] + o[mem] - np.asarray(fam.tail_len)).min())
    a_min = int(a.min())
    ready = a + o
    total = 0
    t = a_min
    last_arrival = int(a.max())
    while True:
        arrived = int((a <= t).sum())
        cand = ready <= t
        k = int(cand.sum())
        if k == 0:
            done = 0
        else:
            v_cap = inst.capacity * (t - a_min)
            vw = vol[cand] / max(v_cap, 1e-300) if v_cap > 0 else np.full(k, np.inf)
            h_cap = np.maximum(t - release, 0.0)[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                hw = np.where(h_rows[:, cand] > 0, h_rows[:, cand] / h_cap, 0.0)  # (F, k); inf when no room
            w = alphas[None, :, None] * vw[None, None, :] + (1.0 - alphas)[None, :, None] * hw[:, None, :]
            w = np.sort(np.nan_to_num(w, nan=np.inf).reshape(-1, k), axis=1)
            # Generous tolerance: overcounting D(t) only weakens the bound, never breaks it.
            counts = (np.cumsum(w, axis=1) <= 1.0 + 1e-9).sum(axis=1)
            done = int(min(counts.min(), k))
        total += arrived - done
        if done >= inst.n and t >= last_arrival:
            break
        t += 1
    return total
