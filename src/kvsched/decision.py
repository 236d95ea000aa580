"""What a scheduler sees (View) and what it returns (Decision), plus the Scheduler base.

Schedulers decide; the loop applies. A scheduler reads a read-only View and returns
`Decision(run={request_id: num_new_tokens}, preempt=(...))`. Resident requests left
out of `run` keep their KV (they are paused), which WAIT-style policies need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kvsched.kvcache import blocks_for
from kvsched.request import Request


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
    """

    run: Mapping[int, int] = field(default_factory=dict)
    preempt: tuple[int, ...] = ()
    repeat: int = 1
    restart: tuple[int, ...] = ()
    idle_until: float | None = None


IDLE = Decision()


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
    block_counts: Mapping[int, int] = field(default_factory=dict)  # resident request id -> blocks held
    # KV slots allocated beyond the computed tokens of every scheduled request (vLLM's
    # lookahead slots). 1 in theory mode: the papers charge the token a round emits at once.
    lookahead_tokens: int = 0

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_free_tokens(self) -> int:
        return self.num_free_blocks * self.block_size

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        """Extra blocks `request` needs to compute `num_new_tokens` more tokens."""
        total = request.num_computed_tokens + num_new_tokens + self.lookahead_tokens
        return max(0, blocks_for(total, self.block_size) - self.block_counts.get(request.request_id, 0))


class Scheduler:
    """Base class: subclasses implement `schedule`. Register with `@SCHEDULERS.register`.

    `clairvoyant`: whether the scheduler may read true output lengths (its exact oracle).
    Set it to False and the loop hands the scheduler `BlindRequest`s, whose
    `output_len` raises, so a test run proves the scheduler never looks."""

    name: str = "scheduler"
    clairvoyant: bool = True

    def schedule(self, view: View) -> Decision:  # pragma: no cover - interface
        raise NotImplementedError

    def config(self) -> dict:
        """The constructor arguments, saved with every run."""
        return {}
