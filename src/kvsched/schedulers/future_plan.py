"""FuturePlan: MC-SF's future-memory check, incremental (the MC-SF paper's algorithm).

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

This is also the reservation check of kvsched's GBA/GSA (docs/gsa.md): an attempt with budget b
reserves its worst case, footprint + c for c = 1..b, so GBA, GSA, b-scaling and Sorted-F
use this class too. `fits_many` tests many candidates at once, and with `delay=d` it
tests them as of d rounds later, when nothing in the plan has ended yet; schedulers use
that to promise how long their decision stays unchanged (`Decision.repeat`).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable

import numpy as np


def ledger_pad(view) -> int:
    """What to add to prompt + generated tokens to get a request's footprint in the plan.

    The plan charges footprint + c after round c. The cache holds prompt + generated +
    lookahead - 1 tokens after the round that emits a token, rounded up to whole blocks
    (at most block_size - 1 more), so this pad makes the plan an upper bound, exact with
    block size 1. It is -1 with no lookahead and block size 1: the batch theory mode
    stores a prompt of s tokens as prompt_len = s + 1 (docs/gsa.md)."""
    return view.lookahead_tokens + view.block_size - 2


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

    def fits_many(self, footprints: np.ndarray, rounds: np.ndarray, delay: int = 0) -> np.ndarray:
        """`fits` for many candidates at once (a bool array), as of `delay` rounds from now.

        With delay d > 0 the plan's requests hold d more tokens and have d fewer rounds
        left; d must be below every planned end (nothing in the plan has left)."""
        footprints = np.asarray(footprints, dtype=np.int64)
        rounds = np.asarray(rounds, dtype=np.int64)
        cap = self.cap - footprints
        if not self.ends:
            return rounds <= cap
        if delay and delay >= self.ends[0]:
            raise ValueError(f"delay {delay} reaches the plan's first end {self.ends[0]}")
        ends = np.asarray(self.ends, dtype=np.int64)
        # Seen from d rounds later, checkpoint c is the absolute round c + d: the memory
        # there is the same, and a candidate's c-th round is absolute round c + d.
        last = rounds + delay
        k = np.searchsorted(ends, last, side="right") - 1
        peak = np.where(k >= 0, np.asarray(self.prefix_max, dtype=np.int64)[np.maximum(k, 0)] - delay, 0)
        j = np.searchsorted(ends, last, side="left")
        inside = j < len(ends)
        jj = np.minimum(j, len(ends) - 1)
        at_end = np.where(inside, np.asarray(self.sum_f, dtype=np.int64)[jj] + last * np.asarray(self.count)[jj], 0)
        return (peak <= cap) & (at_end + rounds <= cap)

    def earliest_fit(self, footprints: np.ndarray, rounds: np.ndarray, first: int, last: int) -> int | None:
        """The smallest delay d in [first, last] at which some candidate fits, or None.

        `last` must be below the plan's first end."""
        if last < first:
            return None
        if self.ends and last >= self.ends[0]:
            raise ValueError(f"last delay {last} reaches the plan's first end {self.ends[0]}")
        footprints = np.asarray(footprints, dtype=np.int64)
        rounds = np.asarray(rounds, dtype=np.int64)
        if not self.ends:
            return first if bool((footprints + rounds <= self.cap).any()) else None
        delays = np.arange(first, last + 1, dtype=np.int64)
        ends = np.asarray(self.ends, dtype=np.int64)
        pm = np.asarray(self.prefix_max, dtype=np.int64)
        sum_f, count = np.asarray(self.sum_f, dtype=np.int64), np.asarray(self.count, dtype=np.int64)
        absolute = delays[:, None] + rounds[None, :]  # (delays, candidates)
        k = np.searchsorted(ends, absolute, side="right") - 1
        peak = np.where(k >= 0, pm[np.maximum(k, 0)] - delays[:, None], 0)
        j = np.searchsorted(ends, absolute, side="left")
        jj = np.minimum(j, len(ends) - 1)
        at_end = np.where(j < len(ends), sum_f[jj] + absolute * count[jj], 0)
        cap = self.cap - footprints[None, :]
        ok = ((peak <= cap) & (at_end + rounds[None, :] <= cap)).any(axis=1)
        hit = np.flatnonzero(ok)
        return int(delays[hit[0]]) if hit.size else None

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


