"""`simulate_cluster`: N replicas behind a router, one deterministic event order.

The coordinator walks the global events in order: the arrivals (sorted by time, then id)
and, under prefill/decode disaggregation, the hand-overs to the decode pool (sorted by
time, then id). At each event the router picks a replica; the replicas the router reads,
and the one it picks, are first advanced to the event (`Replica.advance_to`). Replicas never
interact between events, so advancing them lazily, in any order, gives the same result as
advancing all of them at every event; the order of events alone decides the run, and the
same inputs and seed give the same bytes.

Disaggregated (`Disaggregation`): arrivals are routed over the prefill pool, every prefill
replica is advanced to each arrival, and a hand-over (prefill finish + KV transfer time) is
routed over the decode pool once no prefill replica can still produce an earlier one (all
of them have passed its time: a prefill step that has not started cannot end before it).
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kvsched.cluster.disagg import Disaggregation, decode_part, merged_record, prefill_part
from kvsched.cluster.packed import ConcatRequestTable, ConcatStepTable
from kvsched.cluster.replica import Replica
from kvsched.cluster.routers import BlindView, ClusterView, Router
from kvsched.decision import Scheduler
from kvsched.kvcache import make_kv_cache
from kvsched.loop import ProgressFn, Run, SchedulingError
from kvsched.registry import ROUTERS
from kvsched.request import Request
from kvsched.sim.backend import SimBackend

# Schedulers that size a waiting request's work from its prompt alone (num_computed_tokens 0)
# cannot take a request whose KV was prefilled elsewhere; the loop's validation catches it.
DECODE_HINT = ("A decode replica receives requests that already hold their prompt's KV; this scheduler "
               "sizes waiting requests as if they had none (see docs/cluster.md for the schedulers that can decode)")


@dataclass
class ClusterRun:
    """A cluster's result: `run` merges the replicas (requests as a user saw them, every
    replica's steps with a `replica` column); `replica_runs` are each replica's own."""

    run: Run
    replica_runs: list[Run]
    roles: tuple[str, ...]  # per replica: "mixed", or "prefill" / "decode" when disaggregated
    replica_of: dict[int, int]  # request id -> the replica its arrival was routed to
    router: str
    router_config: dict
    decode_replica_of: dict[int, int] = field(default_factory=dict)  # disaggregated: request id -> decode replica
    transfer_time: dict[int, float] = field(default_factory=dict)  # disaggregated: request id -> KV copy seconds
    disaggregation: Disaggregation | None = None

    @property
    def num_replicas(self) -> int:
        return len(self.replica_runs)


def make_router(router: str | Router, options: dict | None = None) -> Router:
    if isinstance(router, Router):
        return router
    return ROUTERS.create(router, **(options or {}))


def _prefix_caching(scheduler: Scheduler, prefix_caching: bool | None) -> bool:
    if prefix_caching is None:
        return bool(getattr(scheduler, "enable_prefix_caching", False))
    if prefix_caching and not hasattr(scheduler, "enable_prefix_caching"):
        raise ValueError(f"{type(scheduler).__name__} does not support prefix caching (schedulers with an "
                         "enable_prefix_caching option do: vllm, sjf, srpt, fcfs-static)")
    return prefix_caching


def simulate_cluster(
    requests: Sequence[Request],
    make_scheduler: Callable[[], Scheduler],
    cost_model,
    *,
    capacity_tokens: int,
    num_replicas: int = 1,
    router: str | Router = "round-robin",
    router_options: dict | None = None,
    router_refresh_s: float | None = None,
    seed: int = 0,
    block_size: int = 16,
    fast_forward: bool = True,
    progress: ProgressFn | None = None,
    progress_every: int = 4096,
    max_steps: int | None = None,
    lookahead_tokens: int = 0,
    check_oracle: bool = False,
    prefix_caching: bool | None = None,
    disaggregation: Disaggregation | None = None,
    decode_pool: bool = True,
) -> ClusterRun:
    """Simulate `requests` (copied, never mutated) on a cluster.

    make_scheduler: called once per replica (each replica has its own scheduler state).
    num_replicas: replicas of one kind; with `disaggregation` it must be P + D (or 1, the
    default, meaning "take it from the disaggregation").
    router / router_options: a registered router (`kvsched routers`) or a Router.
    router_refresh_s: None, routers read replica state live at each arrival; a number, they
    read it as published every router_refresh_s seconds plus their own routing since
    (`routers.ClusterView`).
    seed: seeds the router's generator (random and power-of-two choices).
    The other arguments are `kvsched.sim.simulate`'s, for every replica (`decode_pool`
    included)."""
    if lookahead_tokens < 0:
        raise ValueError(f"lookahead_tokens must be >= 0, got {lookahead_tokens}")
    reqs = sorted(requests, key=lambda r: (r.arrival_time, r.request_id))
    ids = [r.request_id for r in reqs]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids must be unique")
    router_name = router if isinstance(router, str) else type(router).__name__

    def replica(index: int, role: str, capacity: int) -> Replica:
        scheduler = make_scheduler()
        # A decode replica receives KV copied from a prefill replica, not looked up in its own
        # cache: it runs without prefix caching (the prefill pool keeps it).
        apc = _prefix_caching(scheduler, prefix_caching) and role != "decode"
        kv = make_kv_cache(capacity, block_size, prefix_caching=apc)
        return Replica(index, scheduler, SimBackend(cost_model, fast_forward=fast_forward), kv,
                       lookahead_tokens=lookahead_tokens, check_oracle=check_oracle, max_steps=max_steps, role=role,
                       decode_pool=decode_pool)

    if disaggregation is None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        replicas = [replica(i, "mixed", capacity_tokens) for i in range(num_replicas)]
        rt = make_router(router, router_options)
        rt.reset(num_replicas, np.random.default_rng([seed, 20]))
        # The replicas take the requests themselves: a loop copies each one on arrival and never
        # mutates its inputs (a million copies here would be ~0.7 GB for nothing).
        if rt.reads_state:
            replica_of = _route(reqs, reqs, replicas, rt, progress, progress_every, refresh_s=router_refresh_s)
        else:
            replica_of = _route_blind(reqs, reqs, replicas, rt)
        for rep in replicas:
            rep.drain()
            if progress is not None and not rt.reads_state:  # one replica after the other
                progress(rep.now, sum(r.loop.num_done for r in replicas))
        runs = [rep.result() for rep in replicas]
        merged = _merge(runs, ConcatRequestTable([run.requests for run in runs]))
        if progress is not None:
            progress(merged.end_time, len(reqs))
        return ClusterRun(merged, runs, tuple(rep.role for rep in replicas), replica_of, router_name, rt.config())
    return _disaggregated(reqs, replica, num_replicas, router, router_options, seed, capacity_tokens,
                          disaggregation, progress, progress_every, router_refresh_s)


def _route(originals: list[Request], arrivals: list[Request], replicas: list[Replica], router: Router,
           progress: ProgressFn | None, progress_every: int, on_event: Callable[[float], None] | None = None,
           refresh_s: float | None = None) -> dict[int, int]:
    """Route each arrival in order to a replica and hand it over; returns id -> replica."""
    view = ClusterView(replicas, lambda i, t: replicas[i].advance_to(t), refresh_s)
    replica_of: dict[int, int] = {}
    for k, r in enumerate(arrivals):
        t = r.arrival_time
        if on_event is not None:
            on_event(t)
        view.now = t
        i = router.route(originals[k], view)
        if not 0 <= i < len(replicas):
            raise ValueError(f"router {type(router).__name__} picked replica {i} of {len(replicas)}")
        rep = replicas[i]
        rep.advance_to(t)
        rep.inject(r)
        view.routed(i, r)
        replica_of[r.request_id] = i
        if progress is not None and k % progress_every == 0:
            progress(t, sum(rep.loop.num_done for rep in replicas))
    return replica_of


def _route_blind(originals: list[Request], arrivals: list[Request], replicas: list[Replica],
                 router: Router) -> dict[int, int]:
    """A router that reads no state: route everything first; each replica then runs to its
    end on its own (`drain`), as `loop.run` on its share. The same run as `_route` (tested),
    without interleaving N replicas' working sets."""
    view = BlindView(len(replicas))
    replica_of: dict[int, int] = {}
    for k, r in enumerate(arrivals):
        view.now = r.arrival_time
        i = router.route(originals[k], view)
        if not 0 <= i < len(replicas):
            raise ValueError(f"router {type(router).__name__} picked replica {i} of {len(replicas)}")
        replicas[i].inject(r)
        replica_of[r.request_id] = i
    return replica_of


