"""vLLM v1's scheduler, and the policies that share its mechanics (SJF/SRPT, static reservation).

Rules (vllm/v1/core/sched/scheduler.py; see docs/schedulers.md):
- One token budget per step (`max_num_batched_tokens`) and `max_num_seqs`.
- Phase 1, running requests in admission order: each gets
  min(tokens left, long_prefill_token_threshold if set, budget). When its KV blocks do
  not fit, preempt the tail of the running list (FCFS policy) or the latest arrival
  (PRIORITY policy) until it fits or the request itself is preempted. Preemption frees
  all KV (recompute later) and puts the request at the head of the waiting queue.
- Phase 2, only if nothing was preempted this step: admit waiting requests while budget
  is left and fewer than `max_num_seqs` run; chunked prefill gives a partial chunk,
  without it a prompt over the budget stops admission; a failed allocation stops
  admission, which never preempts.

Automatic prefix caching (`enable_prefix_caching`): on by default for `vllm`, as in vLLM
itself, off by default for the policies built on these mechanics (sjf, srpt, fcfs-static
keep their papers' semantics unless asked); `--no-prefix-caching` turns it off (see
docs/architecture.md). A waiting request's first chunk starts after its cached prefix
(`View.cached_tokens`), a request re-admitted after preemption reuses those of its blocks
not yet evicted, and a victim frees only the blocks it alone holds.

`preemption="restart"` turns preemption into kill-and-restart (the victim's generated
tokens are discarded): the FCFS baseline of docs/gsa.md. vLLM itself never
reads output lengths, so `vllm` is non-clairvoyant; the policies that rank by a
predictor are clairvoyant exactly when that predictor is the oracle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kvsched.decision import NO_ENTRIES, Decision, Scheduler, View
from kvsched.kvcache import blocks_for
from kvsched.predictors import make_predictor
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.queues import FCFSQueue, PriorityQueue

STEADY = 1 << 30  # Decision.repeat when the same decode decision holds until an event
_POOL_STEADY = Decision(NO_ENTRIES, (), STEADY, pool=True)  # every member decodes, nothing else


@dataclass(eq=False)
class VLLMScheduler(Scheduler):
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0  # 0 = off
    policy: str = "fcfs"  # "fcfs": preempt the tail; "priority": preempt the latest arrival
    preemption: str = "recompute"  # recompute (vLLM: keep generated tokens) | restart (discard them)
    # vLLM 0.32 rules, off by default (existing results unchanged); the vLLM plugin turns
    # them on from vLLM's config. reserve_full_sequence: admit a waiting request only if
    # its whole current sequence (prompt + output so far) fits in the free blocks, not just
    # its first chunk (vLLM's scheduler_reserve_full_isl, default True in 0.32).
    # threshold_needs_two: long_prefill_token_threshold applies only when more than one
    # request is waiting or running at the start of the step (vLLM 0.32).
    reserve_full_sequence: bool = False
    threshold_needs_two: bool = False
    # Automatic prefix caching as in vLLM (`simulate` builds the KV model it asks for):
    # admission reuses cached full blocks and sizes the first chunk after them. On by
    # default as in vLLM (issue 17); the policies below turn it off for their papers' semantics.
    enable_prefix_caching: bool = True
    # Running requests by id, in admission order (insertion-ordered: a finish or a victim
    # is removed in O(1), the FCFS victim is the last entry).
    _running: dict[int, Request] = field(init=False, repr=False)
    _waiting: object = field(init=False, repr=False)

    clairvoyant = False  # a class attribute, not an option
    uses_pool = True  # decoders as a group (docs/architecture.md, Performance)
    # A steady pool-only decision holds until a block shortage, a change of the prefix cache's
    # key map, an arrival into an empty queue or a finish with requests waiting: phase 1 is
    # the pool alone, and admission stays blocked (or has no one to admit) since free memory
    # only shrinks while the queue head's need cannot fall faster (its hit is unchanged; an
    # own run, outside the key map, loses its highest blocks first, each eviction taking one
    # free block and lowering its need by at most one). Arrivals behind a blocked head change
    # nothing in FIFO order (`steady_past_arrivals`), unlike a priority queue's.
    reuse_steady_pool = True

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.long_prefill_token_threshold < 0:
            raise ValueError("long_prefill_token_threshold must be >= 0")
        if self.policy not in ("fcfs", "priority"):
            raise ValueError(f"policy must be 'fcfs' or 'priority', got {self.policy!r}")
        if self.preemption not in ("recompute", "restart"):
            raise ValueError(f"preemption must be 'recompute' or 'restart', got {self.preemption!r}")
        self._waiting = self._make_queue()
        self._running = {}

    def config(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    @property
    def steady_past_arrivals(self) -> bool:
        return isinstance(self._waiting, FCFSQueue)

    def pool_decision_when_idle(self, pool) -> Decision | None:
        # `_schedule_pool` with no request outside the pool and none waiting: the members alone,
        # steady, unless they exceed the token budget (then the per-request pass decides).
        return _POOL_STEADY if len(pool.members) <= self.max_num_batched_tokens else None

    # --- hooks for the policies built on these mechanics ------------------------------
    def _make_queue(self):
        return FCFSQueue()

    def _can_admit(self, r: Request, view: View) -> bool:
        return True

    def _admitted(self, r: Request) -> None:
        pass

    def _left(self, r: Request) -> None:
        """`r` finished or was preempted."""

    # --- the step -----------------------------------------------------------------------
    def schedule(self, view: View) -> Decision:
        for r in view.arrived:
            self._waiting.add(r)
        if view.finished:
            aborted = set()
            running = self._running
            for r in view.finished:
                self._left(r)
                running.pop(r.request_id, None)
                if r.status is RequestStatus.ABORTED:  # a client disconnect (online loop)
                    aborted.add(r.request_id)
            if aborted:  # it may have been waiting: never run it
                self._waiting.remove(aborted)
        threshold = self.long_prefill_token_threshold
        if self.threshold_needs_two and len(self._running) + len(self._waiting) <= 1:
            threshold = 0
        pool = view.pool
        if pool is not None and pool.members:
            decision = self._schedule_pool(view, pool, threshold)
            if decision is not None:
                return decision
            pool.flush()  # phase 1 must look at every request: their exact state
        return self._schedule_each(view, threshold)

    def _schedule_pool(self, view: View, pool, threshold: int) -> Decision | None:
        """Phase 1 with every pool member decoding, when that is exactly what the
        per-request pass would do: the members come first in admission order (every
        other running request is behind them), all fit in the budget and in free memory
        (so no one is preempted). None otherwise."""
        outside = pool.outside_view
        running = self._running
        num_members = len(running) - len(outside)
        budget = self.max_num_batched_tokens - num_members
        free = view.num_free_blocks - pool.num_new_blocks
        if budget < 0:
            return None
        tail: list[Request] = []
        if outside:
            ids = reversed(running)
            for _ in range(len(outside)):
                rid = next(ids)
                if rid not in outside:
                    return None
                tail.append(running[rid])
            tail.reverse()
        run: dict[int, int] = {}
        needs: dict[int, int] = {}
        steady = True
        bs, held, la = view.block_size, view.block_counts, view.lookahead_tokens
        need_all = 0
        for r in tail:
            if budget <= 0:
                break
            n = r.prompt_len + r.num_output_tokens - r.num_computed_tokens
            if n > budget:  # noqa: PLR1730
                n = budget
            if threshold and n > threshold:
                n = threshold
            need = -(-(r.num_computed_tokens + n + la) // bs) - held.get(r.request_id, 0)
            if need < 0:  # noqa: PLR1730
                need = 0
            run[r.request_id] = n
            needs[r.request_id] = need
            budget -= n
            need_all += need
            steady = steady and n == 1 and r.num_output_tokens > 0
        if need_all <= free:
            admitted = self._admit(view, run, budget, free - need_all, threshold)
            repeat = STEADY if steady and not admitted and len(run) + num_members == len(running) else 1
            return Decision(run, (), repeat, pool=True)
        if self.policy != "fcfs" or len(run) < len(tail):
            return None  # the per-request pass: victims by arrival, or a budget cut
        # FCFS preemption: the per-request pass pops victims from the tail while the next
        # request's blocks do not fit; its outcome is the fewest tail victims v with
        # (needs of the others) <= free + (blocks the v victims free), whatever the order
        # of the scan (needs only grow along it). Members popped leave the pool first.
        preempted: list[int] = []
        need_all += pool.num_new_blocks
        free += pool.num_new_blocks
        while need_all > free:
            vid = next(reversed(running))
            if vid in run:
                need_all -= needs.pop(vid)
                del run[vid]
            else:
                need_all -= pool.num_new_blocks  # its own block (if it needed one) leaves with it
                pool.leave(vid)
                need_all += pool.num_new_blocks
            victim = running.pop(vid)
            preempted.append(vid)
            free += view.blocks_freed_by(vid)
            self._waiting.add_front(victim)
            self._left(victim)
        if self.preemption == "restart":
            return Decision(run, (), 1, restart=tuple(preempted), pool=True)
        return Decision(run, tuple(preempted), 1, pool=True)

    def _schedule_each(self, view: View, threshold: int) -> Decision:
        budget = self.max_num_batched_tokens
        free = view.num_free_blocks
        run: dict[int, int] = {}
        needs: dict[int, int] = {}
        preempted: list[int] = []
        by_id = self._running
        running = list(by_id.values())
        steady = True  # every scheduled request is a plain decode
        i = 0
        bs, held, la = view.block_size, view.block_counts, view.lookahead_tokens
        while i < len(running) and budget > 0:
            r = running[i]
            n = r.prompt_len + r.num_output_tokens - r.num_computed_tokens
            # if-statements and inline view.blocks_needed(r, n), not min()/max() and method
            # calls: this loop visits every running request every step.
            if n > budget:  # noqa: PLR1730
                n = budget
            if threshold and n > threshold:
                n = threshold
            need = -(-(r.num_computed_tokens + n + la) // bs) - held.get(r.request_id, 0)
            if need < 0:  # noqa: PLR1730
                need = 0
            self_preempted = False
            while need > free:
                victim = self._pick_victim(running)
                vid = victim.request_id
                del by_id[vid]
                preempted.append(vid)
                free += view.blocks_freed_by(vid)
                if vid in run:  # PRIORITY policy may pick a request scheduled earlier
                    budget += run.pop(vid)
                    free += needs.pop(vid)
                    i -= 1
                self._waiting.add_front(victim)
                self._left(victim)
                if victim is r:
                    self_preempted = True
                    break
            if self_preempted:
                break
            run[r.request_id] = n
            needs[r.request_id] = need
            budget -= n
            free -= need
            steady = steady and n == 1 and r.num_output_tokens > 0
            i += 1

        admitted = False
        if not preempted:
            admitted = self._admit(view, run, budget, free, threshold)
        # With nothing preempted or admitted and everyone decoding, the same decision
        # repeats until an arrival or a finish: admission stays blocked because free
        # memory only shrinks, and budget and max_num_seqs do not change.
        repeat = STEADY if steady and not preempted and not admitted and len(run) == len(by_id) else 1
        if self.preemption == "restart":
            return Decision(run, (), repeat, restart=tuple(preempted))
        return Decision(run, tuple(preempted), repeat)

    def _admit(self, view: View, run: dict[int, int], budget: int, free: int, threshold: int) -> bool:
        """Phase 2: admit waiting requests into `run`; whether any was admitted."""
        admitted = False
        running = self._running
        pc, held, bs, la = view.prefix_cache, view.block_counts, view.block_size, view.lookahead_tokens
        while len(self._waiting) and budget > 0 and len(running) < self.max_num_seqs:
            r = self._waiting.peek()
            # vLLM looks the prefix cache up before sizing the chunk. View.cached_tokens and
            # View.blocks_needed inlined, from one lookup (this runs at every admission).
            fresh = pc is not None and r.request_id not in held
            hit, evictable = pc.hit(r) if fresh else (0, 0)
            num_tokens = r.num_tokens
            n = num_tokens - r.num_computed_tokens - hit
            if threshold:
                n = min(n, threshold)
            if not self.enable_chunked_prefill and n > budget:
                break
            n = min(n, budget)
            if fresh:
                need = -(-(min(hit + n, num_tokens) + la) // bs) - hit // bs + evictable
            else:
                need = -(-(r.num_computed_tokens + n + la) // bs) - held.get(r.request_id, 0)
                if need < 0:  # noqa: PLR1730
                    need = 0
            if self.reserve_full_sequence and view.blocks_needed(r, r.num_tokens - r.num_computed_tokens) > free:
                break
            if need > free or not self._can_admit(r, view):
                break
            self._waiting.pop()
            running[r.request_id] = r
            self._admitted(r)
            run[r.request_id] = n
            budget -= n
            free -= need
            admitted = True
        return admitted

    def _pick_victim(self, running: list[Request]) -> Request:
        if self.policy == "fcfs":
            return running.pop()
        j = max(range(len(running)), key=lambda k: (running[k].arrival_time, running[k].request_id))
        return running.pop(j)


SCHEDULERS.register("vllm", "vLLM v1: token budget, chunked prefill, tail-victim recompute preemption")(VLLMScheduler)


@SCHEDULERS.register("sjf", "shortest (predicted) job first on vLLM v1 mechanics; key='remaining' gives SRPT")
@dataclass(eq=False)
class SJFScheduler(VLLMScheduler):
    predictor: str = "oracle"  # "oracle" or "predicted" (Request.predicted_output_len)
    key: str = "output"  # "output": total predicted output; "remaining": predicted minus generated
    enable_prefix_caching: bool = False  # the policy's own semantics unless asked

    @property
    def clairvoyant(self) -> bool:
        return self.predictor == "oracle"

    def __post_init__(self) -> None:
        if self.key not in ("output", "remaining"):
            raise ValueError(f"key must be 'output' or 'remaining', got {self.key!r}")
        self._predictor = make_predictor(self.predictor)
        super().__post_init__()

    def _make_queue(self):
        predict = self._predictor.output_len
        if self.key == "output":
            return PriorityQueue(lambda r: (predict(r), r.arrival_time))
        return PriorityQueue(lambda r: (predict(r) - r.num_output_tokens, r.arrival_time))


@SCHEDULERS.register("srpt", "shortest remaining (predicted) processing time first on vLLM v1 mechanics")
@dataclass(eq=False)
class SRPTScheduler(SJFScheduler):
    """SJF with key='remaining' by default: a class, not a **kwargs function, so its options
    (and their types) can be listed and checked like every other scheduler's."""

    key: str = "remaining"


