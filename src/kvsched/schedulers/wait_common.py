"""Pieces shared by the WAIT family (`wait`, `nested-wait`, `wait-cp`; WAIT paper §4-§5; docs/wait.md).

- `parse_types`: the workload description "PROMPTxOUTPUT:RATE|..." (output in tokens, the
  engine convention: the prefill emits the first token, so a type with output o makes o
  steps, stages 0..o-1; docs/conventions.md#wait-steps).
- `stage_of`: a request's stage = steps completed = output tokens emitted (0 while waiting
  or mid-prefill). Its KV after being served at stage s is prompt + s, the paper's charge.
- `fifo_key` / `lifo_repair`: FIFO selection inside a group, LIFO-by-admission eviction
  (docs/conventions.md#wait-order, docs/conventions.md#wait-memory) that restarts victims (KV and generated tokens dropped, WAIT paper §2).
- `RateEstimator` and `WaitFamily`: where the arrival rates come from. Either the rates of
  the workload description (`rates="given"`), or an online estimate over a sliding window
  (`rates="online"`) that re-designs the thresholds when it drifts (docs/wait.md states
  the rule): every `check_every_s`, once the window holds `min_samples` labelled requests,
  the thresholds are re-designed if some type's estimated rate differs from the rate in
  use by more than `drift_tolerance` (relative, on the larger of the two rates).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

from kvsched.bounds.fluid import RequestType
from kvsched.decision import Scheduler, View
from kvsched.request import Request, RequestStatus


def parse_types(spec: str | Sequence) -> tuple[RequestType, ...]:
    """`"512x20:15.4|512x50:6.6"` (or a sequence of RequestType / (prompt, output, rate))
    -> RequestTypes sorted by output length. Errors name the offending item."""
    if isinstance(spec, str):
        items = []
        for part in spec.split("|"):
            part = part.strip()
            shape, colon, rate = part.partition(":")
            prompt, x, output = shape.partition("x")
            try:
                if not (colon and x):
                    raise ValueError
                items.append(RequestType(int(prompt), int(output), float(rate)))
            except ValueError as exc:
                detail = f": {exc}" if str(exc) else ""
                raise ValueError(f"request type {part!r} must look like PROMPTxOUTPUT:RATE, e.g. 512x20:15.4"
                                 f"{detail}") from None
    else:
        items = [t if isinstance(t, RequestType) else RequestType(*t) for t in spec]
    if not items:
        raise ValueError("the workload needs at least one request type")
    outputs = [t.output_len for t in items]
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"request types must have distinct output lengths, got {sorted(outputs)}")
    return tuple(sorted(items, key=lambda t: t.output_len))


def format_types(types: Iterable[RequestType]) -> str:
    return "|".join(f"{t.prompt_len}x{t.output_len}:{t.rate:.6g}" for t in types)


def parse_thresholds(text: str | None, count: int, what: str = "type") -> tuple[int, ...] | None:
    """"3,1" -> (3, 1): one integer >= 1 per `what` (type or segment), by increasing output
    length; None stays None (the scheduler designs its own)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"thresholds must be comma-separated integers, got {text!r}") from None
    if len(values) != count or min(values) < 1:
        raise ValueError(f"thresholds {text!r}: need {count} integers >= 1 (one per {what}, by output length)")
    return values


def stage_of(r: Request) -> int:
    """Steps completed: 0 until the prefill emits the first token, then output tokens so far."""
    return r.num_output_tokens


def fifo_key(r: Request) -> tuple[float, int]:
    """Selection order inside a group: original arrival time, then id (docs/conventions.md#wait-order)."""
    return (r.arrival_time, r.request_id)


def type_index(output_lens: Sequence[int], output_len: int) -> int:
    """The type of a request: the first type whose output length is >= the request's
    (binned types: each type is the upper edge of its bin). Longer than every type: the last."""
    return min(bisect.bisect_left(output_lens, output_len), len(output_lens) - 1)


def blocks_needed(view: View, run: dict[int, int]) -> int:
    reqs = view.resident
    waiting = view.waiting
    return sum(view.blocks_needed(reqs.get(rid) or waiting[rid], n) for rid, n in run.items())


