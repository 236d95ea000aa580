"""The requests of a finished run, packed: a few typed arrays instead of a million objects.

A simulated request that finishes (or is rejected) leaves the loop for good: its progress
counters, timestamps and attempt log are copied into struct-of-arrays columns (about 160
bytes a request instead of about 700 for a live `Request` and its attempt list) and the
loop drops the object. `Run.requests` is this table: a sequence that rebuilds an equal
`Request` on every access (a new object each time), from the input request it was copied
from (identity, lengths, predictions, prefix ids: the loop never mutates inputs) and the
packed progress. `columns()` gives the per-request metrics as numpy arrays without
building objects.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence
from operator import attrgetter

import numpy as np

from kvsched.request import Request, RequestStatus

_STATUSES = tuple(RequestStatus)
_STATUS_CODE = {s: i for i, s in enumerate(_STATUSES)}
_KINDS = ("finish", "preempt", "restart", "abort")
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}
# Packed integer fields (None is stored as -1 where a field may be None).
_INT_FIELDS = ("num_computed_tokens", "num_output_tokens", "num_preemptions", "num_restarts", "num_wasted_tokens",
               "num_discarded_tokens", "wasted_kv_area", "attempt_start_step", "attempt_start_output",
               "attempt_kv_area", "num_cached_tokens", "num_reused_tokens")
# Packed timestamps (None is stored as NaN).
_TIME_FIELDS = ("admit_time", "first_scheduled_time", "first_token_time", "finish_time")


class RequestTable(Sequence):
    """Requests in the loop's order (arrival, id), packed as they leave (see module docstring)."""

    def __init__(self, inputs: list[Request]) -> None:
        n = len(inputs)
        self._inputs = inputs
        self._ints = {f: array("q", [0]) * n for f in _INT_FIELDS}
        self._times = {f: array("d", [math.nan]) * n for f in _TIME_FIELDS}
        self._int_cols = tuple(self._ints.values())  # in _INT_FIELDS order, for pack
        self._time_cols = tuple(self._times.values())
        self._status = array("b", [0]) * n
        self._packed = array("b", [0]) * n
        self._att_first = array("q", [0]) * n  # index of the request's first attempt in the flat log
        self._att_count = array("q", [0]) * n
        self._att_start = array("q")
        self._att_tokens = array("q")
        self._att_kind = array("b")
        self._reasons: dict[int, str] = {}

    def pack(self, i: int, r: Request) -> None:
        """Store request `r` (the loop's copy of input `i`) for good."""
        if i >= len(self._status):
            self._grow()
        _pack(self, i, r)

    def _grow(self) -> None:
        """The input list grew (appended to while the loop ran): room for the new entries."""
        more = len(self._inputs) - len(self._status)
        for col in self._ints.values():
            col.extend(array("q", [0]) * more)
        for col in self._times.values():
            col.extend(array("d", [math.nan]) * more)
        for col in (self._status, self._packed):
            col.extend(array("b", [0]) * more)
        for col in (self._att_first, self._att_count):
            col.extend(array("q", [0]) * more)

    def _build(self, i: int) -> Request:
        if i >= len(self._packed) or not self._packed[i]:
            raise RuntimeError(f"request {self._inputs[i].request_id} has not left the run")
        src, ints, times = self._inputs[i], self._ints, self._times
        first = self._att_first[i]
        start, tokens, kind = self._att_start, self._att_tokens, self._att_kind
        attempts = [(start[j], tokens[j], _KINDS[kind[j]]) for j in range(first, first + self._att_count[i])]
        step = ints["attempt_start_step"][i]
        t = [times[f][i] for f in _TIME_FIELDS]
        # Positional, in Request's field order: one constructor call per rebuilt request.
        return Request(
            src.request_id, src.arrival_time, src.prompt_len, src.output_len, src.predicted_output_len,
            src.predicted_output_interval, src.prefix_block_ids, src.prefix_block_size,
            ints["num_computed_tokens"][i], ints["num_output_tokens"][i], _STATUSES[self._status[i]],
            *(None if math.isnan(v) else v for v in t),
            ints["num_preemptions"][i], ints["num_restarts"][i], ints["num_wasted_tokens"][i],
            ints["num_discarded_tokens"][i], ints["wasted_kv_area"][i], None if step == -1 else step,
            ints["attempt_start_output"][i], ints["attempt_kv_area"][i], attempts, self._reasons.get(i),
            ints["num_cached_tokens"][i], ints["num_reused_tokens"][i],
        )

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._build(j) for j in range(*i.indices(len(self)))]
        n = len(self._inputs)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("request table index out of range")
        return self._build(i)

    def __iter__(self) -> Iterator[Request]:
        for i in range(len(self._inputs)):
            yield self._build(i)

    def __len__(self) -> int:
        return len(self._inputs)

    def indices(self, status: RequestStatus) -> list[int]:
        """Table positions of the requests that left with `status`, without building the
        others (an unpacked position is included, so building it raises as iteration would)."""
        code, packed = _STATUS_CODE[status], self._packed
        return [i for i, s in zip(range(len(self)), self._status) if s == code or not packed[i]]

    def input(self, i: int) -> Request:
        """The input request at position `i` (its identity and length fields; no progress)."""
        return self._inputs[i]

    def column(self, name: str) -> np.ndarray:
        """One field of every request, in table order, without building requests (times
        NaN where None; `status` as the status values; `reject_reason` with "" for None).

        The arrays may be longer than the table: they grow with the input list, which a
        caller may shorten again (the cluster's placeholder for the next arrival)."""
        n = len(self)
        if name in self._ints:
            return np.frombuffer(self._ints[name], dtype=np.int64)[:n].copy()
        if name in self._times:
            return np.frombuffer(self._times[name], dtype=np.float64)[:n].copy()
        if name == "status":
            codes = np.frombuffer(self._status, dtype=np.int8)[:n]
            return np.array([s.value for s in _STATUSES], dtype=object)[codes]
        if name == "reject_reason":
            out = np.full(len(self), "", dtype=object)
            for i, reason in self._reasons.items():
                out[i] = reason
            return out
        if name in ("request_id", "prompt_len", "output_len", "arrival_time"):
            # map(attrgetter) reads the inputs about twice as fast as a generator of getattr calls.
            dtype = np.float64 if name == "arrival_time" else np.int64
            return np.fromiter(map(attrgetter(name), self._inputs), dtype=dtype, count=n)
        raise KeyError(name)

    @property
    def complete(self) -> bool:
        """Every request has left (the loop returned this table in a Run)."""
        return all(self._packed[:len(self)])


