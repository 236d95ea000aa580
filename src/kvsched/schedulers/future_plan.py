"""FuturePlan: MC-SF's future-memory check, incremental (MC-SF spec sections 4.2-4.3).

Requests in the plan run to their planned end without pause. Seen from the current
boundary, a request with footprint `f` now and `r` planned rounds left holds `f + c`
tokens after round c, for c = 1..r, and leaves after round r (the papers' ledger: the
token a round emits counts at once). Between two planned ends the alive set is fixed and
memory only grows, so the plan's peaks sit at planned ends (checkpoints), and checking
those is the same as checking every future round.

At checkpoint c the planned memory is m(c) = F(c) + c·N(c), with F(c) the sum of `f` and
N(c) the number of requests whose end is >= c. A candidate (f_i, r_i) fits iff

    max over checkpoints c <= r_i of (m(c) + c) + f_i <= cap   and
    m_others(r_i) + f_i + r_i <= cap.

`fits` is O(log C) through a prefix maximum of m(c) + c; `add` is O(C) (it raises
every checkpoint up to r_i and inserts r_i). A step therefore costs
O(S log S + admitted·C + log C), independent of the waiting queue.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable


class FuturePlan:
    """Planned memory at future checkpoints for a set of non-preemptive requests."""

    __slots__ = ("cap", "count", "ends", "prefix_max", "sum_f")

    def __init__(self, cap: int, alive: Iterable[tuple[int, int]] = ()) -> None:
        """cap: the memory the plan must respect (tokens).
        alive: (footprint_now, rounds_left >= 1) of the requests already running."""
        self.cap = cap
        pairs = sorted(alive, key=lambda p: p[1])
        ends: list[int] = []
        sum_f: list[int] = []
        count: list[int] = []
        # Suffix sums over requests sorted by end: walk from the latest end down.
        f_acc = n_acc = 0
        i = len(pairs) - 1
        while i >= 0:
            end = pairs[i][1]
            while i >= 0 and pairs[i][1] == end:
                f_acc += pairs[i][0]
                n_acc += 1
                i -= 1
            ends.append(end)
            sum_f.append(f_acc)
            count.append(n_acc)
        ends.reverse()
        sum_f.reverse()
        count.reverse()
        self.ends, self.sum_f, self.count = ends, sum_f, count
        self.prefix_max: list[int] = []
        self._refresh_prefix_max(0)

    def _refresh_prefix_max(self, start: int) -> None:
        ends, sum_f, count = self.ends, self.sum_f, self.count
        pm = self.prefix_max
        del pm[start:]
        best = pm[-1] if pm else -(1 << 62)
        for k in range(start, len(ends)):
            c = ends[k]
            v = sum_f[k] + c * (count[k] + 1)  # m(c) + c
            if v > best:  # noqa: PLR1730 (hot loop)
                best = v
            pm.append(best)

    def memory_at(self, c: int) -> int:
        """Planned memory after round c (c >= 1) of the requests in the plan."""
        k = bisect_left(self.ends, c)
        if k == len(self.ends):
            return 0
        return self.sum_f[k] + c * self.count[k]

    def peak(self) -> int:
        """The plan's highest planned memory over all future rounds."""
        return max((self.sum_f[k] + c * self.count[k] for k, c in enumerate(self.ends)), default=0)

    def fits(self, footprint: int, rounds: int) -> bool:
        """Would a request holding footprint + c after round c, for c = 1..rounds, fit?"""
        cap = self.cap - footprint
        k = bisect_right(self.ends, rounds) - 1
        if k >= 0 and self.prefix_max[k] > cap:
            return False
        return self.memory_at(rounds) + rounds <= cap

    def add(self, footprint: int, rounds: int) -> None:
        """Put the request into the plan (callers check `fits` first)."""
        ends, sum_f, count = self.ends, self.sum_f, self.count
        k = bisect_left(ends, rounds)
        if k == len(ends) or ends[k] != rounds:
            # A new checkpoint: the requests alive at it are those ending at or after it.
            above_f = sum_f[k] if k < len(ends) else 0
            above_n = count[k] if k < len(ends) else 0
            ends.insert(k, rounds)
            sum_f.insert(k, above_f)
            count.insert(k, above_n)
        for j in range(k + 1):
            sum_f[j] += footprint
            count[j] += 1
        self._refresh_prefix_max(0)


def brute_force_fits(cap: int, alive: Iterable[tuple[int, int]], footprint: int, rounds: int) -> bool:
    """The same check over every future round (tests compare `FuturePlan.fits` with it)."""
    alive = list(alive) + [(footprint, rounds)]
    horizon = max(r for _, r in alive)
    return all(sum(f + c for f, r in alive if r >= c) <= cap for c in range(1, horizon + 1))
