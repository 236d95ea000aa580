"""WAIT-CP (`wait-cp`): the chunked-prefill WAIT variant the paper's authors simulated.

The v4 figures of the WAIT paper were produced by `GeneralNestedChunked` in the authors'
Vidur fork, not by the theoretical WAIT / Nested WAIT (WAIT-CP, the authors' code; docs/conventions.md#wait-cp). This module
follows that code: prompts are prefilled in chunks of at most `chunk_size` tokens, the
decode stages are cut into segments at the types' output lengths, each segment holds at
most its budget B_k and admits at its entry stage at most a rotating per-stage limit,
interior stages advance freely, a per-segment WAIT gate pauses a segment until enough
requests wait at its entry, a token gate G caps the tokens of a batch and `tl` caps the
requests holding KV system-wide.

Pure functions, usable without a simulator:
- `token_gate(types, tl, chunk_size)` -> (P, G), WAIT-CP, the authors' code; docs/wait.md;
- `fluid_requests_in_service(...)` -> (dT, requests in service), the automatic-tl model;
- `design_wait_cp(...)` -> `WaitCPDesign`: segments, budgets, rotation and gate.

Conventions: engine step convention (docs/wait.md, docs/conventions.md#wait-steps): stage = output tokens emitted, the
last prefill chunk emits the first token, a request with output o completes on reaching
stage o. Segment k covers stages o_{k-1} .. o_k - 1. A request longer than the last
segment's output stays in the last segment, as an interior request (it advances freely).
The scheduler never reads `output_len` to decide: it sees stages and completions only.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass

from kvsched.bounds.fluid import RequestType
from kvsched.decision import Decision, View
from kvsched.kvcache import blocks_for
from kvsched.registry import SCHEDULERS
from kvsched.request import Request
from kvsched.schedulers.wait_common import (
    WaitFamily,
    fifo_key,
    group_types,
    lifo_repair,
    parse_types,
)
from kvsched.schedulers.wait_design import rotating_limit, segment_budgets

PER_STAGE_BASES = ("output_stages", "pipeline_depth")


def _chunks(prompt_len: int, chunk_size: int) -> int:
    return max(1, math.ceil(prompt_len / chunk_size))


def token_gate(types, tl: float, chunk_size: int) -> tuple[float, int]:
    """WAIT-CP's token budget per batch (WAIT-CP, the authors' code; docs/wait.md): returns (P, G) with
    D = sum_i w_i (K_i + o_i), Kbar = sum_i w_i K_i, P = tl / D and
    G = ceil((tl - P Kbar) + P Kbar cs): one token per decode plus P Kbar chunks of cs."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    kinds = parse_types(types)
    total = sum(t.rate for t in kinds)
    depth = sum(t.rate / total * (_chunks(t.prompt_len, chunk_size) + t.output_len) for t in kinds)
    kbar = sum(t.rate / total * _chunks(t.prompt_len, chunk_size) for t in kinds)
    p = tl / depth
    # The round-off guard keeps an exact integer from ceiling one too high.
    return p, math.ceil((tl - p * kbar) + p * kbar * chunk_size - 1e-9)


def fluid_requests_in_service(types, chunk_size: int, d0_s: float, d1_s_per_token: float,
                              d2_s_per_prefill_token: float = 0.0) -> tuple[float, float]:
    """(dT, N): the iteration time at the fluid equilibrium including prefill compute,
    dT = d0 / (1 - sum_j lambda_j (d1 S_j + d2 l_j)) with S_j = o_j (l_j + (o_j - 1) / 2)
    (engine convention: o_j steps, stage s charged l_j + s), and the requests in service
    N = sum_j lambda_j dT (K_j + o_j), K_j = ceil(l_j / cs). Raises ValueError when the
    load is at or above 1 (no total limit keeps up)."""
    kinds = parse_types(types)
    load = sum(t.rate * (d1_s_per_token * t.output_len * (t.prompt_len + (t.output_len - 1) / 2)
                         + d2_s_per_prefill_token * t.prompt_len) for t in kinds)
    if load >= 1.0:
        raise ValueError(f"the workload is overloaded in the design time model (load {load:.4g} >= 1 with "
                         f"d0={d0_s}, d1={d1_s_per_token}, d2={d2_s_per_prefill_token}): no total limit keeps up")
    dt = d0_s / (1.0 - load)
    return dt, sum(t.rate * dt * (_chunks(t.prompt_len, chunk_size) + t.output_len) for t in kinds)


