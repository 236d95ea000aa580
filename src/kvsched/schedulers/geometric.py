"""GBA and GSA (reconstructions) and the b-scaling kill-and-restart baseline.

Source of the mechanisms: Feng, Yang, Zhang, *Competitive Non-Clairvoyant KV-Cache
Scheduling for LLM Inference*, arXiv 2601.22996. Only that paper's abstract was
available, so the rules below are kvsched's **reconstruction** (docs/gsa.md). The published ratios (GBA 10.67 / 6.75, GSA 61.92 / 32) are sanity
bounds for these schedulers, not proven properties of them.

One machine runs all of them. Every attempt reserves its worst-case KV profile (footprint
+ c after its c-th round, for c up to its budget) and is admitted only if the reserved
profiles of all running attempts stay within M (`FuturePlan`, MC-SF's check). Candidates
are scanned in priority order, skipping those that do not fit (backfill). A volume credit
staggers starts: it grows by M per round up to `credit_cap`·M, each admission is charged
its (reserved) volume, and candidates are admitted while it is positive.

- `gba` (GBA-V, clairvoyant): budget = the true remaining length, priority = true KV
  area; never kills. `gba-batched` (GBA-B) adds geometric volume classes with a barrier;
  `gba-sync` admits only into an empty cache, without credit (the sawtooth ablation).
- `gsa` (GSA-V, non-clairvoyant): the i-th attempt of a job gets the budget
  min(ceil(L0·base^i), M - s); an attempt that uses it up without finishing is killed
  (tokens discarded) and the job goes back to the pool. `gsa-batched` adds classes.
- `b-scaling` (Jäger et al. 2211.02044, memory version): global rounds of budgets b^k,
  a start barrier between rounds, index order, no credit.

Theory sizes: a request's prompt size in the plan is prompt_len + `ledger_pad(view)`,
so the same code is exact under the theory ledger (block size 1) and safe on an engine.

Speed: when nothing is admitted, the scheduler promises (`Decision.repeat`) how many
rounds its decision stays the same: until the next kill, until the credit turns
positive, and until the earliest round at which a waiting candidate fits merely because
time passed (`FuturePlan.earliest_fit` over the Pareto-minimal waiting candidates).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from kvsched.decision import Decision, Scheduler, View
from kvsched.registry import SCHEDULERS
from kvsched.request import RequestStatus
from kvsched.schedulers.future_plan import FuturePlan, ledger_pad

STEADY = 1 << 30
GOLDEN_GSA_BASE = (1 + math.sqrt(13)) / 2  # argmin of 2 b^3 (b + 2) / (b - 1)^2 (docs/gsa.md)
LOOKAHEAD_ROUNDS = 256  # how far one call looks for a candidate that starts to fit
REGIMES = ("general", "large-memory")
LARGE_MEMORY_RATIO = 0.05  # ε = max(s + o) / M at or below this is the large-memory regime


def kv_area(prompt: int, rounds: int) -> int:
    """Memory x rounds of an attempt holding prompt + c in its c-th round, c = 1..rounds."""
    return prompt * rounds + rounds * (rounds + 1) // 2


def geometric_budget(first_budget: int, base: float, level: int, cap: int) -> int:
    """min(ceil(first_budget · base^level), cap), exact for integer bases (docs/gsa.md)."""
    if level > 200:  # base^level overflows long before this; the cap always wins
        return cap
    if float(base).is_integer():
        value = first_budget * int(base) ** level
    else:
        value = math.ceil(first_budget * base**level - 1e-9)
    return max(1, min(value, cap))


def volume_class(volume: int, capacity: int, base: float) -> int:
    """ceil(log_base(volume / M)): the smallest k with base^k >= volume / M (may be <= 0)."""
    ratio = volume / capacity
    k = math.ceil(math.log(ratio) / math.log(base))
    while base ** (k - 1) >= ratio:
        k -= 1
    while base**k < ratio:
        k += 1
    return k


def regime_of(job_size_ratio: float) -> str:
    """'large-memory' when every job is small next to the cache (ε <= 0.05), else 'general'."""
    return "large-memory" if job_size_ratio <= LARGE_MEMORY_RATIO else "general"


@dataclass(slots=True)
class _Attempt:
    budget: int  # rounds reserved (new tokens of this attempt)
    prompt: int  # plan footprint at admission: prompt + kept tokens + pad
    cost: float  # credit charged at admission
    cls: int  # volume class at admission (batched variants)
    capped: bool  # budget = M - s: it always finishes, never kill it


class _Pool:
    """Waiting jobs sorted by priority key, with numpy columns for vectorised checks."""

    def __init__(self) -> None:
        self.keys: list[tuple] = []
        self.ids: list[int] = []
        self.prompt = np.zeros(0, dtype=np.int64)
        self.budget = np.zeros(0, dtype=np.int64)
        self.cls = np.zeros(0, dtype=np.int64)
        self.cost: list[float] = []

    def __len__(self) -> int:
        return len(self.ids)

    def insert(self, key: tuple, rid: int, prompt: int, budget: int, cls: int, cost: float) -> None:
        i = bisect.bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.ids.insert(i, rid)
        self.cost.insert(i, cost)
        self.prompt = np.insert(self.prompt, i, prompt)
        self.budget = np.insert(self.budget, i, budget)
        self.cls = np.insert(self.cls, i, cls)

    def pop(self, i: int) -> None:
        del self.keys[i], self.ids[i], self.cost[i]
        self.prompt = np.delete(self.prompt, i)
        self.budget = np.delete(self.budget, i)
        self.cls = np.delete(self.cls, i)

    def discard(self, rid: int) -> None:
        """Drop job `rid` if it waits here (withdrawn by its client), O(length)."""
        try:
            self.pop(self.ids.index(rid))
        except ValueError:
            pass


def pareto_minimal(prompt: np.ndarray, budget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (prompt, budget) pairs not dominated by a smaller-or-equal pair.

    A candidate that is at least as large in both fits only if the smaller one does, so
    these few pairs decide whether any candidate fits."""
    order = np.lexsort((prompt, budget))
    p, b = prompt[order], budget[order]
    best_before = np.minimum.accumulate(np.concatenate(([np.iinfo(np.int64).max], p[:-1])))
    keep = p < best_before
    return p[keep], b[keep]