def lifo_repair(view: View, run: dict[int, int], tiers: Sequence[Iterable[Request]]) -> list[int]:
    """Make `run` fit the free KV blocks, giving up as little progress as possible:
    1. restart residents that are not in `run` (paused), tier by tier (e.g. Nested WAIT's
       boundary requests first), the latest admitted first;
    2. drop new prefills from `run` (they hold nothing), the latest arrival first;
    3. restart residents in `run`, tier by tier, the latest admitted first.
    Restarting running requests to make room for new ones is what makes FCFS thrash, so it
    comes last. Mutates `run`; returns the restarted ids (empty whenever the run fits)."""
    need = blocks_needed(view, run)
    free = view.num_free_blocks
    if need <= free:
        return []
    evicted: list[int] = []
    seen: set[int] = set()
    tiers = [list(t) for t in tiers]

    def evict(selected: bool) -> bool:
        nonlocal need, free
        for tier in tiers:
            for r in sorted(tier, key=lambda r: (r.admit_time or 0.0, r.request_id), reverse=True):
                rid = r.request_id
                if rid in seen or rid not in view.resident or (rid in run) != selected:
                    continue
                seen.add(rid)
                evicted.append(rid)
                free += view.block_counts.get(rid, 0)
                if selected:
                    need -= view.blocks_needed(r, run.pop(rid))
                if need <= free:
                    return True
        return False

    if evict(selected=False):
        return evicted
    for rid in sorted((rid for rid in run if rid in view.waiting),
                      key=lambda rid: fifo_key(view.waiting[rid]), reverse=True):
        need -= view.blocks_needed(view.waiting[rid], run.pop(rid))
        if need <= free:
            return evicted
    evict(selected=True)
    return evicted


@dataclass
class RateEstimator:
    """Arrival rates per type over a sliding window of `window_s` seconds.

    The total rate counts arrivals; the split between types comes from labelled requests
    (labelled on arrival when lengths are known, on completion when they are not)."""

    num_types: int
    window_s: float = 60.0
    _arrivals: deque = field(default_factory=deque, repr=False)
    _labels: deque = field(default_factory=deque, repr=False)
    _first_time: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")

    def arrived(self, time_s: float) -> None:
        if self._first_time is None:
            self._first_time = time_s
        self._arrivals.append(time_s)

    def labelled(self, time_s: float, type_index: int) -> None:
        self._labels.append((time_s, type_index))

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        while self._arrivals and self._arrivals[0] < start:
            self._arrivals.popleft()
        while self._labels and self._labels[0][0] < start:
            self._labels.popleft()

    def num_labelled(self, now: float) -> int:
        self._trim(now)
        return len(self._labels)

    def rates(self, now: float) -> list[float]:
        """Per-type rates (requests/s): total window rate times each type's label share."""
        self._trim(now)
        if self._first_time is None or not self._labels:
            return [0.0] * self.num_types
        span = min(self.window_s, max(now - self._first_time, 1e-9))
        total = len(self._arrivals) / span
        counts = [0] * self.num_types
        for _, j in self._labels:
            counts[j] += 1
        return [total * c / len(self._labels) for c in counts]


def drifted(in_use: Sequence[float], estimate: Sequence[float], tolerance: float) -> bool:
    """True when some rate moved by more than `tolerance` relative to the larger of the two."""
    return any(abs(a - b) > tolerance * max(a, b) for a, b in zip(in_use, estimate) if max(a, b) > 0)


