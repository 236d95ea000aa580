"""Memory-only FCFS baselines of the MC-SF trace study: α-protection greedy and
α-protection β-clearing (the MC-SF paper's α-protection benchmarks, docs/conventions.md).

Both admit in arrival order looking only at *current* memory and keep a fraction α of
the capacity M for the growth of the running requests. Neither looks ahead, so neither
has a guarantee: an overflow either ends the run (greedy) or clears running requests
(β-clearing), which restart from scratch.

Mapping onto kvsched (docs/mcsf.md), one call per round boundary:
1. sync: arrivals join the FCFS heap, finished requests leave the running set;
2. overflow: if the next round of the running set needs more KV blocks than the cache
   has, apply the clearing rule (`kvsched.schedulers.clearing`); victims are freed
   before the round (`Decision.restart`, or `Decision.preempt` under
   `preemption="recompute"`) and rejoin the heap at their original FCFS position;
3. admission: while usage + s_i + 1 <= floor((1-α) M), admit the head, usage =
   Σ_running (s_j + g_j) plus (s_i + 1) for each request admitted earlier this step;
   stop at the first misfit (head of line);
4. batch: every running request gets 1 token, every admitted one its whole prompt.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from kvsched.decision import Decision, Scheduler, View
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.clearing import (
    CLEARING_RULES,
    check_clearing,
    clear,
    next_round_blocks,
)
from kvsched.schedulers.vllm import STEADY

PREEMPTION_MODES = ("restart", "recompute")


def _floor_fraction(fraction: float, capacity: int) -> int:
    """floor(fraction * capacity), robust to float noise such as 0.7 * 10 = 7.000000000000001."""
    return math.floor(round(fraction * capacity, 9))


@SCHEDULERS.register("alpha-protection", "α-protection greedy: FCFS admission under (1-α)M, overflow is infeasible")
@dataclass(eq=False)
class AlphaProtectionScheduler(Scheduler):
    """α-protection greedy (the MC-SF paper's α-protection benchmarks): FCFS admission while usage + s_i + 1 <= floor((1-α) M).

    Rule: requests are admitted in arrival order (cleared ones keep their original
    position) while the current usage Σ_running (s_j + g_j), plus s_i + 1 for each
    request admitted earlier this step, plus the candidate's s_i + 1, stays at or below
    floor((1-α) M), M = `view.capacity_tokens`; the first misfit stops admission (head
    of line). Every running request is in every batch; an admitted request prefills
    its whole prompt in one chunk. A newcomer is also admitted only if the round fits
    the real KV blocks (never binding in theory mode unless α M is smaller than the
    number of running requests); a misfit there also stops admission.

    Overflow (the next round of the running set needs more blocks than the cache has):
    with `clearing="none"` (default) the run is declared infeasible by raising
    `InfeasibleSchedule` naming the step, the paper's "smallest feasible α" notion;
    `clearing` may be any of CLEARING_RULES (`all` is one of the rules in docs/conventions.md#mcsf-clearing).

    A memory-only baseline with no latency or feasibility guarantee.

    Deviation: if nothing is running and the head misses (1-α) M, it is admitted alone
    (it fits the capacity, or the loop would have rejected it); otherwise it would
    wait forever.

    `repeat=STEADY` when nothing was cleared or admitted (requests may still wait: with
    no arrival, finish or clearing, usage only grows, so the head keeps missing).

    Options: `alpha` (default 0.25, spec grid {0.3, 0.25}), `clearing`, `beta` (target
    (1-β) M of `lifo`, probability of `bernoulli`), `preemption` ("restart", the
    papers' semantics: generated tokens are lost; "recompute": vLLM's keep-generated),
    `seed` (bernoulli draws, `numpy.random.default_rng(seed)`).
    """

    name = "alpha-protection"
    may_declare_infeasible = True  # clearing="none": an overflow raises InfeasibleSchedule

    alpha: float = 0.25
    clearing: str = "none"
    beta: float = 0.0
    preemption: str = "restart"
    seed: int = 0
    _heap: list = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        check_clearing(self.clearing)
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(f"preemption must be one of {', '.join(PREEMPTION_MODES)}, got {self.preemption!r}")
        self._heap = []  # (arrival_time, request_id, request): FCFS, victims back at their position
        self._running: dict[int, Request] = {}  # by start order (dicts keep insertion order)
        self._rng = np.random.default_rng(self.seed)

    def config(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def schedule(self, view: View) -> Decision:
        heap, running = self._heap, self._running
        for r in view.arrived:
            heapq.heappush(heap, (r.arrival_time, r.request_id, r))
        if view.finished:
            aborted = set()
            for r in view.finished:
                running.pop(r.request_id, None)
                if r.status is RequestStatus.ABORTED:  # a client disconnect (online loop)
                    aborted.add(r.request_id)
            if aborted:  # it may have been waiting: drop it from the heap
                heap[:] = [e for e in heap if e[1] not in aborted]
                heapq.heapify(heap)

        # Overflow check and clearing of the running set, before anything is admitted.
        victims: list[Request] = []
        if running:
            capacity = view.capacity_tokens
            victims = clear(view, list(running.values()), self.clearing,
                            target_tokens=_floor_fraction(1.0 - self.beta, capacity),
                            beta=self.beta, rng=self._rng, who=self.name)
            for v in victims:
                del running[v.request_id]
                heapq.heappush(heap, (v.arrival_time, v.request_id, v))

        run: dict[int, int] = dict.fromkeys(running, 1)
        admitted = False
        if heap:
            admitted = self._admit(view, run)
        ids = tuple(v.request_id for v in victims)
        restart, preempt = (ids, ()) if self.preemption == "restart" else ((), ids)
        # With nothing cleared or admitted every entry is a decode, and without an
        # arrival or a finish the running set only grows: the overflow check passes while
        # memory suffices and the head of the queue keeps missing, so the decision repeats.
        repeat = STEADY if not victims and not admitted else 1
        return Decision(run, preempt, repeat, restart)

    def _admit(self, view: View, run: dict[int, int]) -> bool:
        """Admit heads of the FCFS heap into `run`; True if any was admitted."""
        heap, running = self._heap, self._running
        bs, la = view.block_size, view.lookahead_tokens
        limit = _floor_fraction(1.0 - self.alpha, view.capacity_tokens)
        usage = 0
        blocks = 0
        for r in running.values():
            usage += r.num_tokens  # s_j + g_j
            blocks += next_round_blocks(view, r)
        restart = self.preemption == "restart"
        admitted = False
        while heap:
            r = heap[0][2]
            # What r computes on admission. A victim cleared in this very call still shows
            # its old progress (the loop resets it after this decision): under restart it
            # starts over from its prompt, under recompute from prompt + kept output.
            n = r.prompt_len if restart else r.num_tokens
            need = -(-(n + la) // bs)
            if blocks + need > view.num_blocks:
                break
            # Deviation: when nothing runs, the head is admitted alone even over the
            # protected limit (usage is then s_i + 1 > limit, so nothing follows it).
            if usage + n + 1 > limit and running:
                break
            heapq.heappop(heap)
            running[r.request_id] = r
            run[r.request_id] = n
            usage += n + 1
            blocks += need
            admitted = True
        return admitted


@SCHEDULERS.register("beta-clearing", "α-protection β-clearing: FCFS under (1-α)M, LIFO clearing to (1-β)M")
@dataclass(eq=False)
class BetaClearingScheduler(AlphaProtectionScheduler):
    """α-protection β-clearing (the MC-SF paper's α-protection benchmarks): greedy's admission plus clearing on overflow.

    Rule: admission as in α-protection greedy (FCFS, usage + s_i + 1 <= floor((1-α) M),
    head of line). When the next round of the running set needs more KV blocks than the
    cache has, `clearing="lifo"` (default) evicts running requests latest-started first
    until the next round's usage is at most floor((1-β) M); the earliest-started request
    is kept (it fits alone; evicting it can livelock). `clearing="bernoulli"` clears each
    running request with probability β (seeded `numpy.random.default_rng(seed)`), then
    LIFO only as far as the capacity requires; `clearing="all"` clears everyone (it can
    livelock: the same requests may overflow again the same way). Victims lose their
    generated tokens and restart from their prompt (`Decision.restart`; the option
    `preemption="recompute"` keeps them, vLLM-style) and rejoin the FCFS queue at their
    original arrival position, so their latency counts the wasted work.

    A memory-only baseline with no latency guarantee.

    The six benchmark configurations (the MC-SF paper's α-protection benchmarks, docs/conventions.md):
        alpha-protection  alpha=0.3
        alpha-protection  alpha=0.25
        beta-clearing     alpha=0.2, beta=0.2
        beta-clearing     alpha=0.2, beta=0.1   (default here)
        beta-clearing     alpha=0.1, beta=0.2
        beta-clearing     alpha=0.1, beta=0.1
    """

    name = "beta-clearing"
    may_declare_infeasible = False

    alpha: float = 0.2
    clearing: str = "lifo"
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        # Only clearing="none" can declare a run infeasible.
        self.may_declare_infeasible = self.clearing == "none"


__all__ = ["CLEARING_RULES", "AlphaProtectionScheduler", "BetaClearingScheduler"]