@dataclass(eq=False)
class _SliceScheduler(Scheduler):
    """The shared machine. Subclasses say what an attempt's budget, priority and class are."""

    stagger: bool = True  # volume-credit pipeline; False admits greedily
    credit_cap: float = 1.0  # B: the credit is capped at B·M
    batch_barrier: str = ""  # "" (none) | "start" | "finish": volume classes with a barrier
    scan_limit: int = 0  # stop after this many consecutive misfits (speed only); 0 = never
    _pool: _Pool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.credit_cap <= 0:
            raise ValueError(f"credit_cap must be > 0, got {self.credit_cap}")
        if self.batch_barrier not in ("", "start", "finish"):
            raise ValueError(f"batch_barrier must be '', 'start' or 'finish', got {self.batch_barrier!r}")
        if self.scan_limit < 0:
            raise ValueError(f"scan_limit must be >= 0, got {self.scan_limit}")
        self._pool = _Pool()
        self._running: dict[int, _Attempt] = {}
        self._level: dict[int, int] = {}  # failed attempts per job (GSA's ℓ_i)
        self._credit = 0.0
        self._last_step: int | None = None
        self._capacity = 0
        self._pad = 0

    def config(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    # --- what subclasses define --------------------------------------------------------
    def _budget(self, r, prompt: int) -> tuple[int, bool]:
        """(rounds to reserve for the next attempt, whether that is the always-finishing cap)."""
        raise NotImplementedError

    def _cost(self, prompt: int, budget: int) -> float:
        return float(kv_area(prompt, budget))

    def _key(self, r, prompt: int, budget: int, cost: float) -> tuple:
        return (cost, prompt, r.request_id)

    def _class(self, r, cost: float) -> int:
        return 0

    def _admit_only_when_empty(self) -> bool:
        return False

    def _uses_credit(self) -> bool:
        return self.stagger

    def _on_first_call(self, view: View) -> None:
        """Hook for parameters that depend on the workload (regime defaults)."""

    # --- pool bookkeeping ---------------------------------------------------------------
    def _enqueue(self, r, kept_tokens: int) -> None:
        prompt = r.prompt_len + kept_tokens + self._pad
        budget, _ = self._budget(r, prompt)
        cost = self._cost(prompt, budget)
        self._pool.insert(self._key(r, prompt, budget, cost), r.request_id, prompt, budget,
                          self._class(r, cost), cost)

    def _refund(self, attempt: _Attempt, tokens: int) -> float:
        return 0.0

    # --- the step -------------------------------------------------------------------------
    def schedule(self, view: View) -> Decision:
        if self._last_step is None:
            self._capacity = view.capacity_tokens
            self._pad = ledger_pad(view)
            self._on_first_call(view)
            elapsed = 1
        else:
            elapsed = view.step - self._last_step
        self._last_step = view.step
        M = self._capacity
        credit_on = self._uses_credit()
        cap = self.credit_cap * M
        if credit_on and elapsed > 1:  # the boundaries the loop skipped each topped up
            self._credit = min(self._credit + (elapsed - 1) * M, cap)

        for r in view.finished:
            attempt = self._running.pop(r.request_id, None)
            if attempt is not None:
                self._credit += self._refund(attempt, r.num_attempt_tokens)
            elif r.status is RequestStatus.ABORTED:  # a client disconnect (online loop) while waiting
                self._pool.discard(r.request_id)
            self._level.pop(r.request_id, None)

        killed = self._kills(view)
        if not self._running:
            self._credit = max(self._credit, 0.0)
        self._credit = min(self._credit + M, cap) if credit_on else math.inf
        for r in view.arrived:
            self._level.setdefault(r.request_id, 0)
            self._enqueue(r, r.num_output_tokens)

        run: dict[int, int] = {}
        alive = []
        resident, pad = view.resident, self._pad
        for rid, a in self._running.items():
            r = resident[rid]
            prompt, out = r.prompt_len, r.num_output_tokens
            run[rid] = prompt + out - r.num_computed_tokens
            alive.append((prompt + out + pad, max(1, a.budget - (out - r.attempt_start_output))))
        plan = FuturePlan(M, alive)
        admitted = self._scan(view, plan, run, killed)
        kill_kind = {"restart": killed} if self._kill_kind() == "restart" else {"preempt": killed}
        repeat = 1 if (admitted or killed) else self._quiet_rounds(plan, min((r for _, r in alive), default=STEADY))
        return Decision(run, repeat=repeat, **kill_kind)

    def _kill_kind(self) -> str:
        return "restart"

    def _kills(self, view: View) -> tuple[int, ...]:
        """Attempts that used their whole budget without finishing: killed at this boundary."""
        return ()

    def _current_class(self) -> int | None:
        if not self.batch_barrier or not len(self._pool):
            return None
        lowest = int(self._pool.cls.min())
        if self.batch_barrier == "finish" and self._running:
            lowest = min(lowest, min(a.cls for a in self._running.values()))
        return lowest

    def _candidates(self, start: int, cls: int | None) -> np.ndarray:
        """Pool positions from `start` on that the scan may consider, in priority order."""
        idx = np.arange(start, len(self._pool))
        if cls is not None:
            idx = idx[self._pool.cls[start:] == cls]
        return idx

    def _scan(self, view: View, plan: FuturePlan, run: dict[int, int], killed: tuple[int, ...]) -> int:
        pool = self._pool
        if not len(pool) or (self._admit_only_when_empty() and self._running):
            return 0
        admitted, start = 0, 0
        cls = self._current_class()
        while self._credit > 0 and start < len(pool):
            if cls is not None and not (pool.cls == cls).any():
                cls = self._current_class()  # the class is exhausted: the barrier lifts
                start = 0  # members of the next class may sit anywhere in the order
            idx = self._candidates(start, cls)
            if self.scan_limit:
                idx = idx[: self.scan_limit]
            if not idx.size:
                break
            ok = plan.fits_many(pool.prompt[idx], pool.budget[idx])
            hit = np.flatnonzero(ok)
            if not hit.size:
                if self._running or admitted:
                    break
                i = int(idx[0])  # an empty cache refuses it only through block padding: run it alone
            else:
                i = int(idx[hit[0]])
            rid, prompt, budget, cost = pool.ids[i], int(pool.prompt[i]), int(pool.budget[i]), pool.cost[i]
            r = view.waiting.get(rid) or view.resident[rid]
            _, capped = self._budget(r, prompt)
            self._running[rid] = _Attempt(budget, prompt, cost, int(pool.cls[i]), capped)
            pool.pop(i)
            plan.add(prompt, budget)
            kept = 0 if (rid in killed and self._kill_kind() == "restart") else r.num_output_tokens
            run[rid] = r.prompt_len + kept
            self._credit -= cost
            admitted += 1
            start = i
        return admitted

    def _quiet_rounds(self, plan: FuturePlan, ends: int) -> int:
        """How many rounds the decision just made stays the same (nothing admitted or
        killed); `ends` is the number of rounds until the first running attempt ends."""
        pool = self._pool
        if not len(pool) or (self._admit_only_when_empty() and self._running):
            return ends
        first = 1
        if self._uses_credit() and self._credit <= 0:
            first = int(-self._credit // self._capacity) + 1  # rounds until the top-ups make it positive
        last = min(ends - 1, first + LOOKAHEAD_ROUNDS)
        if last < first:
            return min(ends, first)
        idx = self._candidates(0, self._current_class())
        if self.scan_limit:
            idx = idx[: self.scan_limit]
        prompt, budget = pareto_minimal(pool.prompt[idx], pool.budget[idx])
        d = plan.earliest_fit(prompt, budget, first, last)
        return d if d is not None else min(ends, last + 1)


@SCHEDULERS.register("gba", "GBA-V (reconstruction of arXiv 2601.22996): clairvoyant, smallest KV area first, "
                             "reservation check, volume-credit stagger")
@dataclass(eq=False)
class GBAScheduler(_SliceScheduler):
    """Geometric Batching Algorithm, practical variant (reconstruction; docs/gsa.md).

    Clairvoyant: reads true output lengths. Admits in ascending KV area
    a_i = s o + o(o+1)/2 (ties: s, id) while the volume credit is positive and the
    reservation check passes, skipping misfits; never kills. `base` (4 in the general
    regime, 3 with large memory) only matters for `batch_barrier` (GBA-B)."""

    base: float = 0.0  # 0: by regime (4 general, 3 large-memory)
    regime: str = "auto"  # auto (from ε of the first call's requests) | general | large-memory

    def __post_init__(self) -> None:
        if self.regime not in ("auto", *REGIMES):
            raise ValueError(f"regime must be 'auto', 'general' or 'large-memory', got {self.regime!r}")
        if self.base and self.base <= 1:
            raise ValueError(f"base must be > 1, got {self.base}")
        super().__post_init__()
        self._base = self.base

    def _on_first_call(self, view: View) -> None:
        if not self._base:
            regime = self.regime
            if regime == "auto":
                peak = max((r.prompt_len + r.output_len + self._pad for r in view.arrived), default=0)
                regime = regime_of(peak / view.capacity_tokens)
            self._base = 3.0 if regime == "large-memory" else 4.0

    def _budget(self, r, prompt: int) -> tuple[int, bool]:
        return r.output_len - r.num_output_tokens, True

    def _class(self, r, cost: float) -> int:
        return volume_class(cost, self._capacity, self._base) if self.batch_barrier else 0


@SCHEDULERS.register("gba-batched", "GBA-B (reconstruction): GBA with geometric volume classes and a barrier")
@dataclass(eq=False)
class GBABatchedScheduler(GBAScheduler):
    """GBA-B (docs/gsa.md): classes ceil(log_base(a_i / M)), the smallest class first; the
    next class starts only once every job of the current one has started ("start")."""

    batch_barrier: str = "start"


@SCHEDULERS.register("gba-sync", "GBA-sync ablation: admissions only into an empty cache, no stagger")
@dataclass(eq=False)
class GBASyncScheduler(GBAScheduler):
    """GBA-sync (docs/gsa.md): synchronized batches, the memory sawtooth staggering removes."""

    stagger: bool = False

    def _admit_only_when_empty(self) -> bool:
        return True


@SCHEDULERS.register("gsa", "GSA-V (reconstruction of arXiv 2601.22996): non-clairvoyant geometric slices "
                             "with kill-and-restart, reservation check, volume-credit stagger")
@dataclass(eq=False)
class GSAScheduler(_SliceScheduler):
    """Geometric Slicing Algorithm, practical variant (reconstruction; docs/gsa.md).

    Non-clairvoyant: it never reads output lengths (the loop hides them). A job's
    attempt number ℓ gets the budget b = min(ceil(L0·base^ℓ), M - s) and reserves the
    volume v = s b + b(b+1)/2; attempts are admitted in ascending v (ties: s, id) while
    the credit is positive and the reservation check passes. An attempt that produced b
    tokens without finishing is killed at that boundary (tokens discarded, ℓ += 1) and
    may restart at once. With `refund`, a job finishing early gives back the unused part
    of its volume. `resume=True` keeps the generated tokens instead (recompute preemption,
    a realism variant). The regime cannot be measured without lengths, so it is an option:
    base 2.3028 in general, 2 with large memory."""

    base: float = 0.0  # 0: by regime
    regime: str = "general"
    first_budget: int = 1  # L0
    refund: bool = True
    resume: bool = False

    clairvoyant = False

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be 'general' or 'large-memory' (GSA cannot see lengths to pick it), "
                             f"got {self.regime!r}")
        if self.base and self.base <= 1:
            raise ValueError(f"base must be > 1, got {self.base}")
        if self.first_budget < 1:
            raise ValueError(f"first_budget must be >= 1, got {self.first_budget}")
        super().__post_init__()
        self._base = self.base or (2.0 if self.regime == "large-memory" else GOLDEN_GSA_BASE)

    def _budget(self, r, prompt: int) -> tuple[int, bool]:
        cap = max(1, self._capacity - prompt)
        budget = geometric_budget(self.first_budget, self._base, self._level[r.request_id], cap)
        return budget, budget == cap

    def _class(self, r, cost: float) -> int:
        return volume_class(cost, self._capacity, self._base) if self.batch_barrier else 0

    def _refund(self, attempt: _Attempt, tokens: int) -> float:
        return attempt.cost - kv_area(attempt.prompt, tokens) if self.refund else 0.0

    def _kill_kind(self) -> str:
        return "preempt" if self.resume else "restart"

    def _kills(self, view: View) -> tuple[int, ...]:
        killed = []
        resident = view.resident
        for rid, a in list(self._running.items()):
            if a.capped:
                continue
            r = resident[rid]
            if r.num_output_tokens - r.attempt_start_output >= a.budget:
                killed.append(rid)
                del self._running[rid]
                self._level[rid] += 1
                self._enqueue(r, r.num_output_tokens if self.resume else 0)
        return tuple(killed)


@SCHEDULERS.register("gsa-batched", "GSA-B (reconstruction): GSA with geometric classes over reserved volume")
@dataclass(eq=False)
class GSABatchedScheduler(GSAScheduler):
    """GSA-B (docs/gsa.md): classes ceil(log_base(v_i / M)) over the current reserved
    volume, smallest class first, with a start barrier; a killed job moves up a class."""

    batch_barrier: str = "start"


@SCHEDULERS.register("b-scaling", "b-scaling kill-and-restart (Jäger et al.), memory version: rounds of "
                                  "budgets b^k with a start barrier")
@dataclass(eq=False)
class BScalingScheduler(GSAScheduler):
    """b-scaling kill-and-restart (Jäger et al., arXiv 2211.02044), memory version (docs/gsa.md).

    Round k gives every unfinished job one attempt with budget min(ceil(b^k), M - s); a
    job of round k+1 starts only once every waiting job of round k has started. Within
    a round, index (id) order with backfill; no credit, no volume order, no refund."""

    base: float = 3.0
    stagger: bool = False
    refund: bool = False
    batch_barrier: str = "start"

    def _key(self, r, prompt: int, budget: int, cost: float) -> tuple:
        return (self._level[r.request_id], r.request_id)

    def _class(self, r, cost: float) -> int:
        return self._level[r.request_id]
