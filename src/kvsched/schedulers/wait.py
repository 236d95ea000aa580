"""WAIT: fluid-guided thresholds for known output lengths (Ao et al., arXiv 2504.11320, Alg. 1;
WAIT paper §4, Algorithm 1).

Each type j has an integer threshold n_j, both a trigger and a cap:
- type j is eligible when at least n_j of its requests wait for prefill;
- an eligible type gets up to n_j requests served from each of its stages (FIFO inside a
  stage), the prefill stage included; a type that is not eligible is not served at all,
  and its resident requests pause with their KV kept;
- when no type is eligible the server idles until the next arrival (`wait_gate=False` is
  the appendix's "WAIT-no-wait" ablation: every type with any request runs, same caps).

Guarantee (Theorem 1): with thresholds that satisfy v4 eq. (9) (load balance
dT(n) <= n_j / lambda_j and memory M^pi(n) <= C) no stage of type j ever holds more than
n_j requests, so the KV in use never exceeds M^pi(n) <= C and WAIT never evicts; with
strict slack its latency is O(1) in the fluid scaling. kvsched checks M^pi in whole KV
blocks (`block_size`), so the guarantee is exact for the simulator's allocator. The LIFO
repair loop (docs/conventions.md#wait-memory) is a safety net for mis-specified rates; `stats()` counts its evictions.

Stages follow the engine convention (docs/conventions.md#wait-steps): a request with output o is prefilled in stage
0, which emits its first token, and decodes in stages 1..o-1; stage s is charged prompt + s.
Types come from the workload description (`types`, "PROMPTxOUTPUT:RATE|..."); a request
belongs to the first type whose output length is >= its own (types as bin upper edges),
through the `predictor` (the paper's oracle label by default).
After the last arrival the gate is dropped (docs/conventions.md#wait-drain) so the queue drains; nothing is discarded.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

from kvsched.bounds.fluid import RequestType
from kvsched.decision import IDLE, Decision, View
from kvsched.predictors import make_predictor
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.vllm import STEADY
from kvsched.schedulers.wait_common import (
    WaitFamily,
    fifo_key,
    lifo_repair,
    parse_thresholds,
    stage_of,
)
from kvsched.schedulers.wait_design import (
    ThresholdCheck,
    check_wait_thresholds,
    proportional_thresholds,
)


@SCHEDULERS.register("wait", "WAIT (known lengths): a type runs when n_j wait; n_j per stage; idle otherwise")
@dataclass(eq=False)
class WaitScheduler(WaitFamily):
    thresholds: str | None = None  # "n_1,n_2,...": fixed thresholds; None: proportional design
    c_s: float | None = None  # design scale n_j = ceil(c lambda_j); None: smallest feasible
    d0_s: float = 0.0106  # design time model: d0 + d1 * KV tokens + d2 * prefill tokens per iteration
    d1_s_per_token: float = 4.0e-7
    d2_s_per_prefill_token: float = 0.0
    wait_gate: bool = True
    predictor: str = "oracle"

    def __post_init__(self) -> None:
        if min(self.d0_s, self.d1_s_per_token, self.d2_s_per_prefill_token) < 0:
            raise ValueError("d0_s, d1_s_per_token and d2_s_per_prefill_token must be >= 0")
        self._predict = make_predictor(self.predictor)
        self._init_workload()
        parse_thresholds(self.thresholds, len(self._types))  # fail at construction, not at the first call
        self._waiting: list[list] = [[] for _ in self._types]  # per type: heap of (fifo key, request)
        self._stages: list[dict[int, list[Request]]] = [defaultdict(list) for _ in self._types]
        self._type: dict[int, int] = {}
        self._last_run: list[tuple[Request, int | None]] = []
        self.num_repair_evictions = 0
        self.check: ThresholdCheck | None = None
        self.design_notes: list[str] = []

    # --- design ---------------------------------------------------------------------------
    def _design(self, types: tuple[RequestType, ...], capacity_tokens: int) -> None:
        conv = {"first_token_in_prefill": True, "block_size": self._block_size,
                "d2_s_per_prefill_token": self.d2_s_per_prefill_token}
        fixed = parse_thresholds(self.thresholds, len(types))
        if fixed is not None:
            self.n = fixed
            self.check = check_wait_thresholds(types, fixed, self.d0_s, self.d1_s_per_token, capacity_tokens, **conv)
            if not self.check.ok:
                self.design_notes.append("given thresholds fail WAIT's conditions: " + "; ".join(self.check.failures))
            return
        try:
            design = proportional_thresholds(types, self.d0_s, self.d1_s_per_token, capacity_tokens, self.c_s,
                                             **conv)
        except ValueError as exc:
            if self.check is None:
                raise
            # An online estimate that looks overloaded: raising mid-run would lose the run.
            self.design_notes.append(f"re-design kept thresholds {list(self.n)}: {exc}")
            return
        self.n, self.check = design.thresholds, design.check
        if not design.check.ok:
            self.design_notes.append("designed thresholds fail WAIT's conditions: " + "; ".join(design.check.failures))

    def _label(self, r: Request) -> int:
        return self._type_of(max(1, int(self._predict.output_len(r))))

    def stats(self) -> dict:
        return {"thresholds": list(self.n), "num_repair_evictions": self.num_repair_evictions,
                "num_redesigns": len(self.redesigns), "batch_memory_tokens": self.check.batch_memory_tokens}

    # --- the step --------------------------------------------------------------------------
    def schedule(self, view: View) -> Decision:
        self._observe(view)
        self._sync(view)
        drain = not view.arrivals_pending
        n, waiting, stages = self.n, self._waiting, self._stages
        gate = self.wait_gate and not drain
        eligible = [j for j in range(len(n)) if (len(waiting[j]) >= n[j] if gate else waiting[j] or stages[j])]
        if not eligible:
            return IDLE
        run: dict[int, int] = {}
        chosen: list[tuple[Request, int | None]] = []  # (request, stage it is served at; None = prefill)
        partial_stage = False
        for j in eligible:
            cap, heap = n[j], waiting[j]
            for _ in range(min(cap, len(heap))):
                r = heapq.heappop(heap)[2]
                run[r.request_id] = r.num_tokens - r.num_computed_tokens
                chosen.append((r, None))
            for s, bucket in stages[j].items():
                if len(bucket) > cap:
                    bucket.sort(key=fifo_key)
                    partial_stage = True
                for r in bucket[:cap]:
                    run[r.request_id] = 1
                    chosen.append((r, s))
        evicted = lifo_repair(view, run, [view.resident.values()])
        if evicted:
            self.num_repair_evictions += len(evicted)
            for rid in evicted:
                r = view.resident[rid]
                self._remove(r, stage_of(r))
                # A restarted request waits for prefill again, at the head of its type's
                # queue by its original arrival time (docs/conventions.md#wait-restart).
                heapq.heappush(waiting[self._type[rid]], (*fifo_key(r), r))
        if len(run) < len(chosen):
            # The repair dropped new prefills (with or without evicting anyone): they hold
            # nothing and wait again in their place in their type's queue. Left out of
            # `chosen` they are never filed as stage-0 residents (issue 15, item 6).
            for r, s in chosen:
                if s is None and r.request_id not in run:
                    heapq.heappush(waiting[self._type[r.request_id]], (*fifo_key(r), r))
            chosen = [(r, s) for r, s in chosen if r.request_id in run]
        self._last_run = chosen
        # The same pure-decode step repeats until an arrival or a finish when every resident
        # of the served types is selected and no waiting request could change eligibility.
        steady = (not partial_stage and not evicted and all(s is not None for _, s in chosen)
                  and not any(waiting))
        return Decision(run, restart=tuple(evicted), repeat=STEADY if steady and run else 1)

    def _remove(self, r: Request, s: int) -> None:
        stages = self._stages[self._type[r.request_id]]
        bucket = stages[s]
        bucket.remove(r)
        if not bucket:
            del stages[s]

    def _sync(self, view: View) -> None:
        """Apply the previous step to the buckets: each request served advanced one stage
        (a prefill to stage 1) or finished; then file the new arrivals."""
        for r, s in self._last_run:
            if s is not None:
                self._remove(r, s)
            if not r.is_finished:
                self._stages[self._type[r.request_id]][stage_of(r)].append(r)
        self._last_run = []
        for r in view.arrived:
            j = self._label(r)
            self._type[r.request_id] = j
            heapq.heappush(self._waiting[j], (*fifo_key(r), r))
        for r in view.finished:
            j = self._type.pop(r.request_id, None)
            if j is not None and r.status is RequestStatus.ABORTED:
                self._drop_aborted(r, j)

    def _drop_aborted(self, r: Request, j: int) -> None:
        """Forget a request its client withdrew (online loop): a paused resident sits in
        its stage's bucket, a waiting one in its type's queue (one that ran in the last
        step has already left its bucket above)."""
        s = stage_of(r)
        bucket = self._stages[j].get(s)
        if bucket is not None and r in bucket:
            bucket.remove(r)
            if not bucket:
                del self._stages[j][s]
            return
        rid = r.request_id
        heap = self._waiting[j]
        heap[:] = [e for e in heap if e[1] != rid]
        heapq.heapify(heap)
