"""Vidur's vLLM and Sarathi schedulers, the baselines of the WAIT paper.

Source of the rules: microsoft/vidur `vidur/scheduler/replica_scheduler/` (MIT), as
summarised in docs/schedulers.md. Shared by both:
- running requests are kept in arrival order; on a block shortage the latest-arrived
  running request is restarted (KV freed, recomputed later from the head of the queue);
- a new request is admitted only if blocks for its whole prompt are free above a
  watermark of `watermark_fraction` of all blocks, and while fewer than
  `batch_size_cap` requests are resident.
Two deviations keep every request servable: the watermark is waived when nothing is
resident, and vidur-vllm runs a prompt longer than `max_tokens_in_batch` alone (Vidur
would never schedule either). Vidur allocates a decode's block one token late; kvsched allocates the KV a step
writes before the step, so a shortage shows up one step earlier here.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import asdict, dataclass, field

from kvsched.decision import Decision, Scheduler, View
from kvsched.kvcache import blocks_for
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.vllm import STEADY


def _arrival_key(r: Request) -> tuple[float, int]:
    return (r.arrival_time, r.request_id)


def _any_aborted(finished) -> bool:
    return any(r.status is RequestStatus.ABORTED for r in finished)


def _by_arrival(ids, resident) -> list[int]:
    """The request ids `ids` in arrival order (ties by id), their requests looked up in `resident`.
    (This and _any_aborted are functions, not expressions in the methods: the compiled core's
    cpdef methods take no closures.)"""
    return sorted(ids, key=lambda rid: _arrival_key(resident[rid]))


@dataclass(eq=False)
class _VidurBase(Scheduler):
    batch_size_cap: int = 128
    watermark_fraction: float = 0.01
    _queue: deque = field(init=False, repr=False)
    _running: list = field(init=False, repr=False)

    clairvoyant = False  # Vidur's policies never read output lengths

    def __post_init__(self) -> None:
        if self.batch_size_cap < 1:
            raise ValueError(f"batch_size_cap must be >= 1, got {self.batch_size_cap}")
        if not 0.0 <= self.watermark_fraction < 1.0:
            raise ValueError(f"watermark_fraction must be in [0, 1), got {self.watermark_fraction}")
        self._queue = deque()
        self._running = []  # sorted by arrival

    def config(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def _sync(self, view: View) -> None:
        self._queue.extend(view.arrived)
        if view.finished:
            running = self._running
            for r in view.finished:  # O(log n) each: running is sorted by arrival
                i = bisect.bisect_left(running, _arrival_key(r), key=_arrival_key)
                if i < len(running) and running[i] is r:
                    del running[i]
            if self._queue and _any_aborted(view.finished):
                # A client disconnect (online loop) may withdraw a queued request.
                self._queue = deque([r for r in self._queue if not r.is_finished])

    def _admit(self, r: Request) -> None:
        self._queue.popleft()
        bisect.insort(self._running, r, key=_arrival_key)

    def _fits_with_watermark(self, r: Request, free: int, view: View) -> bool:
        # Into an empty system the watermark is waived: a prompt that fits the capacity
        # but not above the watermark would otherwise wait forever (Vidur stalls there).
        watermark = int(self.watermark_fraction * view.num_blocks) if self._running else 0
        return free - blocks_for(r.num_tokens + view.lookahead_tokens, view.block_size) >= watermark

    def _restart_latest(self, view: View, preempted: list[int]) -> tuple[Request, int]:
        """Restart the latest-arrived running request; return it and the blocks freed."""
        victim = self._running.pop()
        preempted.append(victim.request_id)
        self._queue.appendleft(victim)
        return victim, view.block_counts.get(victim.request_id, 0)


@dataclass(eq=False)
class VidurVLLMScheduler(_VidurBase):
    max_tokens_in_batch: int = 4096  # counted as len(batch) * max(prompt tokens)

    uses_pool = True  # the decode-all step as a group (docs/architecture.md, Performance)

    def __post_init__(self) -> None:
        # Spelled out: compiled (a Cython dataclass), __init__ calls only a class's own __post_init__.
        super().__post_init__()

    def schedule(self, view: View) -> Decision:
        self._sync(view)
        free = view.num_free_blocks
        run: dict[int, int] = {}
        max_len = 0
        while self._queue:
            r = self._queue[0]
            n = r.num_tokens
            if not self._fits_with_watermark(r, free, view):
                break
            if run and (len(run) + 1) * max(max_len, n) > self.max_tokens_in_batch:
                break  # a prompt over the limit still runs alone, else it would wait forever
            if len(self._running) >= self.batch_size_cap:
                break
            self._admit(r)
            run[r.request_id] = n
            free -= blocks_for(n + view.lookahead_tokens, view.block_size)
            max_len = max(max_len, n)
        if run:
            return Decision(run)  # prefill only: the pool (if any) is paused
        pool = view.pool
        if pool is not None and pool.members:
            decision = self._decode_pool(view, pool)
            if decision is not None:
                return decision
            pool.flush()
        preempted: list[int] = []
        i = 0
        while i < len(self._running):
            r = self._running[i]
            need = view.blocks_needed(r, 1)
            while need > free:
                victim, freed = self._restart_latest(view, preempted)
                free += freed
                if victim is r:
                    break
            if preempted and preempted[-1] == r.request_id:
                break
            run[r.request_id] = 1
            free -= need
            i += 1
        # Admission stays blocked as free memory shrinks, so decoding repeats until an event.
        return Decision(run, tuple(preempted), 1 if preempted else STEADY)


    def _decode_pool(self, view: View, pool) -> Decision | None:
        """Decode every running request, the pool's members as a group: victims (latest
        arrivals) are popped until the needs fit, which is the per-request pass's outcome
        (needs only accumulate along its scan). None when a running request outside the
        pool is not a plain decoder (the per-request pass then runs it as it always did)."""
        needs: dict[int, int] = {}
        for r in pool.outside_view.values():
            if not r.is_decoding:
                return None
            needs[r.request_id] = view.blocks_needed(r, 1)
        free = view.num_free_blocks
        need_all = pool.num_new_blocks + sum(needs.values())
        preempted: list[int] = []
        while need_all > free:
            vid = self._running[-1].request_id
            if vid in pool.members:
                need_all -= pool.num_new_blocks  # its own block (if it needed one) leaves with it
                pool.leave(vid)
                need_all += pool.num_new_blocks
            else:
                need_all -= needs.pop(vid)
            free += self._restart_latest(view, preempted)[1]
        run = dict.fromkeys(_by_arrival(needs, view.resident), 1)
        return Decision(run, tuple(preempted), 1 if preempted else STEADY, pool=True)


@dataclass(eq=False)
class SarathiScheduler(_VidurBase):
    chunk_size: int = 512

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        super().__post_init__()

    uses_pool = True  # decoders as a group (docs/architecture.md, Performance)

    def schedule(self, view: View) -> Decision:
        self._sync(view)
        pool = view.pool
        if pool is not None and pool.members:
            decision = self._schedule_pool(view, pool)
            if decision is not None:
                return decision
            pool.flush()
        return self._schedule_each(view)

    def _schedule_pool(self, view: View, pool) -> Decision | None:
        """The per-request pass with every pool member decoding, in aggregate: members
        need `pool.num_new_blocks`, the requests outside the pool are visited one by one,
        and victims (the latest arrivals) are popped until the decoders' needs fit: the
        per-request pass's outcome, since needs only accumulate along its scan."""
        bs, la, held, cap = view.block_size, view.lookahead_tokens, view.block_counts, self.batch_size_cap
        partial: list[Request] = []
        decoders: dict[int, int] = {}  # outside decoders -> blocks needed
        for r in pool.outside_view.values():
            computed = r.num_computed_tokens
            if r.num_output_tokens == 0 or r.prompt_len + r.num_output_tokens - computed > 1:
                partial.append(r)
            else:
                decoders[r.request_id] = 1 if held.get(r.request_id, 0) * bs <= computed + la else 0
        if len(pool.members) + len(decoders) > cap:
            return None  # the cap cuts the decoders: the per-request pass decides who
        free = view.num_free_blocks
        if partial:  # usually one (the prompt being prefilled): no sort, a plain loop (this runs every step)
            if len(partial) > 1:
                partial.sort(key=_arrival_key)
            for r in partial:
                free -= -(-(r.prompt_len + r.num_output_tokens + la) // bs) - held.get(r.request_id, 0)
        need_all = pool.num_new_blocks + sum(decoders.values()) if decoders else pool.num_new_blocks
        preempted: list[int] = []
        running = self._running
        while need_all > free:
            victim = running[-1]
            vid = victim.request_id
            if vid in pool.members:
                need_all -= pool.num_new_blocks  # its own block (if it needed one) leaves with it
                pool.leave(vid)
                need_all += pool.num_new_blocks
            elif vid in decoders:
                need_all -= decoders.pop(vid)
            victim, freed = self._restart_latest(view, preempted)
            free += freed
            if not victim.is_decoding:
                free += blocks_for(victim.num_tokens + la, bs) - freed  # its reservation too
                partial.remove(victim)
        free -= need_all
        run = dict.fromkeys(_by_arrival(decoders, view.resident), 1) if decoders else {}
        num_batch_tokens = len(pool.members) + len(run)
        chunk_size = self.chunk_size
        for r in partial:
            n = r.prompt_len + r.num_output_tokens - r.num_computed_tokens
            if n > chunk_size - num_batch_tokens:  # noqa: PLR1730 (min() costs a call per step)
                n = chunk_size - num_batch_tokens
            if n > 0:
                run[r.request_id] = n
                num_batch_tokens += n
        num_members = len(pool.members)
        admitted = self._admit_waiting(view, run, num_batch_tokens, free, num_members)
        steady = not preempted and not partial and not admitted and len(run) + num_members == len(running)
        return Decision(run, tuple(preempted), STEADY if steady else 1, pool=True)

    def _schedule_each(self, view: View) -> Decision:
        bs, la = view.block_size, view.lookahead_tokens
        # A partially prefilled request owns blocks for its whole prompt (Vidur allocates
        # them at admission); kvsched allocates per chunk, so keep the rest reserved.
        partial = [r for r in self._running
                   if r.num_output_tokens == 0 or r.prompt_len + r.num_output_tokens - r.num_computed_tokens > 1]
        free = view.num_free_blocks
        for r in partial:
            free -= blocks_for(r.num_tokens + la, bs) - view.block_counts.get(r.request_id, 0)
        run: dict[int, int] = {}
        preempted: list[int] = []
        num_batch_tokens = 0
        i = 0
        held = view.block_counts
        while i < len(self._running) and len(run) < self.batch_size_cap:
            r = self._running[i]
            i += 1
            computed = r.num_computed_tokens
            if r.num_output_tokens == 0 or r.prompt_len + r.num_output_tokens - computed > 1:
                continue  # not decoding: a partial prefill, served below
            # Inline view.blocks_needed(r, 1): this loop visits every running request every step.
            need = 1 if held.get(r.request_id, 0) * bs <= computed + la else 0
            while need > free:
                victim, freed = self._restart_latest(view, preempted)
                free += freed
                if not victim.is_decoding:
                    free += blocks_for(victim.num_tokens + la, bs) - freed  # its reservation too
                    partial.remove(victim)
                if victim is r:
                    break
            if preempted and preempted[-1] == r.request_id:
                break
            run[r.request_id] = 1
            free -= need
            num_batch_tokens += 1
        for r in partial:
            n = min(r.num_tokens - r.num_computed_tokens, self.chunk_size - num_batch_tokens)
            if n > 0:
                run[r.request_id] = n
                num_batch_tokens += n
        admitted = self._admit_waiting(view, run, num_batch_tokens, free, 0)
        steady = not preempted and not partial and not admitted and len(run) == len(self._running)
        return Decision(run, tuple(preempted), STEADY if steady else 1)

    def _admit_waiting(self, view: View, run: dict[int, int], num_batch_tokens: int, free: int,
                       num_members: int) -> bool:
        """Admit from the queue head while the batch cap, the chunk budget and the watermark
        allow (adding to `run`); `num_members` pool members also count against the cap.
        True if any request was admitted."""
        admitted = False
        cap, bs, la = self.batch_size_cap, view.block_size, view.lookahead_tokens
        queue, running = self._queue, self._running
        while queue and len(running) < cap and len(run) + num_members < cap:
            r = queue[0]
            # _fits_with_watermark, inlined (this runs every step, mostly to find the head blocked)
            watermark = int(self.watermark_fraction * view.num_blocks) if running else 0
            num_tokens = r.prompt_len + r.num_output_tokens
            if free - -(-(num_tokens + la) // bs) < watermark:
                break
            n = min(num_tokens, self.chunk_size - num_batch_tokens)
            if n <= 0:
                break
            self._admit(r)
            run[r.request_id] = n
            num_batch_tokens += n
            free -= -(-(num_tokens + la) // bs)
            admitted = True
        return admitted


SCHEDULERS.register("vidur-vllm", "Vidur's vLLM: prefill-only batches first, else decode all; restart latest arrival")(
    VidurVLLMScheduler)
SCHEDULERS.register("sarathi", "Sarathi-Serve (Vidur): decodes first, then prefill chunks within chunk_size")(
    SarathiScheduler)