@dataclass(frozen=True)
class WaitCPDesign:
    """Everything the batch rule needs. Segment k covers stages edges[k-1] .. edges[k] - 1
    (edges[-1] = 0); B_k is spread over `rotation[k]` calls by `rotating_limit`."""

    types: tuple[RequestType, ...]  # one per segment (grouped types; the single type for uniform segments)
    total_limit: int  # tl
    edges: tuple[int, ...]  # o_k
    counts: tuple[int, ...]  # decode stages per segment
    rotation: tuple[int, ...]  # counts, plus the prefill chunks for segment 1 under "pipeline_depth"
    per_stage: tuple[float, ...]  # n_k, real-valued
    budgets: tuple[int, ...]  # B_k
    gate_rate: float  # P
    token_budget: int  # G
    fluid_in_service: float | None  # the automatic rule's N (None when tl was given)
    notes: tuple[str, ...]

    @property
    def starts(self) -> tuple[int, ...]:
        return (0, *self.edges[:-1])


def design_wait_cp(types, capacity_tokens: int, *, total_limit: int | None = None, chunk_size: int = 256,
                   eta: float = 0.05, num_segments: int | None = None, segment_size: int | None = None,
                   per_stage_basis: str = "output_stages", d0_s: float = 0.0106, d1_s_per_token: float = 4.0e-7,
                   d2_s_per_prefill_token: float = 0.0, tl_slack: float = 0.25, block_size: int = 1,
                   watermark_fraction: float = 0.0) -> WaitCPDesign:
    """WAIT-CP's segments, budgets (WAIT-CP, the authors' code; docs/wait.md) and token gate for a workload.

    `types` are the workload's types (with their own prompts, for the memory check and
    the automatic tl); the segments come from them, grouped into `num_segments`
    equal-width groups when given, or cut uniformly every `segment_size` stages (a single
    type, WAIT-CP, the authors' code; docs/wait.md). `total_limit=None` chooses tl automatically (see WaitCPScheduler).
    The memory check counts a request's peak in whole `block_size` blocks against the
    capacity left above the admission watermark."""
    if per_stage_basis not in PER_STAGE_BASES:
        raise ValueError(f"per_stage_basis must be one of {PER_STAGE_BASES}, got {per_stage_basis!r}")
    kinds = parse_types(types)
    notes: list[str] = []
    if segment_size is not None:
        if len(kinds) != 1:
            raise ValueError(f"segment_size (uniform segments, WAIT-CP, the authors' code; docs/wait.md) needs a single type, got {len(kinds)}")
        seg_types = kinds
        out = kinds[0].output_len
        edges = tuple(min(out, segment_size * (k + 1)) for k in range(math.ceil(out / segment_size)))
    else:
        seg_types = group_types(kinds, num_segments) if num_segments is not None else kinds
        edges = tuple(t.output_len for t in seg_types)
    counts = tuple(b - a for a, b in zip((0, *edges[:-1]), edges))
    rotation = list(counts)
    if per_stage_basis == "pipeline_depth":
        total_rate = sum(t.rate for t in seg_types)
        rotation[0] += max(1, round(sum(t.rate / total_rate * _chunks(t.prompt_len, chunk_size)
                                        for t in seg_types)))
    rotation = tuple(rotation)

    def budgets(tl: float) -> tuple[tuple[float, ...], tuple[int, ...]]:
        if segment_size is not None:  # every segment the same rate tl / (stages of the pipeline)
            n = tl / sum(rotation)
            return (n,) * len(rotation), tuple(max(1, round(n * c)) for c in rotation)
        b = segment_budgets([t.rate for t in seg_types], rotation, tl, eta)
        return b.per_stage, b.budgets

    # Smallest tl with n_1 >= 1 (n_1 is linear in tl); the guard absorbs round-off.
    tl_min = max(1, math.ceil(1.0 / budgets(1.0)[0][0] - 1e-9))
    peak = blocks_for(max(t.prompt_len + t.output_len for t in kinds), block_size) * block_size
    usable_tokens = int(capacity_tokens * (1.0 - watermark_fraction))
    in_service = None
    if total_limit is None:
        _, in_service = fluid_requests_in_service(kinds, chunk_size, d0_s, d1_s_per_token, d2_s_per_prefill_token)
        tl = max(math.ceil((1.0 + tl_slack) * in_service - 1e-9), tl_min)
        if tl * peak > usable_tokens:
            capped = max(1, usable_tokens // peak)
            notes.append(f"automatic tl {tl} capped to {capped} by memory: {tl} requests of up to {peak} KV tokens "
                         f"exceed the capacity {capacity_tokens}")
            tl = capped
    else:
        tl = total_limit
        if tl * peak > usable_tokens:
            notes.append(f"tl={tl} requests of up to {peak} KV tokens may exceed the capacity {capacity_tokens}; "
                         f"the LIFO repair is the safety net")
    per_stage, b = budgets(tl)
    p, g = token_gate(seg_types, tl, chunk_size)
    return WaitCPDesign(seg_types, tl, edges, counts, rotation, tuple(per_stage), tuple(b), p, g, in_service,
                        tuple(notes))


@SCHEDULERS.register("wait-cp", "WAIT-CP: the authors' simulated WAIT: chunked prefill, segment budgets, "
                                "per-segment wait gate, token gate, system-wide cap tl")
@dataclass(eq=False)
class WaitCPScheduler(WaitFamily):
    """WAIT-CP (WAIT-CP, the authors' code; docs/wait.md), one call per iteration boundary:

    1. decodes, segment by segment: a segment is frozen (its residents pause) when the
       wait gate is on, its entry holds fewer than lim_k(t) requests and entry + inside
       is below B_k; otherwise its entry stage (k >= 2) admits min(lim_k(t), B_k - inside)
       requests FIFO and every interior stage runs. Segment 1's entry is stage 0 (waiting
       and mid-prefill), so its gate pauses only its decode stages;
    2. continuing prefills, FIFO, chunks of min(remaining, cs, G - tokens);
    3. admissions, FIFO, up to min(lim_1(t), B_1 - paused segment-1 decodes,
       tl - requests holding KV), while tokens < G and the prompt's blocks fit above a
       `watermark_fraction` watermark (waived when nothing is resident). The whole
       prompt's blocks are reserved at admission: the free-block arithmetic keeps the
       rest of a partial prompt reserved although the loop allocates per chunk.

    t counts scheduling calls (idle ones too, as in the authors' code). Where the project's
    defaults depart from that code: after the last arrival (docs/conventions.md#wait-drain) the wait gate is off and
    lim_k(t) is at least 1, so every request finishes (the code drops what is left); a
    LIFO repair restarts residents should a decision not fit the free blocks (docs/conventions.md#wait-memory), counted
    in `num_repair_evictions` (none with a sane tl); the watermark is waived when nothing
    is resident (a prompt could otherwise wait forever).

    Automatic tl (`tl=None`), the project's rule: with the design time model (d0, d1, d2;
    d2 per prefill token) the fluid iteration time is
    dT = d0 / (1 - sum_j lambda_j (d1 S_j + d2 l_j)), S_j = o_j (l_j + (o_j - 1) / 2), and
    N = sum_j lambda_j dT (K_j + o_j) requests are in service (K_j = ceil(l_j / cs)).
    tl = max(ceil((1 + tl_slack) N), the smallest tl giving segment 1 n_1 >= 1). If
    tl max_j (l_j + o_j) exceeds the capacity, tl is capped by memory (noted in
    `design_notes`). An overloaded workload (denominator <= 0) raises ValueError.

    `per_stage_basis` (docs/conventions.md#wait-per-stage): "output_stages" spreads budgets over a segment's output
    stages (the authors' code); "pipeline_depth" adds segment 1's prefill chunks K (the
    rate-weighted mean over its types, rounded) to its stage count, i.e. ~tl / (K + o).
    """

    tl: int | None = None
    chunk_size: int = 256
    eta: float = 0.05
    num_segments: int | None = None
    segment_size: int | None = None
    wait_gate: bool = True
    token_gate: bool = True
    watermark_fraction: float = 0.01
    per_stage_basis: str = "output_stages"
    d0_s: float = 0.0106
    d1_s_per_token: float = 4.0e-7
    d2_s_per_prefill_token: float = 0.0
    tl_slack: float = 0.25

    _label_on_arrival = False

    def __post_init__(self) -> None:
        if self.tl is not None and self.tl < 1:
            raise ValueError(f"tl must be >= 1 (or None for automatic), got {self.tl}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        for name in ("num_segments", "segment_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_segments is not None and self.segment_size is not None:
            raise ValueError("num_segments and segment_size are mutually exclusive")
        if not 0.0 <= self.watermark_fraction < 1.0:
            raise ValueError(f"watermark_fraction must be in [0, 1), got {self.watermark_fraction}")
        if self.per_stage_basis not in PER_STAGE_BASES:
            raise ValueError(f"per_stage_basis must be one of {PER_STAGE_BASES}, got {self.per_stage_basis!r}")
        if not self.d0_s > 0 or self.d1_s_per_token < 0 or self.d2_s_per_prefill_token < 0:
            raise ValueError("d0_s must be > 0 and d1_s_per_token, d2_s_per_prefill_token >= 0")
        if not self.tl_slack >= 0:
            raise ValueError(f"tl_slack must be >= 0, got {self.tl_slack}")
        self._init_workload()
        if self.segment_size is not None and len(self._types) != 1:
            raise ValueError(f"segment_size (uniform segments, WAIT-CP, the authors' code; docs/wait.md) needs a single type, got {len(self._types)}")
        self.design: WaitCPDesign | None = None
        self.design_notes: list[str] = []
        self.num_repair_evictions = 0
        self._calls = 0
        self._heap: list[tuple[float, int]] = []  # (arrival, id) of requests without KV: FIFO admission
        self._seg_of: list[int] = []
        # Fail at construction, not at the first call, when no tl keeps up; before the
        # first call (capacity unknown) total_limit is the rule's value without the memory cap.
        self.total_limit = self.tl if self.tl is not None else design_wait_cp(
            self._types, 1 << 62, **self._design_args(None)).total_limit

    def config(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def _design_args(self, tl: int | None) -> dict:
        names = ("chunk_size", "eta", "num_segments", "segment_size", "per_stage_basis", "d0_s", "d1_s_per_token",
                 "d2_s_per_prefill_token", "tl_slack", "watermark_fraction")
        return {"total_limit": tl, "block_size": self._block_size, **{n: getattr(self, n) for n in names}}

    def _design(self, types: tuple[RequestType, ...], capacity_tokens: int) -> None:
        try:
            design = design_wait_cp(types, capacity_tokens, **self._design_args(self.tl))
        except ValueError as exc:
            if self.design is None:
                raise
            # A re-design from online estimates that look overloaded: raising mid-run would
            # lose the run, so keep the limit in use and say so.
            design = design_wait_cp(types, capacity_tokens, **self._design_args(self.design.total_limit))
            self.design_notes.append(f"re-design kept tl={self.design.total_limit}: {exc}")
        self.design = design
        self.total_limit = design.total_limit
        self.design_notes.extend(n for n in design.notes if n not in self.design_notes)
        seg_of: list[int] = []
        for k, c in enumerate(design.counts):
            seg_of += [k] * c
        self._seg_of = seg_of

    def stats(self) -> dict:
        d = self.design
        out = {"total_limit": self.total_limit, "num_repair_evictions": self.num_repair_evictions,
               "num_calls": self._calls, "design_notes": list(self.design_notes)}
        if d is not None:
            out.update(token_budget=d.token_budget if self.token_gate else None, gate_rate=d.gate_rate,
                       edges=list(d.edges), budgets=list(d.budgets), per_stage=list(d.per_stage),
                       rotation=list(d.rotation), fluid_in_service=d.fluid_in_service)
        return out

    def schedule(self, view: View) -> Decision:
        self._observe(view)
        heap = self._heap
        for r in view.arrived:
            heapq.heappush(heap, (r.arrival_time, r.request_id))
        d = self.design
        t = self._calls
        self._calls += 1
        drain = not view.arrivals_pending
        gate = self.wait_gate and not drain
        bs, la = view.block_size, view.lookahead_tokens
        held = view.block_counts
        m, edges, budgets, seg_of = len(d.edges), d.edges, d.budgets, self._seg_of
        top = len(seg_of)

        # One pass over the residents (at most ~tl of them): bucket by segment role.
        entries: list[list[Request]] = [[] for _ in range(m)]
        interior: list[list[Request]] = [[] for _ in range(m)]
        mid: list[Request] = []
        reserved = 0
        for r in view.resident.values():
            s = r.num_output_tokens
            if s == 0:
                mid.append(r)
                # The loop allocates per chunk; the rest of the prompt stays spoken for.
                reserved += blocks_for(r.num_tokens + la, bs) - held.get(r.request_id, 0)
                continue
            k = seg_of[s] if s < top else m - 1
            (entries if k and s == edges[k - 1] else interior)[k].append(r)
        free = view.num_free_blocks - reserved

        run: dict[int, int] = {}
        tokens = 0
        paused_inside1 = 0
        lim1 = 0
        for k in range(m):
            lim = rotating_limit(budgets[k], d.rotation[k], t)
            if drain:
                lim = max(1, lim)
            if k == 0:
                lim1 = lim
            n_entry = len(view.waiting) + len(mid) if k == 0 else len(entries[k])
            inside = len(interior[k])
            if gate and n_entry < lim and n_entry + inside < budgets[k]:
                if k == 0:
                    paused_inside1 = inside
                continue
            chosen = interior[k]
            if k:
                take = min(lim, max(0, budgets[k] - inside))
                if take:
                    chosen = sorted(entries[k], key=fifo_key)[:take] + chosen
            for r in chosen:
                run[r.request_id] = 1
                free -= view.blocks_needed(r, 1)
            tokens += len(chosen)

        cap = d.token_budget if self.token_gate else math.inf
        cs = self.chunk_size
        for r in sorted(mid, key=fifo_key):
            give = min(r.num_remaining_tokens, cs, cap - tokens)
            if give > 0:
                run[r.request_id] = give
                tokens += give

        room = min(lim1, max(0, budgets[0] - paused_inside1), max(0, self.total_limit - len(view.resident)))
        watermark = int(self.watermark_fraction * view.num_blocks)
        admitted: list[int] = []
        waiting = view.waiting
        while heap and len(admitted) < room and tokens < cap:
            rid = heap[0][1]
            r = waiting.get(rid)
            if r is None or rid in run:  # already admitted (stale entry)
                heapq.heappop(heap)
                continue
            need = blocks_for(r.num_tokens + la, bs)
            if free - need < (watermark if view.resident or admitted else 0):
                break
            give = min(r.num_tokens, cs, cap - tokens)
            heapq.heappop(heap)
            run[rid] = give
            tokens += give
            free -= need
            admitted.append(rid)

        evicted = lifo_repair(view, run, [view.resident.values()])
        if evicted or len(run) < len(admitted):
            self.num_repair_evictions += len(evicted)
            for rid in evicted:
                heapq.heappush(heap, (view.resident[rid].arrival_time, rid))
            for rid in admitted:
                if rid not in run:  # dropped by the repair: back in the queue
                    heapq.heappush(heap, (waiting[rid].arrival_time, rid))
        return Decision(run, restart=tuple(evicted))


__all__ = ["WaitCPDesign", "WaitCPScheduler", "design_wait_cp", "fluid_requests_in_service", "token_gate"]
