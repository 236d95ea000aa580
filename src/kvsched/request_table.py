"""The requests of a finished run, packed: one fixed-size record each instead of a million objects.

A simulated request that finishes (or is rejected) leaves the loop for good: its progress
counters, timestamps and attempt log are packed into a record of a flat buffer (about 150
bytes a request, plus 17 an attempt, instead of about 700 for a live `Request` and its attempt
list) and the loop drops the object. `Run.requests` is this table: a sequence that rebuilds an
equal `Request` on every access (a new object each time), from the input request it was copied
from (identity, lengths, predictions, prefix ids: the loop never mutates inputs) and the
packed progress. `column()` gives the per-request metrics as numpy arrays without building
objects: the buffer read as a numpy structured array.
"""

from __future__ import annotations

import math
import struct
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
# A request's record: the int fields, the times, where its attempts start in the attempt log
# and how many, its status code, and 1 once it has left. One struct.pack_into a request: the
# per-field array stores it replaces parsed every number on its own.
_RECORD = struct.Struct(f"={len(_INT_FIELDS)}q{len(_TIME_FIELDS)}dqqbb")
_RECORD_DTYPE = np.dtype([(f, "=i8") for f in _INT_FIELDS] + [(f, "=f8") for f in _TIME_FIELDS]
                         + [("att_first", "=i8"), ("att_count", "=i8"), ("status", "i1"), ("packed", "i1")])
assert _RECORD_DTYPE.itemsize == _RECORD.size
_BLANK = _RECORD.pack(*[0] * len(_INT_FIELDS), *[math.nan] * len(_TIME_FIELDS), 0, 0, 0, 0)
# One ended attempt: (start step, output tokens generated, kind code).
_ATTEMPT = struct.Struct("=qqb")
# For _pack, bound once (it runs once per request of a run).
_pack_record, _pack_attempt, _ATTEMPT_SIZE, _RECORD_SIZE, _NAN = (
    _RECORD.pack_into, _ATTEMPT.pack, _ATTEMPT.size, _RECORD.size, math.nan)


class RequestTable(Sequence):
    """Requests in the loop's order (arrival, id), packed as they leave (see module docstring)."""

    def __init__(self, inputs: list[Request]) -> None:
        self._inputs = inputs
        self._records = bytearray(_BLANK * len(inputs))
        self._attempts = bytearray()
        self._reasons: dict[int, str] = {}

    def pack(self, i: int, r: Request) -> None:
        """Store request `r` (the loop's copy of input `i`) for good."""
        if i >= len(self._records) // _RECORD_SIZE:  # _num_slots() inlined: once per request of a run
            self._grow()
        _pack(self, i, r)

    def _grow(self) -> None:
        """The input list grew (appended to while the loop ran): room for the new entries."""
        self._records.extend(_BLANK * (len(self._inputs) - self._num_slots()))

    def _num_slots(self) -> int:
        """Records the buffer holds room for (packed or not)."""
        return len(self._records) // _RECORD_SIZE

    def _view(self, n: int) -> np.ndarray:
        """The first `n` records as a structured array over the buffer (no copy: copy what
        outlives the call, or the buffer cannot grow)."""
        if n > self._num_slots():
            self._grow()  # inputs appended since the last pack: not left yet
        return np.frombuffer(self._records, dtype=_RECORD_DTYPE, count=n)

    def _build(self, i: int) -> Request:
        if i >= self._num_slots():
            raise RuntimeError(f"request {self._inputs[i].request_id} has not left the run")
        (computed, output, preemptions, restarts, wasted, discarded, wasted_area, step, start_output, kv_area,
         cached, reused, *times, first, count, status, packed) = _RECORD.unpack_from(self._records, i * _RECORD_SIZE)
        if not packed:
            raise RuntimeError(f"request {self._inputs[i].request_id} has not left the run")
        att = self._attempts
        attempts = [(start, tokens, _KINDS[kind]) for start, tokens, kind
                    in _ATTEMPT.iter_unpack(att[first * _ATTEMPT_SIZE:(first + count) * _ATTEMPT_SIZE])]
        src = self._inputs[i]
        # Positional, in Request's field order: one constructor call per rebuilt request.
        return Request(
            src.request_id, src.arrival_time, src.prompt_len, src.output_len, src.predicted_output_len,
            src.predicted_output_interval, src.prefix_block_ids, src.prefix_block_size,
            computed, output, _STATUSES[status], *(None if math.isnan(v) else v for v in times),
            preemptions, restarts, wasted, discarded, wasted_area, None if step == -1 else step,
            start_output, kv_area, attempts, self._reasons.get(i), cached, reused,
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
        rec = self._view(len(self))
        return np.flatnonzero((rec["status"] == _STATUS_CODE[status]) | (rec["packed"] == 0)).tolist()

    def input(self, i: int) -> Request:
        """The input request at position `i` (its identity and length fields; no progress)."""
        return self._inputs[i]

    def column(self, name: str) -> np.ndarray:
        """One field of every request, in table order, without building requests (times
        NaN where None; `status` as the status values; `reject_reason` with "" for None).

        The arrays may be longer than the table: they grow with the input list, which a
        caller may shorten again (the cluster's placeholder for the next arrival)."""
        n = len(self)
        if name in _INT_FIELDS or name in _TIME_FIELDS:
            return self._view(n)[name].copy()
        if name == "status":
            codes = self._view(n)["status"].copy()
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
        return bool(self._view(len(self))["packed"].all())


def _pack(table: RequestTable, i: int, r: Request) -> None:
    """RequestTable.pack's body, a function so that the compiled core can type `r`
    (request_table.pxd): its fields are then read as C values, not attributes."""
    att = table._attempts
    first = len(att) // _ATTEMPT_SIZE
    attempts = r.attempts
    for start, tokens, kind in attempts:
        att += _pack_attempt(start, tokens, _KIND_CODE[kind])
    step = r.attempt_start_step
    admit, scheduled, first_token, finish = r.admit_time, r.first_scheduled_time, r.first_token_time, r.finish_time
    _pack_record(
        table._records, i * _RECORD_SIZE,
        r.num_computed_tokens, r.num_output_tokens, r.num_preemptions, r.num_restarts, r.num_wasted_tokens,
        r.num_discarded_tokens, r.wasted_kv_area, -1 if step is None else step, r.attempt_start_output,
        r.attempt_kv_area, r.num_cached_tokens, r.num_reused_tokens,
        _NAN if admit is None else admit, _NAN if scheduled is None else scheduled,
        _NAN if first_token is None else first_token, _NAN if finish is None else finish,
        # tuple.index compares by identity first: cheaper than hashing an Enum (a Python-level __hash__)
        first, len(attempts), _STATUSES.index(r.status), 1)
    if r.reject_reason is not None:
        table._reasons[i] = r.reject_reason