def _pack(table: RequestTable, i: int, r: Request) -> None:
    """RequestTable.pack's body, a function so that the compiled core can type `r`
    (request_table.pxd): its fields are then read as C values, not attributes."""
    # Field by field from columns bound once (extended in place by _grow), not a loop over
    # names or dict lookups: this runs once per request of the run.
    (computed, output, preemptions, restarts, wasted, discarded, wasted_area, start_step, start_output,
     kv_area, cached, reused) = table._int_cols
    computed[i] = r.num_computed_tokens
    output[i] = r.num_output_tokens
    preemptions[i] = r.num_preemptions
    restarts[i] = r.num_restarts
    wasted[i] = r.num_wasted_tokens
    discarded[i] = r.num_discarded_tokens
    wasted_area[i] = r.wasted_kv_area
    step = r.attempt_start_step
    start_step[i] = -1 if step is None else step
    start_output[i] = r.attempt_start_output
    kv_area[i] = r.attempt_kv_area
    cached[i] = r.num_cached_tokens
    reused[i] = r.num_reused_tokens
    admit, scheduled, first_token, finish = table._time_cols
    nan = math.nan
    v = r.admit_time
    admit[i] = nan if v is None else v
    v = r.first_scheduled_time
    scheduled[i] = nan if v is None else v
    v = r.first_token_time
    first_token[i] = nan if v is None else v
    v = r.finish_time
    finish[i] = nan if v is None else v
    table._status[i] = _STATUS_CODE[r.status]
    table._packed[i] = 1
    att_start = table._att_start
    table._att_first[i] = len(att_start)
    attempts = r.attempts
    table._att_count[i] = len(attempts)
    for start, tokens, kind in attempts:
        att_start.append(start)
        table._att_tokens.append(tokens)
        table._att_kind.append(_KIND_CODE[kind])
    if r.reject_reason is not None:
        table._reasons[i] = r.reject_reason
