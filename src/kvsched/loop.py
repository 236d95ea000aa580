"""The one loop: ask the scheduler, validate and apply its decision, execute, update.

The loop owns all request state and the KV cache; schedulers only decide. Every
decision is validated before anything changes: a decision that runs an unknown id,
preempts a request that is not resident, asks for more tokens than a request has
left, or needs more KV blocks than are free raises `SchedulingError` naming the step,
the request ids and the numbers.

Preemption frees a request's KV before the step and either keeps its generated tokens
(`Decision.preempt`, vLLM recompute) or discards them (`Decision.restart`, kill-and-
restart). Every residency is an attempt: the loop records its start step, the tokens it
generated and how it ended, and charges a killed attempt's output tokens and KV area
(token x steps) to the request as waste. With `check_oracle=True` a scheduler with
`clairvoyant = False` sees requests only through `BlindRequest` (reading the true output
length raises): a proof that it never looks, paid for with slower attribute reads, so it
is off by default and on wherever a run should prove it (tests, `simulate_batch`). With
`lookahead_tokens=k` every scheduled request is allocated k slots beyond its computed
tokens; k = 1 is the theory papers' memory ledger (`simulate_theory`).

Pure-decode runs are fast-forwarded when the scheduler promises (`Decision.repeat`)
that it would repeat the same decision: the loop then executes k identical steps at
once, k bounded by the next arrival, the next finish and the free memory, so the
result equals stepping one at a time (up to floating-point summation order).

Schedulers that opt in (`uses_pool`) address decoding requests as a group: the decode
pool (`kvsched.pool`) advances them by a shared counter, so a step costs O(events), not
O(batch), with the same results (`decode_pool=False` keeps the per-request path). A
request that leaves the batch loop is packed into the run's `RequestTable` and the steps
go to a `StepTable`: a million-request run stays well under 1 GB.

`run` serves a known request list; `OnlineLoop` is the same loop driven one iteration
at a time by a server, with requests added and aborted while it runs.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from kvsched.backend import Backend, BatchShape
from kvsched.decision import Decision, PrefixHits, Scheduler, View
from kvsched.kvcache import KVCache, PrefixCachingKVCache, blocks_for
from kvsched.pool import DecodePool
from kvsched.request import BlindRequest, Request, RequestStatus
from kvsched.request_table import RequestTable

# Bound once: reading an Enum member off its class goes through the metaclass's
# __getattr__ hook, about 15x the cost of a global, and these are read every step.
_WAITING, _RUNNING, _FINISHED, _ABORTED, _REJECTED = (
    RequestStatus.WAITING, RequestStatus.RUNNING, RequestStatus.FINISHED, RequestStatus.ABORTED, RequestStatus.REJECTED)

STEP_COLUMNS = (
    "step",  # index of the first step in this row
    "num_steps",  # >1 when a decode run was fast-forwarded
    "start_time",
    "duration",  # seconds, all steps of the row
    "num_seqs",
    "num_prefill_tokens",
    "num_decode_seqs",
    "num_batch_kv_tokens",  # KV held by the batch after the (last) step
    "kv_used_tokens",  # whole cache, after allocation, before finished requests free
    "kv_used_blocks",
    "num_waiting",
    "num_resident",
    "num_preempted",
    "num_finished",
    "kv_token_seconds",  # sum over the row's steps of kv_used_tokens x step duration
)


_FLOAT_COLUMNS = ("start_time", "duration", "kv_token_seconds")
_INT_COLUMNS = tuple(c for c in STEP_COLUMNS if c not in _FLOAT_COLUMNS)
# One row packed in C order: struct converts each number directly, where array.extend
# parses every item on its own (a third of the cost of recording a step).
_INT_ROW = {code: struct.Struct(f"={len(_INT_COLUMNS)}{code}") for code in "iq"}
_FLOAT_ROW = struct.Struct(f"={len(_FLOAT_COLUMNS)}d")
_COLUMN_INDEX = {c: (c in _FLOAT_COLUMNS, (_FLOAT_COLUMNS if c in _FLOAT_COLUMNS else _INT_COLUMNS).index(c))
                 for c in STEP_COLUMNS}


class StepTable(Mapping):
    """The steps table (STEP_COLUMNS), stored flat in two typed arrays: the integer columns
    in 32-bit ints (widened to 64 bits the first time a value needs it) and the times in
    doubles. A million-request run has millions of rows; lists of boxed numbers cost ~5x more.

    Reads as a read-only mapping column -> list (a new list on every access, holding the
    values appended, exactly); `array(column)` gives a numpy array without the list."""

    __slots__ = ("_floats", "_int_row", "_ints")

    def __init__(self) -> None:
        self._ints = array("i")
        self._floats = array("d")
        self._int_row = _INT_ROW["i"]

    def append_row(self, ints: tuple, floats: tuple) -> None:
        """One row: the _INT_COLUMNS values, then the _FLOAT_COLUMNS values."""
        try:
            self._ints.frombytes(self._int_row.pack(*ints))
        except struct.error:
            self._widen(ints)
        self._floats.frombytes(_FLOAT_ROW.pack(*floats))

    def _widen(self, ints: tuple) -> None:
        """The int row `ints` did not fit 32 bits (nothing of it was stored): to 64 bits."""
        if self._ints.typecode == "q":
            raise OverflowError(f"a steps-table value does not fit 64 bits: {ints}")
        self._ints = array("q", self._ints)
        self._int_row = _INT_ROW["q"]
        self._ints.frombytes(self._int_row.pack(*ints))

    @property
    def num_rows(self) -> int:
        return len(self._floats) // len(_FLOAT_COLUMNS)

    def array(self, column: str) -> np.ndarray:
        is_float, i = _COLUMN_INDEX[column]
        if is_float:
            flat = np.frombuffer(self._floats, dtype=np.float64) if self._floats else np.zeros(0)
            return flat[i::len(_FLOAT_COLUMNS)].copy()
        dtype = np.int32 if self._ints.typecode == "i" else np.int64
        flat = np.frombuffer(self._ints, dtype=dtype) if self._ints else np.zeros(0, dtype=np.int64)
        return flat[i::len(_INT_COLUMNS)].astype(np.int64)

    def __getitem__(self, column: str) -> list:
        return self.array(column).tolist()

    def __iter__(self) -> Iterator[str]:
        return iter(STEP_COLUMNS)

    def __len__(self) -> int:
        return len(STEP_COLUMNS)


# A request arriving within this many seconds after a step boundary counts as arrived at
# it (the clock snaps forward to its arrival): a fast-forwarded run sums step durations in
# another order than stepping does, and an arrival must not fall on different sides of a
# boundary in the two.
TIME_EPS_S = 1e-9


# A fast-forwarded run ended by the next arrival within this many steps is summed in Python
# (`_Loop._fast_forward_durations`); a longer one with numpy.
_SHORT_RUN = 32


def _sum(values) -> float:
    """`float(numpy.sum(values))` of a numpy array or, bit for bit, of a list of floats: numpy
    adds float64 in pairs (umath's pairwise sum: below 8 values in order from 0.0; up to 128
    in 8 interleaved partial sums combined as ((0+1)+(2+3))+((4+5)+(6+7)), then the rest in
    order; above that, two halves split at a multiple of 8). tests/test_loop.py compares it
    with numpy."""
    if isinstance(values, np.ndarray):
        return float(values.sum())
    return _pairwise(values, 0, len(values))


def _pairwise(a: list[float], lo: int, n: int) -> float:
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= 128:
        r = a[lo:lo + 8]
        i, whole = 8, n - n % 8
        while i < whole:
            for j in range(8):
                r[j] += a[lo + i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(a, lo, half) + _pairwise(a, lo + half, n - half)


class SchedulingError(RuntimeError):
    """A decision the loop cannot apply: always a scheduler bug."""


@dataclass
class Run:
    """Everything a run produced: finished/rejected requests and one row per step."""

    requests: Sequence[Request]  # a RequestTable from the loop: an equal new Request on every access
    steps: Mapping[str, list]  # a StepTable from the loop
    capacity_tokens: int
    block_size: int
    num_blocks: int
    end_time: float

    @property
    def rejected(self) -> list[Request]:
        reqs = self.requests
        if isinstance(reqs, RequestTable):  # build only the rejected ones
            return [reqs[i] for i in reqs.indices(_REJECTED)]
        return [r for r in reqs if r.status is _REJECTED]


ProgressFn = Callable[[float, int], None]  # (simulated time, requests done)


class _BlindMapping(Mapping):
    """A live dict of requests seen through `BlindRequest`s (one proxy per request)."""

    __slots__ = ("_blind", "_data")

    def __init__(self, data: dict[int, Request], blind: Callable[[Request], BlindRequest]) -> None:
        self._data, self._blind = data, blind

    def __getitem__(self, rid: int) -> BlindRequest:
        return self._blind(self._data[rid])

    def __iter__(self) -> Iterator[int]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, rid: object) -> bool:
        return rid in self._data


def run(
    requests: Iterable[Request],
    scheduler: Scheduler,
    backend: Backend,
    kv: KVCache,
    *,
    progress: ProgressFn | None = None,
    progress_every: int = 2048,
    max_steps: int | None = None,
    lookahead_tokens: int = 0,
    check_oracle: bool = False,
    decode_pool: bool = True,
) -> Run:
    """Serve `requests` (copied, never mutated) until each finishes or is rejected.

    max_steps: raise SchedulingError after this many steps (a guard against schedulers
    that livelock, e.g. preempting and readmitting forever).
    lookahead_tokens: KV slots allocated beyond each scheduled request's computed tokens.
    1 gives the theory papers' ledger (a request holds prompt + j after its j-th token).
    check_oracle: hide true output lengths from a non-clairvoyant scheduler (reads raise).
    decode_pool: advance decoding requests as a group (`kvsched.pool`) when the scheduler
    opts in (`uses_pool`) and the backend allows it (`supports_pool`); False keeps the
    per-request path (the same results; tests and benchmarks compare the two)."""
    if lookahead_tokens < 0:
        raise ValueError(f"lookahead_tokens must be >= 0, got {lookahead_tokens}")
    # The inputs in arrival order; each is copied when it arrives, and packed into the
    # run's RequestTable when it leaves (a million live Requests would not fit in 1 GB).
    reqs = sorted(requests, key=lambda r: (r.arrival_time, r.request_id))
    if len({r.request_id for r in reqs}) != len(reqs):
        raise ValueError("request ids must be unique")
    return _Loop(reqs, scheduler, backend, kv, progress, progress_every, max_steps, lookahead_tokens,
                 check_oracle, decode_pool).run()


class _Loop:
    def __init__(self, reqs, scheduler, backend, kv, progress, progress_every, max_steps, lookahead_tokens=0,
                 check_oracle=False, decode_pool=False):
        self.reqs: list[Request] = reqs
        self.scheduler = scheduler
        self.backend = backend
        self.kv: KVCache = kv
        self.progress = progress
        self.progress_every = progress_every
        self.max_steps = max_steps
        self.lookahead = lookahead_tokens
        # Automatic prefix caching lives in the KV model (PrefixCachingKVCache); off, the
        # loop pays nothing for it.
        self.apc = kv.prefix_caching
        self.hits: PrefixHits | None = None
        if self.apc:
            kv.lookahead_tokens = lookahead_tokens
        self.blind = check_oracle and not getattr(scheduler, "clairvoyant", True)
        self.waiting: dict[int, Request] = {}
        self.resident: dict[int, Request] = {}
        self.steps = StepTable()
        self.now = 0.0
        self.step_index = 0
        self.next_arrival = 0  # index into reqs
        self.num_done = 0
        self.arrived: list[Request] = []
        self.finished: list[Request] = []
        self.accepting = False  # an online loop takes requests while it runs
        # The batch loop packs requests that leave; the online loop hands them to its server.
        self.table: RequestTable | None = RequestTable(reqs)
        self._index: dict[int, int] = {}  # request id -> position in reqs (while in the system)
        self.pool: DecodePool | None = None
        # The pool keeps the KV model's per-request counts lazily, writing its private fields:
        # only the two stock models (a subclass may read them at every call, as checking ones do).
        if (decode_pool and getattr(scheduler, "uses_pool", False) and getattr(backend, "supports_pool", False)
                and type(kv) in (KVCache, PrefixCachingKVCache) and not kv.track_block_ids):
            self.pool = DecodePool(kv, lookahead_tokens)
        self.num_admissions = 0
        # A pool-only steady decision the loop applies again without a call (`reuse_steady_pool`).
        self._reuse_steady = self.pool is not None and getattr(scheduler, "reuse_steady_pool", False)
        self._steady: Decision | None = None
        self._steady_version = 0  # the prefix cache's key version when it was decided
        self._steady_waiting = False  # whether requests were waiting when it was decided
        self._steady_past_arrivals = self._reuse_steady and getattr(scheduler, "steady_past_arrivals", False)
        self._decode_time = getattr(backend, "decode_time", None)
        self._make_views()

    # --- main loop -------------------------------------------------------------------
    def _make_views(self) -> None:
        self.blocks_view = self.kv.block_counts
        if not self.blind:
            self.waiting_view = MappingProxyType(self.waiting)
            self.resident_view = MappingProxyType(self.resident)
            self.wrap = None
            return
        proxies: dict[int, BlindRequest] = {}
        self._proxies = proxies

        def wrap(r: Request) -> BlindRequest:
            p = proxies.get(r.request_id)
            if p is None:
                p = proxies[r.request_id] = BlindRequest(r)
            return p

        self.waiting_view = _BlindMapping(self.waiting, wrap)
        self.resident_view = _BlindMapping(self.resident, wrap)
        self.wrap = wrap
        if self.pool is not None:
            self.pool.outside_view = _BlindMapping(self.pool.outside, wrap)

    def run(self) -> Run:
        n_total = len(self.reqs)
        last_report = 0
        reqs, eps = self.reqs, TIME_EPS_S
        while self.num_done < n_total:
            i = self.next_arrival
            if i < n_total and reqs[i].arrival_time <= self.now + eps:  # (most iterations: none due)
                self._admit_arrivals()
            if not self.waiting and not self.resident:
                if self.next_arrival < n_total:
                    self.now = max(self.now, self.reqs[self.next_arrival].arrival_time)
                continue
            self._schedule_and_apply()
            if self.max_steps is not None and self.step_index > self.max_steps:
                raise SchedulingError(
                    f"exceeded max_steps={self.max_steps} with {n_total - self.num_done} requests unfinished"
                )
            if self.progress is not None and self.step_index - last_report >= self.progress_every:
                last_report = self.step_index
                self.progress(self.now, self.num_done)
        if self.progress is not None:
            self.progress(self.now, self.num_done)
        kv = self.kv
        return Run(self.table, self.steps, kv.capacity_tokens, kv.block_size, kv.num_blocks, self.now)

    def _schedule_and_apply(self) -> None:
        """One scheduling call and the step (or idling) it decides."""
        if self._reuse_steady:
            # The scheduler opted in (`Scheduler.reuse_steady_pool`) to a pool-only step without
            # a call while the members' next blocks fit: its last decision if that was steady
            # (so every resident was a member) and, if requests wait, nothing finished, nothing
            # arrived (or, with `steady_past_arrivals`, others were waiting then) and no key a
            # lookup can find was added or removed; or, with nothing waiting and every resident
            # a member, `pool_decision_when_idle`. Arrived and finished requests stay in
            # `arrived` and `finished` for the next call.
            pool, kv = self.pool, self.kv
            if pool.members and pool.num_new_blocks <= kv.num_free_blocks:
                steady = self._steady
                if not self.waiting and not pool.outside:
                    if steady is None:
                        steady = self.scheduler.pool_decision_when_idle(pool)
                elif steady is not None and not (
                        (not self.arrived or self._steady_waiting and self._steady_past_arrivals)
                        and not self.finished and (not self.apc or kv._version == self._steady_version)):
                    steady = None
                if steady is not None:
                    self._pool_step(steady, len(pool.members))
                    return
            self._steady = None
        arrived, finished, wrap, kv = self.arrived, self.finished, self.wrap, self.kv
        if wrap is not None:
            arrived, finished = [wrap(r) for r in arrived], [wrap(r) for r in finished]
            for r in self.finished:  # told once; then the proxy cache forgets it
                self._proxies.pop(r.request_id, None)
        if self.apc:
            self.hits = PrefixHits(kv, self.waiting)
        view = View(
            self.now, self.step_index, self.waiting_view, self.resident_view, arrived, finished,
            kv.num_free_blocks, kv.num_blocks, kv.block_size, self.accepting or self.next_arrival < len(self.reqs),
            self.blocks_view, self.lookahead, self.hits, self.pool,
        )
        self.arrived, self.finished = [], []
        decision = self.scheduler.schedule(view)
        if (self._reuse_steady and not decision.run and decision.pool and decision.repeat > 1
                and not decision.preempt and not decision.restart and self.pool.members):
            self._steady = decision
            self._steady_waiting = bool(self.waiting)
            if self.apc:
                self._steady_version = kv._version
        self._apply(decision)

    def _admit_arrivals(self) -> None:
        reqs, i, n = self.reqs, self.next_arrival, len(self.reqs)
        index, waiting, arrived = self._index, self.waiting, self.arrived
        kv, la = self.kv, self.lookahead
        bs, num_blocks = kv.block_size, kv.num_blocks
        while i < n and reqs[i].arrival_time <= self.now + TIME_EPS_S:
            r = reqs[i].copy_fresh()  # inputs are never mutated
            rid = r.request_id
            index[rid] = i
            i += 1
            if r.arrival_time > self.now:  # noqa: PLR1730 (max() costs a call per arrival)
                self.now = r.arrival_time  # snap the clock: nothing may start before it arrived
            if -(-(r.prompt_len + r.output_len - 1 + la) // bs) > num_blocks:
                self._arrive(r)  # rejected there (the check `_arrive` makes, inlined for the rest)
            else:
                waiting[rid] = r
                arrived.append(r)
        self.next_arrival = i

    def _arrive(self, r: Request) -> None:
        if blocks_for(r.peak_kv_len + self.lookahead, self.kv.block_size) > self.kv.num_blocks:
            # It could never run to completion: report it instead of letting it loop forever.
            r.status = _REJECTED
            r.reject_reason = (
                f"request {r.request_id} needs {r.peak_kv_len + self.lookahead} KV tokens at its last step "
                f"(prompt_len={r.prompt_len}, output_len={r.output_len}) but capacity is "
                f"{self.kv.num_blocks * self.kv.block_size} tokens"
            )
            self.num_done += 1
            self._pack(r)
            return
        self.waiting[r.request_id] = r
        self.arrived.append(r)

    def _pack(self, r: Request) -> None:
        """`r` left for good: into the run's table, if it came from the request list (one
        added by other means, as a server does, stays the caller's)."""
        i = self._index.pop(r.request_id, None)
        if i is not None and self.table is not None:
            self.table.pack(i, r)

    # --- applying a decision ----------------------------------------------------------
    def _apply(self, decision: Decision) -> None:
        if decision.preempt and decision.restart:
            both = set(decision.preempt).intersection(decision.restart)
            if both:
                raise SchedulingError(
                    f"step {self.step_index}: requests {sorted(both)} are both preempted and restarted; pick one kind"
                )
        runs = decision.run
        pool = self.pool
        members = 0  # pool members decoding in this step
        if pool is not None and pool.members:
            # Members named one by one leave the pool first (their state becomes exact).
            inside = pool.members
            if decision.preempt or decision.restart:
                for ids in (decision.preempt, decision.restart):
                    for rid in ids:
                        if rid in inside:
                            pool.leave(rid)
            for rid in runs:
                if rid in inside:
                    pool.leave(rid)
            if decision.pool:
                members = len(inside)
        admitted = None  # with nothing preempted, every waiting request in `runs` was waiting then
        if self.apc and runs and (decision.preempt or decision.restart):
            admitted = [rid for rid in runs if rid in self.waiting]  # waiting when the view was built
        for rid in decision.preempt:
            self._preempt(rid)
        for rid in decision.restart:
            self._preempt(rid, restart=True)
        if not runs:
            if members:
                self._pool_step(decision, members)
            else:
                self._idle(decision)
            return
        if self.apc:
            runs = self._admit_with_hits(runs, admitted)
        batch, totals, shape, new_blocks, min_slack, min_left = self._validate(runs, members)
        pool_blocks = 0
        if members:
            pool_blocks = pool.num_new_blocks
            if shape.num_prefill_tokens == 0 and decision.repeat > 1:
                min_slack = min(min_slack, pool.min_slack())
                min_left = min(min_left, pool.min_left())
        kv = self.kv
        if new_blocks > kv.num_free_blocks:
            raise SchedulingError(
                f"step {self.step_index}: decision needs {new_blocks} new KV blocks but only "
                f"{kv.num_free_blocks} of {kv.num_blocks} are free; run={dict(decision.run)}"
            )
        num_steps = 1
        durations = None
        if (
            decision.repeat > 1
            and self.backend.max_repeat > 1
            and not decision.preempt
            and not decision.restart
            and shape.num_prefill_tokens == 0
        ):
            durations = self._fast_forward_durations(decision, shape, min_slack, min_left)
        if durations is not None:
            num_steps = len(durations)
            duration = float(durations[-1])  # cumulative
            if members:
                pool.allocate(num_steps, pool.new_blocks_over(num_steps))
            bs, held = kv.block_size, kv._blocks
            totals = [(rid, total + num_steps - 1) for rid, total in totals]
            new_blocks = 0
            for rid, total in totals:
                need = -(-total // bs) - held.get(rid, 0)
                if need > 0:
                    new_blocks += need
            kv.allocate_many(totals, new_blocks)
        else:
            # Allocate first: an engine writes the step's K/V into the blocks it is given.
            if members:
                pool.allocate(1, pool_blocks)
            kv.allocate_many(totals, new_blocks - pool_blocks)  # (the pool's share is allocated)
            duration = self.backend.execute(batch, shape)
        used = kv.num_used_tokens
        # Time-weighted KV of the row. In a fast-forwarded run step i holds
        # used - n*(k-1-i) tokens; sum_i (k-1-i)*d_i equals the sum of cum[:-1].
        kv_seconds = used * duration
        if num_steps > 1:
            kv_seconds -= shape.num_seqs * _sum(durations[:-1])
        self._finish_step(batch, shape, num_steps, duration, len(decision.preempt) + len(decision.restart),
                          kv_seconds, members)

    def _pool_step(self, decision: Decision, members: int) -> None:
        """`_apply` and `_finish_step` for a decision whose only batch is the decode pool (most
        rows of a loaded run; it may preempt): the same row, without the per-request parts.
        Its shape is what `_validate` gives for an empty `run`, from the pool's aggregates.
        (Only a loop with a pool gets here: `OnlineLoop`, whose overrides it skips, has none.)"""
        pool, kv = self.pool, self.kv
        new_blocks = pool.num_new_blocks
        if new_blocks > kv.num_free_blocks:
            raise SchedulingError(
                f"step {self.step_index}: decision needs {new_blocks} new KV blocks but only "
                f"{kv.num_free_blocks} of {kv.num_blocks} are free; run={{}}"
            )
        longest, shortest = pool.decode_kv_range()
        num_kv = pool.num_kv_tokens
        shape = BatchShape(members, 0, members, num_kv, 0, longest, shortest)
        num_preempted = len(decision.preempt) + len(decision.restart)
        durations = None
        if decision.repeat > 1 and self.backend.max_repeat > 1 and not num_preempted:
            min_left = pool.min_left()
            if min_left > 1:  # (else a single step: `_fast_forward_durations` would say None)
                durations = self._fast_forward_durations(decision, shape, pool.min_slack(), min_left)
        if durations is None:
            num_steps = 1
            pool.allocate(1, new_blocks)
            duration = self.backend.execute((), shape)
            kv_seconds = kv._num_used_tokens * duration
        else:
            num_steps = len(durations)
            duration = float(durations[-1])  # cumulative
            pool.allocate(num_steps, pool.new_blocks_over(num_steps))
            kv_seconds = kv._num_used_tokens * duration  # as `_apply` computes it
            if num_steps > 1:
                kv_seconds -= members * _sum(durations[:-1])
        start = self.now
        end = start + duration
        used_tokens, used_blocks = kv._num_used_tokens, kv._num_used_blocks  # (a stock KV model: a pool runs)
        num_finished = self._finish_members(num_steps, end)
        self.num_done += num_finished
        self._record_row((
            self.step_index, num_steps, members, 0, members, num_kv + (num_steps - 1) * members,
            used_tokens, used_blocks, len(self.waiting), len(self.resident) + num_finished,
            num_preempted, num_finished,
        ), start, duration, kv_seconds, num_steps)

    def _fast_forward_durations(self, decision, shape, min_slack, min_left):
        """Cumulative durations of the longest identical decode run that is safe, or None
        when that is one step."""
        kv, n = self.kv, shape.num_seqs
        k = min(decision.repeat, self.backend.max_repeat, min_left)
        # Memory: every sequence gains one token a step; within k = slack + bs*q steps no
        # sequence needs more than q new blocks, so n*q <= free blocks is enough.
        k = min(k, min_slack + kv.block_size * (kv.num_free_blocks // n))
        if k <= 1:
            return None  # a single step: the plain path is cheaper than numpy
        pending = self.next_arrival < len(self.reqs)
        decode_time = self._decode_time
        if decode_time is not None and pending:
            # Usually the next arrival ends the run within a few steps: add the steps in Python
            # until it (numpy's cumsum and searchsorted, step by step: the same floats), and
            # only a run that goes on past _SHORT_RUN steps takes the numpy path below.
            until = self.reqs[self.next_arrival].arrival_time - self.now - TIME_EPS_S
            n, kv_tokens = shape.num_seqs, shape.num_kv_tokens
            cum: list[float] = []
            c = 0.0
            for i in range(min(k, _SHORT_RUN)):
                d = decode_time(n, kv_tokens + i * n)
                c = c + d if i else d
                cum.append(c)
                if c >= until:
                    return cum
            if k <= _SHORT_RUN:
                return cum
        cum = self.backend.decode_durations(shape, k).cumsum()
        if pending:
            gap = self.reqs[self.next_arrival].arrival_time - self.now
            # Stop at the first step that ends at or after the next arrival.
            j = int(cum.searchsorted(gap - TIME_EPS_S, side="left"))
            cum = cum[: min(j + 1, k)]
        return cum

    def _admit_with_hits(self, runs, admitted: list[int] | None):
        """Prefix caching: every request the decision admits holds its cached prefix (as the
        view reported it) before the step, and computes only the rest. A request preempted
        by this same decision is re-admitted without a hit. Returns `runs`, with a request's
        token count cut to what is left after its hit (a scheduler that sized it without
        looking at the cache asked for too many). `admitted`: the ids in `runs` that were
        waiting when the view was built (None when nothing was preempted: every waiting one)."""
        kv, hits, waiting = self.kv, self.hits, self.waiting
        clipped = None
        for rid in runs:
            r = waiting.get(rid)
            if r is None or r.request_id in kv._held:
                continue
            if r.num_computed_tokens:
                raise SchedulingError(f"step {self.step_index}: waiting request {rid} holds computed tokens")
            blocks = hits.blocks(rid) if admitted is None or rid in admitted else []
            kv.admit(r, blocks)
            if blocks:
                hit = len(blocks) * kv.block_size
                r.num_computed_tokens = hit
                r.num_reused_tokens += hit
                if r.first_scheduled_time is None:
                    r.num_cached_tokens = hit
                left = r.prompt_len + r.num_output_tokens - hit
                if runs[rid] > left:
                    if clipped is None:
                        clipped = dict(runs)
                    clipped[rid] = left
        return runs if clipped is None else clipped

    def _validate(self, runs, members: int = 0):
        """Check every entry of `runs` before anything changes; return the batch, its shape,
        the new blocks it needs, the smallest free-slot slack and decode steps left. With
        `members`, the decode pool's members decode too (first in batch order): the shape and
        the new blocks include them, the batch, slack and steps left do not."""
        bs, la = self.kv.block_size, self.lookahead
        blocks, resident, waiting = self.kv._blocks, self.resident, self.waiting
        batch: list[tuple[Request, int]] = []
        totals: list[tuple[int, int]] = []
        num_prefill = num_decode = num_kv = attn = new_blocks = max_dec = 0
        min_slack = min_left = min_dec = 1 << 62
        for rid, n in runs.items():
            r = resident.get(rid) or waiting.get(rid)
            if r is None:
                raise SchedulingError(
                    f"step {self.step_index}: run names request {rid}, which is not waiting or resident"
                )
            computed, out = r.num_computed_tokens, r.num_output_tokens
            remaining = r.prompt_len + out - computed
            if not 1 <= n <= remaining:
                raise SchedulingError(
                    f"step {self.step_index}: request {rid} asked for {n} new tokens; "
                    f"it has {remaining} left to compute"
                )
            total = computed + n
            held = blocks.get(rid, 0)
            need = -(-(total + la) // bs) - held
            if need > 0:
                new_blocks += need
            num_kv += total
            if n == 1 and out > 0:
                num_decode += 1
                # if-statements, not min(): this runs per request per step (min() is ~7x slower)
                if held * bs - computed - la < min_slack:  # noqa: PLR1730
                    min_slack = held * bs - computed - la
                if r.output_len - out < min_left:  # noqa: PLR1730
                    min_left = r.output_len - out
                if computed > max_dec:  # noqa: PLR1730
                    max_dec = computed
                if computed < min_dec:  # noqa: PLR1730
                    min_dec = computed
            else:
                num_prefill += n
                attn += n * total
            batch.append((r, n))
            totals.append((rid, total + la))
        if members:
            pool = self.pool
            longest, shortest = pool.decode_kv_range()
            if not num_decode or longest > max_dec:
                max_dec = longest
            if not num_decode or shortest < min_dec:
                min_dec = shortest
            num_decode += members
            num_kv += pool.num_kv_tokens
            new_blocks += pool.num_new_blocks
        shape = BatchShape(len(batch) + members, num_prefill, num_decode, num_kv, attn, max_dec,
                           min_dec if num_decode else 0)
        return batch, totals, shape, new_blocks, min_slack, min_left

    def _preempt(self, rid: int, restart: bool = False) -> None:
        r = self.resident.pop(rid, None)
        if r is None:
            what = "restart" if restart else "preempt"
            raise SchedulingError(f"step {self.step_index}: {what} names request {rid}, which is not resident")
        self.kv.free(rid)
        if self.pool is not None:
            self.pool.gone(rid)
        r.num_wasted_tokens += r.num_computed_tokens
        r.num_computed_tokens = 0
        r.attempts.append((r.attempt_start_step, r.num_attempt_tokens, "restart" if restart else "preempt"))
        if restart:
            r.num_discarded_tokens += r.num_output_tokens
            r.wasted_kv_area += r.attempt_kv_area
            r.num_output_tokens = 0  # generated text is discarded and produced again
            r.num_restarts += 1
        else:
            r.num_preemptions += 1
        r.attempt_kv_area = 0
        r.admit_time = None
        r.status = _WAITING
        self.waiting[rid] = r

    def _idle(self, decision: Decision) -> None:
        """Nothing to run: wait for the next arrival, or fail if none will come."""
        if decision.preempt or decision.restart:
            return  # the scheduler freed memory and will be asked again at once
        until = decision.idle_until
        if self.next_arrival < len(self.reqs):
            arrival = self.reqs[self.next_arrival].arrival_time
            until = arrival if until is None or until <= self.now else min(until, arrival)
        if until is not None and until > self.now:
            self.now = until
            return
        if self.next_arrival < len(self.reqs):
            return  # the arrival is due now
        raise SchedulingError(
            f"step {self.step_index}: scheduler {type(self.scheduler).__name__} returned an empty decision with "
            f"{len(self.waiting)} waiting and {len(self.resident)} resident requests and no arrivals "
            f"pending: it would wait forever"
        )

    def _finish_step(self, batch, shape: BatchShape, num_steps: int, duration: float, num_preempted: int,
                     kv_seconds: float, members: int = 0) -> None:
        kv, now, la, pool, table = self.kv, self.now, self.lookahead, self.pool, self.table
        start, end = now, now + duration
        used_tokens, used_blocks = kv.num_used_tokens, kv._num_used_blocks
        # The pool came first in the batch: its finishes are freed first.
        num_finished = self._finish_members(num_steps, end) if members else 0
        for r, n in batch:
            rid = r.request_id
            if r.status is _WAITING:
                del self.waiting[rid]
                self.resident[rid] = r
                r.status = _RUNNING
                r.admit_time = start
                r.attempt_start_step = self.step_index
                r.attempt_start_output = r.num_output_tokens
                if r.first_scheduled_time is None:
                    r.first_scheduled_time = start
                if pool is not None:
                    self.num_admissions += 1
                    pool.admitted(r, self.num_admissions)
            caught_up = r.num_computed_tokens + n == r.prompt_len + r.num_output_tokens
            r.num_computed_tokens += n * num_steps  # num_steps > 1 only for one-token decodes
            if num_steps == 1:
                r.attempt_kv_area += r.num_computed_tokens + la  # KV held after the step
            else:  # each step of a fast-forwarded row holds a token less than the next
                r.attempt_kv_area += (r.num_computed_tokens + la) * num_steps - num_steps * (num_steps - 1) // 2
            if caught_up:
                r.num_output_tokens += num_steps  # one token per step once caught up
                if r.first_token_time is None:
                    r.first_token_time = end
                if r.num_output_tokens >= r.output_len:
                    r.attempts.append((r.attempt_start_step, r.num_attempt_tokens, "finish"))
                    r.finish_time = end
                    r.status = _FINISHED
                    kv.free(rid)
                    del self.resident[rid]
                    self.finished.append(r)
                    num_finished += 1
                    if pool is not None:
                        pool.gone(rid)
                    if table is not None:
                        self._pack(r)
                elif pool is not None:
                    pool.try_join(r)  # it decodes from now on
        self.num_done += num_finished
        self._record_row((
            self.step_index, num_steps, shape.num_seqs, shape.num_prefill_tokens,
            shape.num_decode_seqs, shape.num_kv_tokens + (num_steps - 1) * shape.num_decode_seqs,
            used_tokens, used_blocks, len(self.waiting), len(self.resident) + num_finished,
            num_preempted, num_finished,
        ), start, duration, kv_seconds, num_steps)

    def _finish_members(self, num_steps: int, end: float) -> int:
        """The pool members that reached their output length in these `num_steps` steps finish
        at `end`; returns how many."""
        kv, pool, table = self.kv, self.pool, self.table
        num_finished = 0
        for r in pool.advance(num_steps):
            rid = r.request_id
            r.attempts.append((r.attempt_start_step, r.num_attempt_tokens, "finish"))
            r.finish_time = end
            r.status = _FINISHED
            kv.free(rid)
            pool.gone(rid)
            del self.resident[rid]
            self.finished.append(r)
            num_finished += 1
            if table is not None:
                self._pack(r)
        return num_finished

    def _record_row(self, row: tuple, start: float, duration: float, kv_seconds: float, num_steps: int) -> None:
        """The step's row (its integer columns, then the times) and the clock after it."""
        steps = self.steps
        try:  # StepTable.append_row, inlined: one row per iteration
            steps._ints.frombytes(steps._int_row.pack(*row))
        except struct.error:
            steps._widen(row)
        steps._floats.frombytes(_FLOAT_ROW.pack(start, duration, kv_seconds))
        self.step_index += num_steps
        self.now = start + duration


class OnlineLoop(_Loop):
    """The loop driven one iteration at a time, for a server.

    Requests are added while it runs (`add`, arriving now) and can be withdrawn (`abort`,
    which frees their KV); the caller sets the clock (`now`, e.g. wall time) before each
    `step`. An aborted request reaches the scheduler in `View.finished` (status ABORTED),
    the same way a finished one does, so schedulers drop it from their queues.

    A backend that knows when a request ends early (a server's EOS or stop string) lists
    its id in `backend.stopped` during `execute`: the loop then ends it after this step's
    token, as if its output length had been that long all along. Until then a request's
    `output_len` is its upper bound (the client's max_tokens).

    Unlike the batch loop it keeps no request list and hands its step rows out
    (`pop_steps`), so a long-running server does not grow."""

    def __init__(self, scheduler: Scheduler, backend: Backend, kv: KVCache, *, check_oracle: bool = False) -> None:
        super().__init__([], scheduler, backend, kv, None, 0, None, 0, check_oracle)
        self.table = None
        self.accepting = True
        self.idle_until: float | None = None  # set when the last step() decided to wait

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.resident)

    def add(self, r: Request) -> None:
        """`r` arrives now. A request too large for the KV capacity is marked REJECTED
        (with `reject_reason`) instead of being queued. Ids must not be reused while the
        scheduler has not yet been told that their previous holder left."""
        rid = r.request_id
        if rid in self.waiting or rid in self.resident or any(f.request_id == rid for f in self.finished):
            raise ValueError(f"request {rid} is already in the system")
        r.arrival_time = min(r.arrival_time, self.now)
        self._arrive(r)

    def abort(self, request_id: int) -> Request | None:
        """Withdraw a waiting or resident request and free its KV; None if it is not
        here (finished, rejected or unknown)."""
        r = self.waiting.pop(request_id, None)
        if r is None:
            r = self.resident.pop(request_id, None)
            if r is None:
                return None
            self.kv.free(request_id)
            r.attempts.append((r.attempt_start_step, r.num_attempt_tokens, "abort"))
        r.status = _ABORTED
        r.finish_time = self.now
        if r in self.arrived:
            self.arrived.remove(r)  # the scheduler never saw it: nothing to tell
        else:
            self.finished.append(r)
        return r

    def step(self) -> None:
        """One scheduling call and what it decides. After it, `idle_until` is None if a
        step ran or memory was freed, else the time the scheduler asked to wait for
        (math.inf: until something arrives, also when there is no work)."""
        if not self.has_work:
            self.idle_until = math.inf
            return
        self.idle_until = None
        self._schedule_and_apply()

    def pop_steps(self) -> dict[str, list]:
        """The step rows recorded since the last call (STEP_COLUMNS)."""
        rows, self.steps = self.steps, StepTable()
        return {c: rows[c] for c in STEP_COLUMNS}

    def _idle(self, decision: Decision) -> None:
        if decision.preempt or decision.restart:
            return
        until = decision.idle_until
        self.idle_until = until if until is not None and until > self.now else math.inf

    def _fast_forward_durations(self, decision, shape, min_slack, min_left):
        return None  # one step per call: requests come, go and stop between any two steps

    def _finish_step(self, batch, *args) -> None:
        stopped = getattr(self.backend, "stopped", None)
        if stopped:
            for r, _ in batch:
                if r.request_id in stopped:
                    r.output_len = r.num_output_tokens + 1  # this step's token is its last
            stopped.clear()
        super()._finish_step(batch, *args)
