"""One replica of a cluster: the single-replica loop, driven from outside to global events.

A replica is `kvsched.loop`'s batch loop with its own scheduler, KV cache and backend. The
batch loop knows its whole request list in advance; a replica learns its requests one at a
time, when the router picks it. Between two global events the coordinator calls
`advance_to(t)`: the replica steps while a request arriving at `t` would not yet be admitted
(the clock plus the loop's snap tolerance is before `t`), and for that while `t` is its next
arrival: a fast-forwarded decode run stops at the first step ending at or after `t`, an idle
scheduler waits until `t`, and `View.arrivals_pending` is true. The coordinator then hands
it the request (`inject`) or not. After the last global event `drain` runs it to the end.

So a replica that receives every request behaves exactly as `loop.run` on the same list
(tested byte for byte), and a replica that is only advanced at its own arrivals (round-robin
or random routing, which read no replica state) equals `loop.run` on its share of the trace.

This drives the loop through its internals (`reqs`, `next_arrival`, `_admit_arrivals`,
`_schedule_and_apply`, `waiting`, `resident`, `now`, `num_done`, `finished`, `table`,
`steps`), the same two operations `run` and `OnlineLoop` share; the loop's request list
may grow while it runs (its `RequestTable` grows with it). The 1-replica equality test
guards that contract.
The next arrival is announced by a placeholder at the end of the loop's request list, which
the loop reads like any request (only its `arrival_time`) and never admits.
"""

from __future__ import annotations

from collections.abc import Callable

from kvsched.backend import Backend
from kvsched.decision import Scheduler
from kvsched.kvcache import KVCache
from kvsched.loop import TIME_EPS_S, Run, SchedulingError, _Loop
from kvsched.request import Request


class _NextArrival:
    """The loop's view of a global event it may or may not take part in."""

    __slots__ = ("arrival_time",)

    def __init__(self, t: float) -> None:
        self.arrival_time = t


class Replica:
    """A loop with its own scheduler, KV cache and backend, advanced to global events.

    Read by routers (never written): `num_outstanding` (routed, not yet finished or rejected),
    `num_waiting`, `num_running`, `kv_used_tokens`, `kv_used_blocks`, `num_free_blocks`,
    `num_queued_tokens`, `capacity_tokens`, `now`."""

    def __init__(self, index: int, scheduler: Scheduler, backend: Backend, kv: KVCache, *,
                 lookahead_tokens: int = 0, check_oracle: bool = False, max_steps: int | None = None,
                 role: str = "mixed", decode_pool: bool = True) -> None:
        self.index = index
        self.role = role
        self.scheduler = scheduler
        self.max_steps = max_steps
        self.loop = _Loop([], scheduler, backend, kv, None, 0, max_steps, lookahead_tokens, check_oracle, decode_pool)
        # Called with the requests each step finished (the disaggregated coordinator hands
        # prefilled requests to the decode pool); None: nobody listens.
        self.on_finish: Callable[[list[Request]], None] | None = None

    # --- driving ---------------------------------------------------------------------
    def inject(self, r: Request) -> None:
        """`r` arrives at this replica (at `r.arrival_time`, not before the last `advance_to`)."""
        reqs = self.loop.reqs
        if reqs and reqs[-1].arrival_time > r.arrival_time:
            raise ValueError(f"replica {self.index}: request {r.request_id} arrives at {r.arrival_time}, "
                             f"before request {reqs[-1].request_id} at {reqs[-1].arrival_time}")
        reqs.append(r)

    def advance_to(self, t: float) -> None:
        """Step until a request arriving at `t` would be admitted at the current step boundary."""
        loop = self.loop
        if loop.now + TIME_EPS_S >= t:
            return
        loop.reqs.append(_NextArrival(t))  # type: ignore[arg-type]
        try:
            while loop.now + TIME_EPS_S < t:
                loop._admit_arrivals()
                if not loop.waiting and not loop.resident:
                    loop.now = t  # as `run` does: idle until the next arrival
                    break
                self._step()
        finally:
            loop.reqs.pop()

    def drain(self) -> None:
        """Run until every request handed to this replica has finished or been rejected."""
        loop = self.loop
        n = len(loop.reqs)
        while loop.num_done < n:
            loop._admit_arrivals()
            if not loop.waiting and not loop.resident:
                if loop.next_arrival < n:
                    loop.now = max(loop.now, loop.reqs[loop.next_arrival].arrival_time)
                continue
            self._step()

    def _step(self) -> None:
        loop = self.loop
        loop._schedule_and_apply()
        if self.on_finish is not None and loop.finished:
            self.on_finish(loop.finished)
        if self.max_steps is not None and loop.step_index > self.max_steps:
            raise SchedulingError(f"replica {self.index}: exceeded max_steps={self.max_steps} with "
                                  f"{len(loop.reqs) - loop.num_done} requests unfinished")

    def result(self) -> Run:
        """The replica's Run (after `drain`): its requests packed in the loop's RequestTable."""
        loop, kv = self.loop, self.loop.kv
        return Run(loop.table, loop.steps, kv.capacity_tokens, kv.block_size, kv.num_blocks, loop.now)

    # --- what routers read -------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.loop.now

    @property
    def num_routed(self) -> int:
        return len(self.loop.reqs)

    @property
    def num_outstanding(self) -> int:
        return len(self.loop.reqs) - self.loop.num_done

    @property
    def num_waiting(self) -> int:
        """Queued requests holding no KV, including those handed over but not yet admitted."""
        loop = self.loop
        return len(loop.waiting) + len(loop.reqs) - loop.next_arrival

    @property
    def num_running(self) -> int:
        return len(self.loop.resident)

    @property
    def kv_used_tokens(self) -> int:
        return self.loop.kv.num_used_tokens

    @property
    def kv_used_blocks(self) -> int:
        kv = self.loop.kv
        return kv.num_blocks - kv.num_free_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.loop.kv.num_free_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.loop.kv.capacity_tokens

    @property
    def num_queued_tokens(self) -> int:
        """Tokens still to compute before the queued requests' next output token (their
        prefill, or recompute after a preemption): the token queue of token-JSQ. A scan of
        the queue, so it costs what the queue is long."""
        loop = self.loop
        total = sum(r.prompt_len + r.num_output_tokens - r.num_computed_tokens for r in loop.waiting.values())
        reqs = loop.reqs
        for k in range(loop.next_arrival, len(reqs)):
            r = reqs[k]
            total += r.prompt_len + r.num_output_tokens - r.num_computed_tokens
        return total
