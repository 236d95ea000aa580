"""MC-SF and its family: shortest-first admission with a future-memory check.

Jaillet et al., arXiv 2502.07115; docs/mcsf.md.

Every step (a round boundary) the running requests all run (the plan is non-preemptive),
and waiting requests are taken in the order of a tie key. A candidate is admitted only if
the *planned* memory of the running requests plus the admitted ones plus the candidate
stays within the capacity at every future round, each request planned to run to its
predicted end (`FuturePlan`, O(log C) per test). The batch is the longest feasible prefix
of the order (the paper's rule); `skip_infeasible=True` keeps trying later candidates
instead (a deviation, off by default).

Memory is planned with the papers' ledger: a request holds prompt + j tokens after its
j-th output token, which bounds what the engine really holds (in theory mode, with one
lookahead slot, it is exact). With block_size > 1 each request is padded by the block
rounding it can cause, so a plan that fits in tokens also fits in blocks.

Predictions: the scheduler reads lengths only through its predictor. A planned length is
clipped to [1, M - s] (it must fit alone); a request that outlives its plan is re-planned
to g + 1 tokens (one more round). If memory still overflows (predictions too short), the
running set is cleared by `clearing` (LIFO down to (1 - reserve) M by default); cleared
requests restart from scratch (`preemption="restart"`, the papers' model) or keep their
tokens (`"recompute"`, vLLM's), and come back planned at least as long as they got.

Decode pool (`kvsched.pool`, docs/architecture.md "Performance"): every running request
runs every round, so all of them decode as a group and a step visits only admission
candidates and requests that outlive their plan. The plan is then kept in absolute rounds
(`AbsolutePlan`, round = `View.step`): a running request's entry (f - now, now + r) does
not change between events, so it is updated on admit, finish and re-plan only, and gives
the same `fits` answers as a `FuturePlan` built from every running request. A step on
which clearing could trigger (the pool's new blocks exceed the free ones), and every step
with prefix caching, flushes the pool and takes the per-request pass (`_schedule_each`,
also the `decode_pool=False` path), which rebuilds the absolute plan. `a-min` with
`refine="double"` does not opt in.

Registered variants (one class, different defaults):
- `mcsf`          order (length, arrival, prompt, id), point predictions.
- `mc-benchmark`  the same check in FCFS order (arrival, id): isolates shortest-first.
- `zhou-jiang`    Zhou & Jiang's Algorithm 1 = MC-SF with exact lengths, order
                  (length, prompt, arrival, id). A heuristic: NOT optimal (docs/mcsf.md).
- `svf`           smallest memory-time volume s·o + o(o+1)/2 first (arXiv 2606.22327).
- `a-max`         plans with the upper end u of interval predictions (never overflows).
- `a-min`         plans with the lower end l, raises bounds as requests outlive them and
                  on overflow evicts the smallest bound first (Chen, Ye, Zhou 2508.14544).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass

import numpy as np

from kvsched.decision import Decision, Scheduler, View
from kvsched.predictors import make_predictor
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.clearing import check_clearing, clear, next_round_blocks
from kvsched.schedulers.future_plan import AbsolutePlan, FuturePlan, ledger_pad

STEADY = 1 << 30
ORDER_FIELDS = ("length", "arrival", "prompt", "id", "volume")


@SCHEDULERS.register("mcsf", "MC-SF: shortest predicted output first, admitted only if planned future memory fits")
@dataclass(eq=False)
class MCSFScheduler(Scheduler):
    """Memory-Constrained Shortest-First (Jaillet et al., arXiv 2502.07115).

    Rule: at each round, admit waiting requests in increasing predicted output length
    (ties: arrival, prompt, id) as long as the planned memory of all running and admitted
    requests stays within M at every future planned completion; stop at the first that
    does not fit. Running requests are never paused.

    Guarantee (Theorem 4.3, v4/v5): O(1)-competitive for total latency when all requests
    arrive at time 0, prompts are equal, predictions over-estimate within a constant
    factor and M >= 2 max(s + o~). With over-estimates it never overflows. No constant
    ratio is possible for adversarial arrivals (Theorem 4.1), and with heterogeneous
    prompts shortest-first rules are Omega(sqrt M)-competitive (2508.06133).
    """

    predictor: str = "predicted"  # oracle | predicted | interval-high | interval-low
    order: str = "length,arrival,prompt,id"
    reserve: float = 0.0  # plan against (1 - reserve) M
    skip_infeasible: bool = False  # True: try later candidates after a misfit (not MC-SF)
    clearing: str = "lifo"  # on a real overflow: none | all | lifo | bernoulli
    clear_to: str = "reserve"  # lifo target: "reserve" = (1 - reserve) M, "capacity" = M
    beta: float = 0.0  # bernoulli clearing probability
    preemption: str = "restart"  # restart (papers) | recompute (vLLM keep-generated)
    aging: float = 0.0  # > 0: length key becomes o~ + aging * arrival (anti-starvation)
    max_num_seqs: int = 0  # 0 = no cap (the papers' model)
    max_num_batched_tokens: int = 0  # 0 = no token budget (the papers' model)
    seed: int = 0

    def __post_init__(self) -> None:
        self._predictor = make_predictor(self.predictor)
        self._order = tuple(p.strip() for p in self.order.split(",") if p.strip())
        bad = [p for p in self._order if p not in ORDER_FIELDS]
        if bad or not self._order:
            raise ValueError(f"order {self.order!r}: fields must be among {', '.join(ORDER_FIELDS)}")
        if not 0.0 <= self.reserve < 1.0:
            raise ValueError(f"reserve must be in [0, 1), got {self.reserve}")
        check_clearing(self.clearing)
        if self.clear_to not in ("reserve", "capacity"):
            raise ValueError(f"clear_to must be 'reserve' or 'capacity', got {self.clear_to!r}")
        if self.preemption not in ("restart", "recompute"):
            raise ValueError(f"preemption must be 'restart' or 'recompute', got {self.preemption!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.aging < 0 or self.max_num_seqs < 0 or self.max_num_batched_tokens < 0:
            raise ValueError("aging, max_num_seqs and max_num_batched_tokens must be >= 0")
        self._rng = np.random.default_rng(self.seed)
        self._heap: list[tuple] = []
        # Running requests by id, in admission order (LIFO clearing takes the last ones).
        self._running: dict[int, Request] = {}
        self._planned: dict[int, int] = {}  # request id -> planned total output length
        # With the decode pool: the running requests' plan in absolute rounds (None when
        # it must be rebuilt by the per-request pass).
        self._abs: AbsolutePlan | None = None

    @property
    def clairvoyant(self) -> bool:
        """Only the oracle predictor reads true lengths; the others see predictions."""
        return self.predictor == "oracle"

    @property
    def uses_pool(self) -> bool:
        """Running requests decode as a group (`kvsched.pool`); see `_schedule_pool`."""
        return True

    def config(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    # --- planning lengths and the waiting order -------------------------------------------
    def _initial_plan(self, r: Request, capacity: int) -> int:
        return min(max(1, int(self._predictor.output_len(r))), max(1, capacity - r.prompt_len))

    def _key(self, r: Request, length: int) -> tuple:
        key = []
        for f in self._order:
            if f == "length":
                key.append(length + self.aging * r.arrival_time if self.aging else length)
            elif f == "arrival":
                key.append(r.arrival_time)
            elif f == "prompt":
                key.append(r.prompt_len)
            elif f == "id":
                key.append(r.request_id)
            else:  # volume: the memory-time area of the request's KV triangle
                key.append(r.prompt_len * length + length * (length + 1) // 2)
        return tuple(key)

    def _push(self, r: Request) -> None:
        heapq.heappush(self._heap, (*self._key(r, self._planned[r.request_id]), r.request_id, r))

    def _replan_outlived(self, r: Request) -> int:
        """The planned length of running `r`, raised to g + 1 once it outlives its plan."""
        g, length = r.num_output_tokens, self._planned[r.request_id]
        if g >= length:
            length = g + 1
            self._planned[r.request_id] = length
        return length

    # --- clearing ----------------------------------------------------------------------------
    def _clear_target(self, view: View) -> int:
        if self.clear_to == "capacity":
            return view.capacity_tokens
        return math.floor((1.0 - self.reserve) * view.capacity_tokens)

    def _victims(self, view: View, running: list[Request]) -> list[Request]:
        return clear(view, running, self.clearing, target_tokens=self._clear_target(view),
                     beta=self.beta, rng=self._rng, who=type(self).__name__)

    # --- the step -------------------------------------------------------------------------
    def schedule(self, view: View) -> Decision:
        capacity = view.capacity_tokens
        for r in view.arrived:
            self._planned[r.request_id] = self._initial_plan(r, capacity)
            self._push(r)
        if view.finished:
            aborted = set()
            running, plan = self._running, self._abs
            for r in view.finished:
                rid = r.request_id
                self._planned.pop(rid, None)
                running.pop(rid, None)
                if plan is not None:
                    plan.remove(rid, view.step)
                if r.status is RequestStatus.ABORTED:  # a client disconnect (online loop)
                    aborted.add(rid)
            if aborted:  # it may have been waiting: drop it from the heap
                self._heap = [e for e in self._heap if e[-1].request_id not in aborted]
                heapq.heapify(self._heap)
        pool = view.pool
        if pool is not None:
            # Every running request is a pool member decoding one token (the plan is
            # non-preemptive), so the next round needs the blocks held now plus the
            # pool's new ones: clearing can trigger only if those exceed the free blocks.
            # With prefix caching (shared blocks) or a resident outside the pool, or on
            # such a step, every request's exact state is needed: the per-request pass.
            if (self._abs is not None and not pool.outside and view.prefix_cache is None
                    and pool.num_new_blocks <= view.num_free_blocks):
                return self._schedule_pool(view)
            pool.flush()
        return self._schedule_each(view)

    def _schedule_pool(self, view: View) -> Decision:
        """The step with every running request in the decode pool: the plan is kept in
        absolute rounds (`AbsolutePlan`), so nothing is visited per running request; only
        re-planned requests and admission candidates are. The same decision as
        `_schedule_each` (tests/test_decode_pool.py runs both)."""
        plan, now, running = self._abs, view.step, self._running
        pad = ledger_pad(view)
        due = plan.due(now)
        if due:
            # They reached their planned end without finishing: planned = g + 1 from now on
            # (`_replan_outlived`), one round at a time.
            planned = self._planned
            for rid, base in due:
                planned[rid] = base + now - running[rid].prompt_len - pad + 1
                plan.add_late(rid, base)
        run: dict[int, int] = {}
        n_run = num_tokens = len(running)  # every running request decodes one token
        admitted = self._admit(view, plan, now, pad, run, n_run, num_tokens, ())
        steady = not self._heap and not admitted
        return Decision(run, repeat=STEADY if steady else 1, pool=True)

    def _admit(self, view: View, plan, now: int, pad: int, run: dict[int, int], n_run: int, num_tokens: int,
               cleared: tuple[int, ...]) -> int:
        """Admit waiting requests in key order while the plan fits (MC-SF's rule); each
        goes into `run`, `self._running` and the plan. `plan` is a FuturePlan seen from
        now, or an AbsolutePlan with `now` the absolute round. Returns how many."""
        restart = self.preemption == "restart"
        absolute = isinstance(plan, AbsolutePlan)
        skipped = []
        admitted = 0
        heap = self._heap
        while heap:
            r = heap[0][-1]
            rid = r.request_id
            if cleared and rid in cleared:
                # Cleared this very step: the loop drops its KV (and, on restart, its
                # tokens) before the step, so it re-enters with a full prefill.
                g = 0 if restart else r.num_output_tokens
                n = r.prompt_len + g
            else:
                g = r.num_output_tokens
                n = r.num_tokens - r.num_computed_tokens
            footprint = r.prompt_len + g + pad
            rounds = max(1, self._planned[rid] - g)
            if self.max_num_seqs and n_run >= self.max_num_seqs:
                break
            if self.max_num_batched_tokens and n_run and num_tokens + n > self.max_num_batched_tokens:
                break
            fits = plan.fits(footprint, rounds, now) if absolute else plan.fits(footprint, rounds)
            if not fits and not n_run:
                # Nothing runs: the request fits the cache alone (the loop rejects the rest)
                # but not the plan (reserve or block padding). Run it alone, else it waits forever.
                fits = True
            if not fits:
                if not self.skip_infeasible:
                    break
                skipped.append(heapq.heappop(heap))
                continue
            heapq.heappop(heap)
            if absolute:
                plan.add(rid, footprint - now, now + rounds)
            else:
                plan.add(footprint, rounds)
            self._running[rid] = r
            run[rid] = n
            num_tokens += n
            n_run += 1
            admitted += 1
        for entry in skipped:
            heapq.heappush(heap, entry)
        return admitted

    def _schedule_each(self, view: View) -> Decision:
        """The step visiting every running request (the reference path)."""
        running = list(self._running.values())
        victims = self._victims(view, running) if running else []
        if victims:
            gone = {v.request_id for v in victims}
            running = [r for r in running if r.request_id not in gone]
            for v in victims:
                # It ran g tokens without finishing, so it needs at least g + 1.
                rid = v.request_id
                del self._running[rid]
                self._planned[rid] = max(self._planned[rid], v.num_output_tokens + 1)
                self._push(v)

        pad = ledger_pad(view)
        cap = math.floor((1.0 - self.reserve) * view.capacity_tokens)
        alive = []
        for r in running:
            length = self._replan_outlived(r)
            g = r.num_output_tokens
            alive.append((r.prompt_len + g + pad, length - g))
        plan = FuturePlan(cap, alive)

        run = {r.request_id: r.num_tokens - r.num_computed_tokens for r in running}
        restart = self.preemption == "restart"
        cleared = tuple(v.request_id for v in victims)
        n_before = len(run)
        admitted = self._admit(view, plan, 0, pad, run, len(run), sum(run.values()), cleared)
        if view.pool is not None:
            # The plan in absolute rounds for the pool steps that follow: the same entries.
            now = view.step
            self._abs = absolute = AbsolutePlan(cap)
            ids = list(run)
            for (footprint, rounds), rid in zip(alive, ids[:n_before], strict=True):
                absolute.add(rid, footprint - now, now + rounds)
            for rid in ids[n_before:]:
                r = self._running[rid]
                g = 0 if (restart and rid in cleared) else r.num_output_tokens
                absolute.add(rid, r.prompt_len + g + pad - now, now + max(1, self._planned[rid] - g))
        else:
            self._abs = None

        steady = not self._heap and not victims and not admitted
        return Decision(
            run,
            preempt=() if restart else cleared,
            restart=cleared if restart else (),
            repeat=STEADY if steady else 1,
        )


@SCHEDULERS.register("mc-benchmark", "MC-Benchmark: MC-SF's future-memory check in FCFS order")
@dataclass(eq=False)
class MCBenchmarkScheduler(MCSFScheduler):
    """MC-Benchmark (2502.07115): MC-SF's check and prefix rule, waiting list in arrival
    order (tie key (a, id)). It isolates the value of shortest-first; no guarantee."""

    order: str = "arrival,id"


@SCHEDULERS.register("zhou-jiang", "Zhou & Jiang Algorithm 1: clairvoyant memory-constrained shortest-first (heuristic)")
@dataclass(eq=False)
class ZhouJiangScheduler(MCSFScheduler):
    """Zhou & Jiang's Algorithm 1 (poster): MC-SF with exact lengths, order (o, s, a, id).

    The poster claims optimality for equal or monotone prompts. That claim is false: with
    M = 10, s = 2, o = (2, 8, 5, 2, 1) it has total latency 26 against the optimum 24
    (docs/mcsf.md; tests/test_mcsf.py). Treat it as a strong heuristic, never as the optimum."""

    predictor: str = "oracle"
    order: str = "length,prompt,arrival,id"


@SCHEDULERS.register("svf", "Smallest Volume First: MC-SF's check, ordered by s*o + o(o+1)/2")
@dataclass(eq=False)
class SVFScheduler(MCSFScheduler):
    """Smallest Volume First (arXiv 2606.22327): MC-SF's check with the waiting list
    ordered by the planned memory-time volume s·o + o(o+1)/2. Claimed CR <= 5 with known
    lengths; kvsched does not verify that claim."""

    order: str = "volume,arrival,prompt,id"


@SCHEDULERS.register("a-max", "A_max: MC-SF planning with the upper end of interval predictions")
@dataclass(eq=False)
class AMaxScheduler(MCSFScheduler):
    """A_max (Chen, Ye, Zhou, arXiv 2508.14544): MC-SF with o~ = u, the upper end of the
    interval prediction, ordered by u ascending. Plans never under-estimate, so it never
    overflows. Guarantee (equal prompts, common interval, all at time 0): CR <= a^-1 (1 +
    a^-1) / 2 with a = l/u, and some instances reach a^-1 (1 + a^-1/2) / 2."""

    predictor: str = "interval-high"


@SCHEDULERS.register("a-min", "A_min: optimistic lower-bound planning, raised on the fly; evict smallest bound first")
@dataclass(eq=False)
class AMinScheduler(MCSFScheduler):
    """A_min (Chen, Ye, Zhou, arXiv 2508.14544): plans every request with a pseudo lower
    bound L, starting at l. A running request that reaches L without finishing gets
    L := g + 1 (`refine="increment"`, the default) or L := min(u, 2L) (`"double"`). When the
    next round does not fit M, running requests are evicted smallest L first (ties at
    random, seeded), restart from scratch and keep L >= the tokens they had produced.
    Waiting requests are admitted in (L, id) order with MC-SF's check.
    Guarantee (equal prompts, all at time 0): CR = O(log(1/a)), a = l/u; it needs no
    upper bound."""

    predictor: str = "interval-low"
    order: str = "length,id"
    refine: str = "increment"  # increment: L = g + 1 | double: L = min(u, 2 L)

    def __post_init__(self) -> None:
        if self.refine not in ("increment", "double"):
            raise ValueError(f"refine must be 'increment' or 'double', got {self.refine!r}")
        super().__post_init__()

    @property
    def uses_pool(self) -> bool:
        # Doubling re-plans an outlived request from its previous bound at every round, so
        # its plan is not one round at a time: only "increment" keeps the pool's plan exact.
        return self.refine == "increment"

    def _replan_outlived(self, r: Request) -> int:
        g, length = r.num_output_tokens, self._planned[r.request_id]
        if g >= length:
            if self.refine == "double" and r.predicted_output_interval is not None:
                # Double as often as stepping round by round would have by now: the
                # simulator may skip calls while the decision repeats (fast-forward).
                hi = r.predicted_output_interval[1]
                while length <= g and length < hi:
                    length = min(hi, 2 * length)
                length = max(g + 1, length)
            else:
                length = g + 1
            self._planned[r.request_id] = length
        return length

    def _victims(self, view: View, running: list[Request]) -> list[Request]:
        need = [next_round_blocks(view, r) for r in running]
        total = sum(need)
        if total <= view.num_blocks:
            return []
        for r in running:
            self._replan_outlived(r)
        ties = self._rng.permutation(len(running))
        order = sorted(range(len(running)), key=lambda i: (self._planned[running[i].request_id], ties[i]))
        victims = []
        for i in order:
            if total <= view.num_blocks:
                break
            victims.append(running[i])
            total -= need[i]
        return victims

