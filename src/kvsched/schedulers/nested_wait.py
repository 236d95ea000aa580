"""Nested WAIT (`nested-wait`): WAIT for unknown output lengths (Ao et al., arXiv 2504.11320,
Alg. 2 and the appendix's event-driven version; WAIT paper §5, Algorithm 2).

The types' output lengths o_1 < ... < o_m cut the decode progress into segments; no length is
predicted: a request reveals its length only by finishing at a boundary or carrying on past
it ("classification on the fly"). Segment k has one integer threshold n_k, both a trigger
and a per-stage cap:
- prefix rule: the active segments are 1..k for the largest k such that every segment
  k' <= k has at least n_k' requests at its entry; the entry of segment 1 is the waiting
  queue (no KV held), that of segment k >= 2 its resident boundary queue (requests that
  passed o_{k-1} without finishing). Later segments pause with their KV kept; with no
  active segment the server idles until the next arrival;
- an active segment serves up to n_k requests from each of its stages, FIFO by arrival;
- before launch, a LIFO repair (by admission time) restarts requests until the step fits:
  first the paused ones (unselected boundary requests, then any other paused resident),
  then, only once new prefills have been dropped, the selected ones. With C >= M_req
  (`wait_design.nested_memory_requirement`) the paper shows repairs happen with probability
  <= delta over the horizon (Theorem 2); `stats()` counts them.

Engine step convention (docs/conventions.md#wait-steps): sigma = output tokens emitted = the next step's index; a
request with output o is served at sigma = 0 (prefill, emits the first token) .. o - 1. So
segment 1 holds sigma 0..o_1 - 1 and segment k >= 2 sigma o_{k-1}..o_k - 1, its entry being
sigma = o_{k-1}; the paper's l'_k is o_k - 1 and the design runs in the paper's convention.
A request still running at sigma >= o_m (longer than every type, possible on real traces)
stays in segment m, whose stages extend past o_m with the same cap n_m.
After the last arrival the gate is dropped (docs/conventions.md#wait-drain): every segment is active, so the run
drains; nothing is discarded. The scheduler never reads `output_len`: it sees stages and
completions only (the online rate estimator labels requests when they finish).
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass

from kvsched.bounds.fluid import RequestType
from kvsched.decision import IDLE, Decision, View
from kvsched.registry import SCHEDULERS
from kvsched.request import Request
from kvsched.schedulers.wait_common import (
    WaitFamily,
    fifo_key,
    lifo_repair,
    parse_thresholds,
    stage_of,
)
from kvsched.schedulers.wait_design import (
    NestedThresholdCheck,
    check_nested_thresholds,
    nested_segments,
    nested_thresholds,
)


def _finite(x: float) -> float | None:
    """Strict JSON has no infinity: an unbounded M_req (a boundary without drift) is null."""
    return x if math.isfinite(x) else None


@SCHEDULERS.register("nested-wait", "Nested WAIT (unknown lengths): segments at the types' lengths, prefix rule, "
                                    "n_k per stage, LIFO repair")
@dataclass(eq=False)
class NestedWaitScheduler(WaitFamily):
    thresholds: str | None = None  # "n_1,n_2,...": fixed segment thresholds; None: `nested_thresholds` design
    eta: float = 0.05  # design margin: q_k = min(p_k + eta, 0.99)
    delta: float = 0.05  # allowed failure probability of the memory bound
    horizon_s: float = 3600.0  # H in the buffer's ln(m (1 + H / d0) / delta)
    d0_s: float = 0.0106  # design time model: d0 + d1 * KV tokens + d2 * prefill tokens per iteration
    d1_s_per_token: float = 4.0e-7
    d2_s_per_prefill_token: float = 0.0
    wait_gate: bool = True  # False: the "no-wait" ablation (every segment active, same caps)

    _label_on_arrival = False  # lengths are unknown: requests are labelled when they finish

    def __post_init__(self) -> None:
        if not self.d0_s > 0:
            raise ValueError(f"d0_s must be > 0, got {self.d0_s}")
        if min(self.d1_s_per_token, self.d2_s_per_prefill_token) < 0:
            raise ValueError("d1_s_per_token and d2_s_per_prefill_token must be >= 0")
        if not 0.0 <= self.eta < 1.0:
            raise ValueError(f"eta must be in [0, 1), got {self.eta}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not self.horizon_s > 0:
            raise ValueError(f"horizon_s must be > 0, got {self.horizon_s}")
        self._init_workload()
        self._fixed = parse_thresholds(self.thresholds, len(self._types), "segment")
        self._boundary_sigmas = frozenset(self._outputs[:-1])  # entries of segments 2..m
        self._heap: list[tuple[float, int]] = []  # FIFO of waiting requests: (arrival time, id), lazily cleaned
        self._block_size = 1
        self._lookahead_tokens = 0
        self.n: tuple[int, ...] = ()
        self.check: NestedThresholdCheck | None = None
        self.design_notes: list[str] = []
        self.num_repair_evictions = 0

    # --- design ---------------------------------------------------------------------------
    def _design(self, types: tuple[RequestType, ...], capacity_tokens: int) -> None:
        alloc = {"block_size": self._block_size, "lookahead_tokens": self._lookahead_tokens,
                 "d2_s_per_prefill_token": self.d2_s_per_prefill_token}
        if self._fixed is not None:
            seg = nested_segments(types)
            check = check_nested_thresholds(seg.prompt_lens, seg.decode_boundaries, seg.rates, self._fixed,
                                            self.d0_s, self.d1_s_per_token, capacity_tokens, delta=self.delta,
                                            horizon_s=self.horizon_s, **alloc)
            if not check.ok:  # the user's choice: run anyway, the LIFO repair keeps memory safe
                self.design_notes.append("given thresholds fail Nested WAIT's conditions: " + "; ".join(check.failures))
            self.n, self.check = self._fixed, check
            return
        try:
            design = nested_thresholds(types, self.d0_s, self.d1_s_per_token, capacity_tokens, self.eta, self.delta,
                                       self.horizon_s, first_token_in_prefill=True, **alloc)
        except ValueError as exc:
            if not self.n:
                raise ValueError(f"nested-wait: {exc} (capacity {capacity_tokens:,} KV tokens); give thresholds= "
                                 f"to run anyway under the LIFO repair") from None
            # A re-design on drifted rates failed: keep serving with the thresholds in use.
            self.design_notes.append(f"re-design kept thresholds {self.n}: {exc}")
            return
        self.n, self.check = design.thresholds, design.check

    def stats(self) -> dict:
        memory = self.check.memory if self.check else None
        return {"thresholds": list(self.n), "num_repair_evictions": self.num_repair_evictions,
                "num_redesigns": len(self.redesigns),
                "batch_memory_tokens": _finite(memory.batch_memory_tokens) if memory else None,
                "memory_required_tokens": _finite(memory.required_tokens) if memory else None,
                "design_notes": list(self.design_notes)}

    # --- the step --------------------------------------------------------------------------
    def schedule(self, view: View) -> Decision:
        if self._capacity_tokens is None:  # the first call designs: count KV as the cache allocates it
            self._block_size, self._lookahead_tokens = view.block_size, view.lookahead_tokens
        self._observe(view)
        for r in view.arrived:
            heapq.heappush(self._heap, fifo_key(r))
        n, outputs, m = self.n, self._outputs, len(self.n)
        groups: dict[int, list[Request]] = {}  # sigma -> resident requests at that next step
        for r in view.resident.values():
            groups.setdefault(stage_of(r), []).append(r)
        active = self._active_segments(view, groups)
        if active == 0:
            return IDLE
        run: dict[int, int] = {}
        head = self._pop_waiting(view, min(n[0], len(view.waiting)))
        for r in head:
            run[r.request_id] = r.num_tokens - r.num_computed_tokens
        unselected_boundary: list[Request] = []
        for sigma, group in groups.items():
            k = min(bisect.bisect_right(outputs, sigma), m - 1)
            boundary = sigma in self._boundary_sigmas
            if k >= active:
                if boundary:
                    unselected_boundary.extend(group)
                continue
            if len(group) > n[k]:
                group.sort(key=fifo_key)
                if boundary:
                    unselected_boundary.extend(group[n[k]:])
                group = group[:n[k]]
            for r in group:
                run[r.request_id] = r.num_tokens - r.num_computed_tokens
        evicted = self._repair(view, run, unselected_boundary)
        for r in head:  # prefills the repair dropped wait again
            if r.request_id not in run:
                heapq.heappush(self._heap, fifo_key(r))
        for rid in evicted:  # a restarted request waits for prefill by its original arrival (docs/conventions.md#wait-restart)
            heapq.heappush(self._heap, fifo_key(view.resident[rid]))
        self.num_repair_evictions += len(evicted)
        if not run and not evicted:
            return IDLE
        return Decision(run, restart=tuple(evicted))

    def _active_segments(self, view: View, groups: dict[int, list[Request]]) -> int:
        """The prefix rule: the largest k such that every segment k' <= k has at least n_k'
        requests at its entry (0: idle). Every segment is active after the last arrival
        (drain, A17) and in the no-wait ablation."""
        n, outputs = self.n, self._outputs
        if not (self.wait_gate and view.arrivals_pending):
            return len(n)
        active = 0
        while active < len(n):
            entry = len(view.waiting) if active == 0 else len(groups.get(outputs[active - 1], ()))
            if entry < n[active]:
                break
            active += 1
        return active

    def _repair(self, view: View, run: dict[int, int], unselected_boundary: list[Request]) -> list[int]:
        """LIFO repair before launch (rule 4 of the WAIT paper's Algorithm 2, §5; docs/conventions.md#wait-memory): the paper's rule restarts unselected
        boundary requests; past them `lifo_repair` restarts other paused residents, then drops
        new prefills, and only then restarts selected residents (restarting running work to
        admit new prefills could keep the oldest requests from ever finishing)."""
        return lifo_repair(view, run, [unselected_boundary, view.resident.values()])

    def _pop_waiting(self, view: View, count: int) -> list[Request]:
        """The first `count` waiting requests by (arrival, id), popped from the FIFO heap in
        O(count log W): view.waiting is in insertion order, where restarted requests sit at
        the end. Entries of requests no longer waiting (admitted) are dropped on the way."""
        out: list[Request] = []
        seen: set[int] = set()
        heap, waiting = self._heap, view.waiting
        while len(out) < count:
            if not heap:  # only if requests entered the queue unseen; rebuild it once
                self._heap = heap = [fifo_key(r) for r in waiting.values() if r.request_id not in seen]
                heapq.heapify(heap)
                if not heap:
                    break
            rid = heapq.heappop(heap)[1]
            r = waiting.get(rid)
            if r is not None and rid not in seen:
                seen.add(rid)
                out.append(r)
        return out