def _merge(runs: list[Run], requests: Sequence[Request]) -> Run:
    """One Run of the replicas' runs: `requests` as given, the steps side by side (packed)."""
    first = runs[0]
    return Run(requests, ConcatStepTable([run.steps for run in runs]), first.capacity_tokens, first.block_size,
               first.num_blocks, max(run.end_time for run in runs))


def _disaggregated(reqs, replica, num_replicas, router, router_options, seed, capacity_tokens,
                   dis: Disaggregation, progress, progress_every, refresh_s) -> ClusterRun:
    p, d = dis.num_prefill, dis.num_decode
    if num_replicas not in (1, p + d):
        raise ValueError(f"{num_replicas} replicas, but {p} prefill + {d} decode replicas were asked for")
    prefill = [replica(i, "prefill", capacity_tokens) for i in range(p)]
    decode = [replica(p + j, "decode", dis.decode_capacity_tokens or capacity_tokens) for j in range(d)]
    rt_p = make_router(router, router_options)
    # The decode pool has its own router: a given instance is copied, not shared between pools.
    rt_d = copy.deepcopy(rt_p) if isinstance(router, Router) else make_router(router, router_options)
    rt_p.reset(p, np.random.default_rng([seed, 20]))
    rt_d.reset(d, np.random.default_rng([seed, 21]))
    by_id = {r.request_id: r for r in reqs}
    handovers: list[tuple[float, int]] = []  # (arrival at the decode pool, request id): a heap
    transfer: dict[int, float] = {}
    decode_of: dict[int, int] = {}
    decode_view = ClusterView(decode, lambda i, t: decode[i].advance_to(t), refresh_s)

    def prefilled(done: list[Request]) -> None:
        for r in done:
            if by_id[r.request_id].output_len > 1:
                x = dis.transfer_time(r.prompt_len)
                transfer[r.request_id] = x
                heapq.heappush(handovers, (r.finish_time + x, r.request_id))

    for rep in prefill:
        rep.on_finish = prefilled

    def hand_over(until: float) -> None:
        try:
            _hand_over(until)
        except SchedulingError as exc:
            raise SchedulingError(f"decode replica: {exc}. {DECODE_HINT}") from None

    def _hand_over(until: float) -> None:
        while handovers and handovers[0][0] <= until:
            t, rid = heapq.heappop(handovers)
            decode_view.now = t
            original = by_id[rid]
            j = rt_d.route(original, decode_view)
            if not 0 <= j < d:
                raise ValueError(f"router {type(rt_d).__name__} picked decode replica {j} of {d}")
            decode[j].advance_to(t)
            handed = decode_part(original, t)
            decode[j].inject(handed)
            decode_view.routed(j, handed)
            decode_of[rid] = j

    def before_arrival(t: float) -> None:
        for rep in prefill:
            rep.advance_to(t)
        # No prefill step that has not started can end before min(now): hand-overs up to it are final.
        hand_over(min(rep.now for rep in prefill))

    replica_of = _route(reqs, [prefill_part(r) for r in reqs], prefill, rt_p, progress, progress_every,
                        on_event=before_arrival, refresh_s=refresh_s)
    for rep in prefill:
        rep.drain()
    hand_over(float("inf"))
    try:
        for rep in decode:
            rep.drain()
    except SchedulingError as exc:
        raise SchedulingError(f"decode replica: {exc}. {DECODE_HINT}") from None
    runs = [rep.result() for rep in (*prefill, *decode)]
    pre = {r.request_id: r for run in runs[:p] for r in run.requests}
    dec = {r.request_id: r for run in runs[p:] for r in run.requests}
    merged_reqs = [merged_record(r, pre[r.request_id], dec.get(r.request_id)) for r in reqs]
    merged = _merge(runs, merged_reqs)
    if progress is not None:
        progress(merged.end_time, len(reqs))
    return ClusterRun(merged, runs, ("prefill",) * p + ("decode",) * d, replica_of,
                      router if isinstance(router, str) else type(router).__name__, rt_p.config(),
                      {rid: p + j for rid, j in decode_of.items()}, transfer, dis)