@dataclass(eq=False)
class WaitFamily(Scheduler):
    """Base of the WAIT schedulers: the workload (types and rates) and its updates.

    Subclasses define `_design(types, capacity_tokens)` (thresholds from a workload),
    `_label_on_arrival` (True when they know lengths) and `schedule`. They call
    `_observe(view)` first thing in `schedule`: the first call designs the thresholds
    (the capacity is known from then on); later calls feed the estimator and re-design
    on drift."""

    types: str | None = None  # "PROMPTxOUTPUT:RATE|...": the workload description
    rates: str = "given"  # "given": the rates in `types`; "online": sliding-window estimate
    window_s: float = 60.0
    check_every_s: float = 5.0
    drift_tolerance: float = 0.25
    min_samples: int = 64

    _label_on_arrival = True

    def config(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init and not f.name.startswith("_")}

    def _init_workload(self) -> None:
        if self.rates not in ("given", "online"):
            raise ValueError(f"rates must be 'given' or 'online', got {self.rates!r}")
        if self.types is None:
            raise ValueError("the WAIT family needs the workload: types='PROMPTxOUTPUT:RATE|...' (kvsched simulate "
                             "fills it in from the trace); with rates='online' the rates in it are only the start")
        self._types = parse_types(self.types)
        self._outputs = [t.output_len for t in self._types]
        self._estimator = RateEstimator(len(self._types), self.window_s)
        self._next_check = self.check_every_s
        self.redesigns: list[tuple[float, tuple[float, ...]]] = []  # (time, rates) of each re-design
        for name in ("check_every_s", "window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.drift_tolerance >= 0:
            raise ValueError(f"drift_tolerance must be >= 0, got {self.drift_tolerance}")
        self._capacity_tokens: int | None = None
        self._block_size = 1

    def _design(self, types: tuple[RequestType, ...], capacity_tokens: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def _type_of(self, output_len: int) -> int:
        return type_index(self._outputs, output_len)

    def _observe(self, view: View) -> None:
        if self._capacity_tokens is None:
            self._capacity_tokens = view.capacity_tokens
            self._block_size = view.block_size  # designs count memory in whole blocks
            self._design(self._types, view.capacity_tokens)
        if self.rates != "online":
            return
        est = self._estimator
        for r in view.arrived:
            est.arrived(r.arrival_time)
            if self._label_on_arrival:
                est.labelled(r.arrival_time, self._label(r))
        if not self._label_on_arrival:
            for r in view.finished:
                if r.status is RequestStatus.ABORTED:
                    continue  # withdrawn by its client (online loop): its length is unknown
                est.labelled(r.finish_time if r.finish_time is not None else view.now, self._type_of(r.output_len))
        if view.now < self._next_check:
            return
        self._next_check = view.now + self.check_every_s
        if est.num_labelled(view.now) < self.min_samples:
            return
        estimate = est.rates(view.now)
        if not max(estimate) > 0:
            return  # no arrival in the window (labels of late finishes only): nothing to estimate
        in_use = [t.rate for t in self._types]
        if drifted(in_use, estimate, self.drift_tolerance):
            floor = 1e-3 * max(estimate)  # a type unseen in the window keeps a tiny rate
            types = tuple(RequestType(t.prompt_len, t.output_len, max(rate, floor))
                          for t, rate in zip(self._types, estimate))
            self._design(types, view.capacity_tokens)
            self._types = types
            self.redesigns.append((view.now, tuple(t.rate for t in types)))

    def _label(self, r: Request) -> int:
        """The type of a request whose length the scheduler may know (WAIT's oracle label)."""
        return self._type_of(r.output_len)


def group_types(types: Sequence[RequestType], num_segments: int) -> tuple[RequestType, ...]:
    """L equal-width segments over a fine type grid (WAIT paper §6, [code]): boundaries at
    multiples of floor(max_output / L), the last at max_output; each group's output is its
    upper edge, its rate the sum of its types' rates and its prompt the rate-weighted mean
    prompt (rounded). Empty groups are dropped."""
    kinds = parse_types(types)
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    top = kinds[-1].output_len
    width = max(1, top // num_segments)
    edges = [width * (k + 1) for k in range(num_segments - 1)] + [top]
    out = []
    lo = 0
    for edge in edges:
        members = [t for t in kinds if lo < t.output_len <= edge]
        lo = edge
        if not members:
            continue
        rate = sum(t.rate for t in members)
        prompt = max(1, round(sum(t.prompt_len * t.rate for t in members) / rate))
        out.append(RequestType(prompt, edge, rate))
    return tuple(out)


def fill_design_options(factory, options: dict, requests: Sequence[Request], cost_model) -> dict:
    """The options a WAIT-family scheduler needs but the user left out, from the workload
    being run: `types` from the trace (length binning, empirical rate:
    `types_from_requests`) and the design time model (d0, d1, d2) fitted to the cost
    model the run uses (`design_coefficients`). Other schedulers get `options` unchanged.
    The filled values land in the run's config, so the run can be repeated exactly."""
    from dataclasses import fields as dc_fields

    from kvsched.bounds.fluid import types_from_requests
    from kvsched.sim.cost import design_coefficients

    if not (isinstance(factory, type) and issubclass(factory, WaitFamily)):
        return options
    names = {f.name for f in dc_fields(factory) if f.init}
    out = dict(options)
    if "types" not in out:
        out["types"] = format_types(types_from_requests(requests))
    kinds = parse_types(out["types"])
    coef_names = [n for n in ("d0_s", "d1_s_per_token", "d2_s_per_prefill_token") if n in names and n not in out]
    if coef_names and hasattr(cost_model, "step_time"):
        fit = design_coefficients(cost_model, [t.prompt_len for t in kinds], [t.output_len for t in kinds]).model
        for n in coef_names:
            out[n] = float(getattr(fit, n))
    if "horizon_s" in names and "horizon_s" not in out and requests:
        out["horizon_s"] = float(max(r.arrival_time for r in requests)) or out.get("horizon_s", 3600.0)
    return out