# Checkpoints from which `AbsolutePlan` keeps its arrays in numpy. An event there costs a
# fixed ~10 us (a handful of numpy calls) where the lists cost ~0.1 us per checkpoint of the
# prefix; a query (`fits`) is a little dearer in numpy for short prefixes, and MC-SF asks
# several per event on azure-conv (64-96 checkpoints there: at 64, bench_cpu.py mcsf was 2%
# slower), so the switch is at 128, where bench_sim.py's 256-running rows gain.
NUMPY_FROM_CHECKPOINTS = 128


class AbsolutePlan:
    """`FuturePlan` kept across steps in absolute round time, for a scheduler whose running
    requests all run every round (MC-SF with the decode pool, `kvsched.pool`).

    Seen from round `now`, a request with footprint f and r rounds left holds f + c after
    round c. In absolute time that is `base + A` at every absolute round A <= `end`, with
    base = f - now and end = now + r: both constant while the request runs and is not
    re-planned. So the plan changes only on events (admit, finish, clear, re-plan), and it
    answers `FuturePlan.fits` for any later `now` without being rebuilt.

    Arrays over the checkpoints (absolute ends, ascending): the suffix sums F(A) of base and
    N(A) of requests, and v(A) = F(A) + A (N(A) + 1) = m(A) + A, the quantity whose maximum
    over the checkpoints up to a candidate's end `FuturePlan.fits` bounds. An event updates
    the checkpoints up to its end (one list comprehension per array, or from
    `NUMPY_FROM_CHECKPOINTS` checkpoints a few numpy calls); a checkpoint that has passed
    (A <= now) is never read again, so a request leaving at or after its planned end costs
    nothing and passed checkpoints are dropped from the front when met.

    A request that outlives its plan is re-planned one round at a time (end = now + 1 at
    every round): it goes to the `late` group, whose end is always the next round, so it
    counts only at the first checkpoint. `due(now)` hands out the requests whose end has
    passed, for the caller to re-plan.
    """

    __slots__ = ("_arr", "_by_end", "_count", "_dirty", "_end_heap", "_ends", "_entries", "_late", "_late_sum",
                 "_numpy_from", "_sum_f", "_v", "cap")

    def __init__(self, cap: int, numpy_from: int | None = None) -> None:
        self.cap = cap
        self._entries: dict[int, tuple[int, int]] = {}  # id -> (base, end)
        self._by_end: dict[int, list] = {}  # end -> [sum of base, {id: base}]
        self._end_heap: list[int] = []  # ends ever used (stale ones skipped)
        self._late: dict[int, int] = {}  # id -> base, end = now + 1 at every round
        self._late_sum = 0
        self._ends: list[int] = []
        self._sum_f: list[int] = []
        self._count: list[int] = []
        self._v: list[int] = []
        # With at least `numpy_from` checkpoints the three arrays live in `_arr` instead of the lists:
        # rows sum_f, v, end, count over columns [:len(_ends)] (spare columns after), so a prefix
        # update is a few vectorised passes; below it, list comprehensions are cheaper than numpy calls.
        self._numpy_from = NUMPY_FROM_CHECKPOINTS if numpy_from is None else numpy_from
        self._arr: np.ndarray | None = None
        self._dirty = True  # the arrays are built at the first query (bulk construction)

    def __len__(self) -> int:
        return len(self._entries) + len(self._late)

    def __contains__(self, rid: int) -> bool:
        return rid in self._entries or rid in self._late

    def _to_numpy(self) -> None:
        n = len(self._ends)
        arr = np.zeros((4, max(2 * n, 4)), dtype=np.int64)
        arr[:, :n] = (self._sum_f, self._v, self._ends, self._count)
        self._arr = arr
        self._sum_f, self._count, self._v = [], [], []

    def _to_lists(self) -> None:
        arr, n = self._arr, len(self._ends)
        self._sum_f, self._v, self._count = arr[0, :n].tolist(), arr[1, :n].tolist(), arr[3, :n].tolist()
        self._arr = None

    def add(self, rid: int, base: int, end: int) -> None:
        """Plan request `rid` to hold base + A at every absolute round A <= end."""
        self._entries[rid] = (base, end)
        slot = self._by_end.get(end)
        if slot is None:
            self._by_end[end] = [base, {rid: base}]
            heapq.heappush(self._end_heap, end)
        else:
            slot[0] += base
            slot[1][rid] = base
        if self._dirty:
            return
        ends = self._ends
        k = bisect_left(ends, end)
        if self._arr is not None:
            self._add_numpy(k, base, end)
            return
        sum_f, count, v = self._sum_f, self._count, self._v
        if k == len(ends) or ends[k] != end:
            if len(ends) + 1 >= self._numpy_from:
                self._to_numpy()
                self._add_numpy(k, base, end)
                return
            # A new checkpoint: the requests alive at it are those ending at or after it.
            f, n = (sum_f[k], count[k]) if k < len(ends) else (0, 0)
            ends.insert(k, end)
            sum_f.insert(k, f)
            count.insert(k, n)
            v.insert(k, f + end * (n + 1))
        k += 1
        sum_f[:k] = [f + base for f in sum_f[:k]]
        count[:k] = [n + 1 for n in count[:k]]
        v[:k] = [x + base + a for x, a in zip(v[:k], ends[:k], strict=True)]

    def _add_numpy(self, k: int, base: int, end: int) -> None:
        """`add`'s checkpoint update over the numpy arrays (k = bisect_left(ends, end)): the same steps."""
        ends, arr = self._ends, self._arr
        n = len(ends)
        if k == n or ends[k] != end:
            if n == arr.shape[1]:
                arr = self._arr = np.concatenate((arr, np.zeros_like(arr)), axis=1)
            f, c = (int(arr[0, k]), int(arr[3, k])) if k < n else (0, 0)
            arr[:, k + 1:n + 1] = arr[:, k:n]
            arr[:, k] = (f, f + end * (c + 1), end, c)
            ends.insert(k, end)
        k += 1
        arr[:2, :k] += base  # sum_f and v
        arr[1, :k] += arr[2, :k]
        arr[3, :k] += 1

    def add_late(self, rid: int, base: int) -> None:
        """Plan `rid` one round at a time (it outlived its plan)."""
        self._late[rid] = base
        self._late_sum += base

    def remove(self, rid: int, now: int) -> None:
        """Take `rid` out of the plan at round `now` (finished or cleared); absent ids are ignored."""
        base = self._late.pop(rid, None)
        if base is not None:
            self._late_sum -= base
            return
        entry = self._entries.pop(rid, None)
        if entry is None:
            return
        base, end = entry
        slot = self._by_end[end]
        del slot[1][rid]
        emptied = not slot[1]
        if emptied:
            del self._by_end[end]
        else:
            slot[0] -= base
        if self._dirty or end <= now:
            return  # a passed checkpoint: never read again
        ends = self._ends
        k = bisect_left(ends, end)
        arr = self._arr
        if arr is not None:
            if emptied:
                n = len(ends)
                arr[:, k:n - 1] = arr[:, k + 1:n]
                del ends[k]
            else:
                k += 1
            arr[:2, :k] -= base
            arr[1, :k] -= arr[2, :k]
            arr[3, :k] -= 1
            return
        sum_f, count, v = self._sum_f, self._count, self._v
        if emptied:
            del ends[k], sum_f[k], count[k], v[k]
        else:
            k += 1
        sum_f[:k] = [f - base for f in sum_f[:k]]
        count[:k] = [n - 1 for n in count[:k]]
        v[:k] = [x - base - a for x, a in zip(v[:k], ends[:k], strict=True)]

    def due(self, now: int) -> list[tuple[int, int]]:
        """Remove and return (id, base) of the requests whose planned end is <= now."""
        heap, by_end = self._end_heap, self._by_end
        out: list[tuple[int, int]] = []
        while heap and heap[0] <= now:
            slot = by_end.pop(heapq.heappop(heap), None)
            if slot is None:
                continue  # emptied earlier
            for rid, base in slot[1].items():
                del self._entries[rid]
                out.append((rid, base))
        return out

    def _rebuild(self) -> None:
        by_end = self._by_end
        ends = sorted(by_end)
        n = len(ends)
        sum_f = [0] * n
        count = [0] * n
        v = [0] * n
        f_acc = n_acc = 0
        for k in range(n - 1, -1, -1):
            a = ends[k]
            slot = by_end[a]
            f_acc += slot[0]
            n_acc += len(slot[1])
            sum_f[k] = f_acc
            count[k] = n_acc
            v[k] = f_acc + a * (n_acc + 1)
        self._ends, self._sum_f, self._count, self._v = ends, sum_f, count, v
        self._arr = None
        if n >= self._numpy_from:
            self._to_numpy()
        self._dirty = False

    def fits(self, footprint: int, rounds: int, now: int) -> bool:
        """`FuturePlan.fits(footprint, rounds)` of the plan as seen from round `now` (call
        `due(now)` first: every planned end is then > now)."""
        if self._dirty:
            self._rebuild()
        ends = self._ends
        arr = self._arr
        if ends and ends[0] <= now:  # passed checkpoints: drop them
            i = bisect_right(ends, now)
            if arr is None:
                del ends[:i], self._sum_f[:i], self._count[:i], self._v[:i]
            else:
                n = len(ends)
                arr[:, :n - i] = arr[:, i:n]
                del ends[:i]
                if 2 * len(ends) < self._numpy_from:  # halfway below, so a plan near it does not flip every event
                    self._to_lists()
                    arr = None
        if arr is not None:
            return self._fits_numpy(arr, footprint, rounds, now)
        sum_f, count = self._sum_f, self._count
        cap = self.cap - footprint
        late = self._late
        if late:
            # The first checkpoint (now + 1) holds every request, the late group included.
            n_all = len(late) + (count[0] if ends else 0)
            f_all = self._late_sum + (sum_f[0] if ends else 0)
            if f_all + (now + 1) * (n_all + 1) - now > cap:
                return False
        last = now + rounds
        k = bisect_right(ends, last)
        if k and max(self._v[:k]) - now > cap:
            return False
        k = bisect_left(ends, last)
        mem = sum_f[k] + last * count[k] if k < len(ends) else 0
        if rounds == 1 and late:
            mem += self._late_sum + last * len(late)
        return mem + rounds <= cap

    def _fits_numpy(self, arr: np.ndarray, footprint: int, rounds: int, now: int) -> bool:
        """`fits` over the numpy arrays (passed checkpoints already dropped): the same steps."""
        ends = self._ends
        cap = self.cap - footprint
        late = self._late
        if late:
            n_all = len(late) + (int(arr[3, 0]) if ends else 0)
            f_all = self._late_sum + (int(arr[0, 0]) if ends else 0)
            if f_all + (now + 1) * (n_all + 1) - now > cap:
                return False
        last = now + rounds
        k = bisect_right(ends, last)
        if k and int(arr[1, :k].max()) - now > cap:
            return False
        k = bisect_left(ends, last)
        mem = int(arr[0, k]) + last * int(arr[3, k]) if k < len(ends) else 0
        if rounds == 1 and late:
            mem += self._late_sum + last * len(late)
        return mem + rounds <= cap
