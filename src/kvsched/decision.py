"""What a scheduler sees (View) and what it returns (Decision), plus the Scheduler base.

Schedulers decide; the loop applies. A scheduler reads a read-only View and returns
`Decision(run={request_id: num_new_tokens}, preempt=(...))`. Resident requests left
out of `run` keep their KV (they are paused), which WAIT-style policies need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvsched.fastinit import fast_frozen_init
from kvsched.kvcache import blocks_for
from kvsched.request import Request

if TYPE_CHECKING:
    from kvsched.pool import DecodePool


class _NoEntries(Mapping):
    """An empty mapping that cannot change, for the defaults of `Decision.run` and
    `View.block_counts`. Being hashable, a dataclass takes it as a plain default where a dict
    needs `default_factory`, which the compiled core pays for on every construction (Cython's
    dataclass `__init__` imports `dataclasses` each time to find its factory sentinel)."""

    __slots__ = ()

    def __getitem__(self, key):
        raise KeyError(key)

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"

    def __reduce__(self):
        return "NO_ENTRIES"


NO_ENTRIES: Mapping = _NoEntries()


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class Decision:
    """One step's decision.

    run:     request id -> number of new tokens to compute this step (>= 1).
    preempt: resident request ids whose KV is freed before the step; they keep their
             generated tokens and later recompute prompt + output in one prefill (vLLM).
    repeat:  a promise that, while no request arrives or finishes and memory suffices,
             the scheduler would return this same pure-decode decision for `repeat`
             consecutive steps. The simulator uses it to fast-forward decode runs;
             it is ignored unless every request in `run` is decoding and nothing is
             preempted. 1 (the default) promises nothing.
    restart: resident request ids killed before the step: KV freed and generated tokens
             discarded, so they start over from the prompt (the theory papers' clearing,
             kill-and-restart). Preemptions and restarts are applied before `run`, so a
             request restarted here may be re-admitted in the same decision. An id in
             both `preempt` and `restart` is a scheduler error.
    idle_until: with an empty `run`, let the clock advance to this time (or to the next
             arrival, whichever comes first) instead of only to the next arrival: a
             schedule may leave the engine idle on purpose (the hindsight optimum does).
    pool:    every member of the decode pool (`View.pool`, `kvsched.pool`) decodes one
             token, ahead of the `run` entries in batch order. Only for schedulers that
             opt in (`Scheduler.uses_pool`); members named in `run`, `preempt` or
             `restart` leave the pool first and are handled one by one.
    """

    run: Mapping[int, int] = NO_ENTRIES
    preempt: tuple[int, ...] = ()
    repeat: int = 1
    restart: tuple[int, ...] = ()
    idle_until: float | None = None
    pool: bool = False


IDLE = Decision()


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class View:
    """Read-only state for one scheduling call.

    waiting:  requests that hold no KV, in arrival order (preempted ones keep their
              original arrival position).
    resident: requests holding KV, by id (running or paused).
    arrived / finished: requests that arrived / finished since the previous call, so
              schedulers can keep incremental structures (priority queues) up to date.
    """

    now: float
    step: int
    waiting: Mapping[int, Request]
    resident: Mapping[int, Request]
    arrived: Sequence[Request]
    finished: Sequence[Request]
    num_free_blocks: int
    num_blocks: int
    block_size: int
    arrivals_pending: bool  # more requests will arrive later
    block_counts: Mapping[int, int] = NO_ENTRIES  # resident request id -> blocks held
    # KV slots allocated beyond the computed tokens of every scheduled request (vLLM's
    # lookahead slots). 1 in theory mode: the papers charge the token a round emits at once.
    lookahead_tokens: int = 0
    # With automatic prefix caching (None without): answers `cached_tokens` for waiting
    # requests, from the cache as it is before this step.
    prefix_cache: PrefixHits | None = None
    # The decode pool (`kvsched.pool.DecodePool`), only for a scheduler with `uses_pool`
    # in a loop that runs one: members' Request fields are stale until `pool.flush()`;
    # `pool.outside_view` holds the resident requests that are not members.
    pool: DecodePool | None = None

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_free_tokens(self) -> int:
        return self.num_free_blocks * self.block_size

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        """Extra blocks `request` needs to compute `num_new_tokens` more tokens."""
        pc = self.prefix_cache
        if pc is not None and request.request_id not in self.block_counts:
            # Admission: the cached prefix is reused; only its free (evictable) blocks take
            # free blocks, those held by others are shared.
            # A scheduler that sized `num_new_tokens` without looking at the cache asked for
            # too many: the loop cuts it to what is left after the hit, and so does this.
            hit, evictable = pc.hit(request)
            total = min(hit + num_new_tokens, request.num_tokens) + self.lookahead_tokens
            return blocks_for(total, self.block_size) - hit // self.block_size + evictable
        total = request.num_computed_tokens + num_new_tokens + self.lookahead_tokens
        return max(0, blocks_for(total, self.block_size) - self.block_counts.get(request.request_id, 0))

    def cached_tokens(self, request: Request) -> int:
        """Tokens a waiting request would find in the prefix cache if admitted this step
        (full blocks, at most num_tokens - 1); 0 without prefix caching or when resident.
        Schedulers size its first chunk from the rest: num_tokens - cached_tokens."""
        pc = self.prefix_cache
        if pc is None or request.request_id in self.block_counts:
            return 0
        return pc.hit(request)[0]

    def blocks_freed_by(self, request_id: int) -> int:
        """Blocks that preempting a resident request returns to the free pool: all it holds,
        less (with prefix caching) the blocks other requests share."""
        pc = self.prefix_cache
        if pc is None:
            return self.block_counts.get(request_id, 0)
        return pc.kv.num_freed_by(request_id)


class PrefixHits:
    """One step's prefix-cache lookups for waiting requests, memoised: what the View
    reports and what the loop applies on admission are the same hit."""

    __slots__ = ("_memo", "_waiting", "kv")

    def __init__(self, kv, waiting: Mapping[int, Request]) -> None:
        self.kv, self._waiting, self._memo = kv, waiting, {}

    def blocks(self, request_id: int) -> list[int]:
        got = self._memo.get(request_id)
        if got is None:
            got = self._look_up(request_id)
        return got[0]

    def _look_up(self, request_id: int) -> tuple[list[int], int]:
        got = self._memo[request_id] = self.kv.lookup_hit(self._waiting[request_id])
        return got

    def hit(self, request) -> tuple[int, int]:
        """(cached tokens, how many of those blocks are free) for a waiting request."""
        rid = request.request_id
        got = self._memo.get(rid)
        if got is None:
            got = self._look_up(rid)
        return len(got[0]) * self.kv.block_size, got[1]


class Scheduler:
    """Base class: subclasses implement `schedule`. Register with `@SCHEDULERS.register`.

    `clairvoyant`: whether the scheduler may read true output lengths (its exact oracle).
    Set it to False and the loop hands the scheduler `BlindRequest`s, whose
    `output_len` raises, so a test run proves the scheduler never looks."""

    name: str = "scheduler"
    clairvoyant: bool = True
    # Addresses decoding requests as a group (`View.pool`, `Decision.pool`); a scheduler
    # without it sees every request's state exact, as always.
    uses_pool: bool = False
    # With `uses_pool`: a decision that only decodes the pool (empty `run`, nothing preempted,
    # `repeat` > 1) is the one `schedule` would return at every later step while the members'
    # next blocks fit in the free blocks, (with prefix caching) no key is added to or removed
    # from the cache's key map, nothing arrives, and nothing finishes unless no request is
    # waiting. The loop then applies it again without calling `schedule` (no View is built)
    # and reports what finished in the next call's `View.finished`; without the flag every
    # step calls it.
    reuse_steady_pool: bool = False
    # With `reuse_steady_pool`: arrivals do not change such a decision either when requests
    # were waiting when it was made (FIFO admission: they queue behind a head that cannot be
    # admitted); the loop reports them in the next call's `View.arrived`.
    steady_past_arrivals: bool = False

    def pool_decision_when_idle(self, pool: DecodePool) -> Decision | None:
        """With `reuse_steady_pool`: the decision `schedule` would return now that no request is
        waiting and every resident request is a member of `pool` whose next blocks fit (the
        loop has not yet reported requests that finished since the last call), or None to be
        called. The loop applies it without calling `schedule`."""
        return None

    def schedule(self, view: View) -> Decision:  # pragma: no cover - interface
        raise NotImplementedError

    def config(self) -> dict:
        """The constructor arguments, saved with every run."""
        return {}
