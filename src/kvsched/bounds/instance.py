"""Theory-mode problem instances for the bounds: the data of the MC-SF paper's model, nothing else.

An `Instance` is what the hindsight IP and the volume bounds need: integer arrival
epochs, prompt lengths `s_i >= 0` (0 is the batch theory model of docs/mcsf.md),
output lengths `o_i >= 1`, and the KV capacity `M`. It also carries the
request ids so that per-request results (IP starts) can be mapped back to
`kvsched.request.Request` objects.

The module also holds two small pure-Python helpers used everywhere in `bounds`:

* `evaluate_starts` replays a start vector with the MC-SF paper's model convention (a start at
  `p` holds `s + t - p` at epochs `p+1..p+o` and completes at `p+o`) and returns its
  TEL and memory profile, raising if the schedule breaks a rule;
* `greedy_starts` builds a feasible schedule by list scheduling, used as a fallback
  warm start and as the upper bound in property tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from kvsched.request import Request


class InfeasibleSchedule(ValueError):
    """A start vector that breaks a rule of the model (arrival, length or memory)."""


def _as_int_tuple(values: Iterable[object], name: str) -> tuple[int, ...]:
    out: list[int] = []
    for i, v in enumerate(values):
        # bool is an int subclass but almost certainly a bug here.
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise TypeError(f"request index {i}: {name} must be an int, got {v!r} ({type(v).__name__})")
        out.append(int(v))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Instance:
    """A theory-mode instance: unit rounds, integer epochs (the MC-SF paper's model).

    `request_ids[i]` names request `i` (defaults to `0..n-1`); every per-request
    tuple in results is indexed like `arrival`.
    """

    arrival: tuple[int, ...]
    prompt_len: tuple[int, ...]
    output_len: tuple[int, ...]
    capacity: int
    request_ids: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        arrival = _as_int_tuple(self.arrival, "arrival")
        prompt = _as_int_tuple(self.prompt_len, "prompt_len")
        output = _as_int_tuple(self.output_len, "output_len")
        n = len(arrival)
        if len(prompt) != n or len(output) != n:
            raise ValueError(
                f"arrival, prompt_len and output_len must have equal lengths, got {n}, {len(prompt)}, {len(output)}"
            )
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int | np.integer):
            raise TypeError(f"capacity must be an int, got {self.capacity!r}")
        capacity = int(self.capacity)
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 (one prompt token plus one output token), got {capacity}")
        ids = tuple(range(n)) if not self.request_ids else _as_int_tuple(self.request_ids, "request_ids")
        if len(ids) != n:
            raise ValueError(f"request_ids has {len(ids)} entries for {n} requests")
        if len(set(ids)) != n:
            raise ValueError("request_ids must be unique")
        for i in range(n):
            if arrival[i] < 0:
                raise ValueError(f"request index {i} (id {ids[i]}): arrival must be >= 0, got {arrival[i]}")
            if prompt[i] < 0:  # s_i = 0 is allowed: the batch theory model (docs/mcsf.md, docs/conventions.md)
                raise ValueError(f"request index {i} (id {ids[i]}): prompt_len must be >= 0, got {prompt[i]}")
            if output[i] < 1:
                raise ValueError(f"request index {i} (id {ids[i]}): output_len must be >= 1, got {output[i]}")
            if prompt[i] + output[i] > capacity:
                raise ValueError(
                    f"request index {i} (id {ids[i]}): prompt_len + output_len = {prompt[i] + output[i]} "
                    f"exceeds capacity {capacity}, so it can never complete"
                )
        # Frozen dataclass: normalise through object.__setattr__ (lists -> tuples of int).
        object.__setattr__(self, "arrival", arrival)
        object.__setattr__(self, "prompt_len", prompt)
        object.__setattr__(self, "output_len", output)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "request_ids", ids)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_triples(cls, triples: Iterable[tuple[int, int, int]], capacity: int) -> Instance:
        """From `(a, s, o)` triples, the notation of the hand-computed test vectors."""
        rows = list(triples)
        return cls(
            tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows), capacity
        )

    @classmethod
    def from_requests(cls, requests: Iterable[Request], capacity: int) -> Instance:
        """From `Request` objects; arrival times must be whole epochs (theory mode)."""
        arrival: list[int] = []
        prompt: list[int] = []
        output: list[int] = []
        ids: list[int] = []
        for i, r in enumerate(requests):
            t = float(r.arrival_time)
            if not t.is_integer():
                raise ValueError(
                    f"request index {i} (id {r.request_id}): arrival_time {r.arrival_time} is not an integer epoch; "
                    "the IP and theory-mode bounds need integral arrivals; for real-valued times use the volume bound "
                    "(`kvsched bound` without --theory, or `--bound volume`)"
                )
            arrival.append(int(t))
            prompt.append(int(r.prompt_len))
            output.append(int(r.output_len))
            ids.append(int(r.request_id))
        return cls(tuple(arrival), tuple(prompt), tuple(output), int(capacity), tuple(ids))

    # ------------------------------------------------------------------ views
    @property
    def n(self) -> int:
        return len(self.arrival)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(a, s, o)` as int64 numpy arrays."""
        return (
            np.asarray(self.arrival, dtype=np.int64),
            np.asarray(self.prompt_len, dtype=np.int64),
            np.asarray(self.output_len, dtype=np.int64),
        )

    def safe_horizon(self) -> int:
        """the MC-SF paper's hindsight IP: some optimal schedule starts every request at or before `max a + sum o`."""
        if self.n == 0:
            return 0
        return max(self.arrival) + sum(self.output_len)

    def subset(self, keep: Sequence[int]) -> Instance:
        """The instance restricted to the given request indices (ids kept)."""
        return Instance(
            tuple(self.arrival[i] for i in keep),
            tuple(self.prompt_len[i] for i in keep),
            tuple(self.output_len[i] for i in keep),
            self.capacity,
            tuple(self.request_ids[i] for i in keep),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "capacity": self.capacity,
            "arrival": list(self.arrival),
            "prompt_len": list(self.prompt_len),
            "output_len": list(self.output_len),
            "request_ids": list(self.request_ids),
        }


# ---------------------------------------------------------------------- replay
def evaluate_starts(inst: Instance, starts: Sequence[int]) -> tuple[int, list[int]]:
    """Replay start epochs; return `(TEL, memory profile at epochs 1..max completion)`.

    Raises `InfeasibleSchedule` naming the request or epoch when a start precedes its
    arrival or the memory exceeds `M` at some epoch. Pure Python on purpose: it is the
    independent check of every solver answer.
    """
    if len(starts) != inst.n:
        raise InfeasibleSchedule(f"expected {inst.n} start epochs, got {len(starts)}")
    p: list[int] = []
    for i, raw in enumerate(starts):
        if isinstance(raw, bool) or not isinstance(raw, int | np.integer):
            raise InfeasibleSchedule(f"request index {i}: start must be an int epoch, got {raw!r}")
        v = int(raw)
        if v < inst.arrival[i]:
            raise InfeasibleSchedule(
                f"request index {i} (id {inst.request_ids[i]}): start {v} precedes its arrival {inst.arrival[i]}"
            )
        p.append(v)
    if inst.n == 0:
        return 0, []
    end = max(pi + oi for pi, oi in zip(p, inst.output_len, strict=True))
    profile = [0] * (end + 1)  # index t = epoch t; epoch 0 never holds memory
    for pi, si, oi in zip(p, inst.prompt_len, inst.output_len, strict=True):
        for t in range(pi + 1, pi + oi + 1):
            profile[t] += si + t - pi
    for t in range(1, end + 1):
        if profile[t] > inst.capacity:
            holders = [
                inst.request_ids[i] for i in range(inst.n) if p[i] < t <= p[i] + inst.output_len[i]
            ]
            raise InfeasibleSchedule(
                f"memory {profile[t]} exceeds capacity {inst.capacity} at epoch {t} (running request ids {holders})"
            )
    tel = sum(pi + oi - ai for pi, oi, ai in zip(p, inst.output_len, inst.arrival, strict=True))
    return tel, profile[1:]


def makespan(inst: Instance, starts: Sequence[int]) -> int:
    """Last completion epoch of a start vector (0 for an empty instance)."""
    return max((int(p) + o for p, o in zip(starts, inst.output_len, strict=True)), default=0)


# ---------------------------------------------------------------------- greedy
GreedyOrder = Literal["arrival", "shortest"]


def greedy_starts(inst: Instance, order: GreedyOrder = "arrival") -> tuple[int, ...]:
    """A feasible schedule by list scheduling with whole-life reservations.

    Requests are taken one at a time (by `(a, id)` for "arrival", `(o, a, s, id)` for
    "shortest"); each is started at the earliest epoch `>= a_i` at which its whole
    memory triangle fits on top of the requests placed before it. Placing a request
    never changes earlier ones, so the result is feasible by construction, and a slot
    always exists because `s_i + o_i <= M` and memory is free after the last completion.
    """
    n = inst.n
    if n == 0:
        return ()
    a, s, o = inst.arrays()
    if order == "arrival":
        seq = sorted(range(n), key=lambda i: (a[i], i))
    elif order == "shortest":
        seq = sorted(range(n), key=lambda i: (o[i], a[i], s[i], i))
    else:
        raise ValueError(f"unknown greedy order {order!r}")
    length = int(a.max() + o.sum() + o.max() + 2)
    profile = np.zeros(length, dtype=np.int64)  # index t = epoch t
    starts = [0] * n
    cap = inst.capacity
    for i in seq:
        ai, si, oi = int(a[i]), int(s[i]), int(o[i])
        tri = si + np.arange(1, oi + 1, dtype=np.int64)
        # windows[k] = profile[k+1 .. k+oi]; request started at k fits iff all <= cap.
        windows = np.lib.stride_tricks.sliding_window_view(profile[1:], oi)
        ok = np.all(windows[ai:] + tri <= cap, axis=1)
        k = ai + int(np.argmax(ok))
        if not ok.any():  # cannot happen given the array length; keep the invariant loud
            raise AssertionError("greedy_starts: no slot found")
        profile[k + 1 : k + oi + 1] += tri
        starts[i] = k
    return tuple(starts)


def best_greedy_starts(inst: Instance) -> tuple[int, ...]:
    """The better (lower TEL) of the two greedy orders; ties go to "shortest"."""
    best: tuple[int, ...] = ()
    best_tel: int | None = None
    for order in ("shortest", "arrival"):
        st = greedy_starts(inst, order)  # type: ignore[arg-type]
        tel, _ = evaluate_starts(inst, st)
        if best_tel is None or tel < best_tel:
            best, best_tel = st, tel
    return best