@SCHEDULERS.register("fcfs-static", "FCFS that admits only when the peak footprint fits (reserve everything)")
@dataclass(eq=False)
class StaticReservationScheduler(VLLMScheduler):
    """FasterTransformer-style reservation: admit in arrival order only when the
    request's peak footprint (prompt + predicted output - 1 tokens) fits beside the
    peaks reserved by everyone admitted. With the oracle it never preempts; with a
    prediction that falls short, vLLM's tail preemption keeps memory safe."""

    predictor: str = "oracle"
    enable_prefix_caching: bool = False  # the policy's own semantics unless asked
    _reserved_blocks: int = field(init=False, default=0)

    @property
    def clairvoyant(self) -> bool:
        return self.predictor == "oracle"

    def __post_init__(self) -> None:
        self._predictor = make_predictor(self.predictor)
        self._peak: dict[int, int] = {}
        super().__post_init__()

    def _peak_blocks(self, r: Request, view: View) -> int:
        # Clipped to the cache: a predicted peak above it (the request fits, or the loop
        # would have rejected it) reserves everything and runs alone instead of never.
        peak = blocks_for(r.prompt_len + self._predictor.output_len(r) - 1 + view.lookahead_tokens, view.block_size)
        return min(peak, view.num_blocks)

    def _can_admit(self, r: Request, view: View) -> bool:
        peak = self._peak_blocks(r, view)
        if self._reserved_blocks + peak > view.num_blocks:
            return False
        self._peak[r.request_id] = peak
        return True

    def _admitted(self, r: Request) -> None:
        self._reserved_blocks += self._peak[r.request_id]

    def _left(self, r: Request) -> None:
        self._reserved_blocks -= self._peak.pop(r.request_id, 0)
