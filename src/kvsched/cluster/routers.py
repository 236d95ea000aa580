"""Global routers: which replica a request goes to, decided when it arrives.

A router registers like a scheduler (`@ROUTERS.register("name")`, one class in this file)
and implements `route(request, view) -> replica index`. `view.replica(i)` is replica i as it
is at the request's arrival (the coordinator advances it there on first read, so a router
pays only for the replicas it looks at, and round-robin and random read none). What a
router may read is listed on `kvsched.cluster.replica.Replica`; it never sees output lengths.

`reset(num_replicas, rng)` starts a run: counters back to zero and the run's own seeded
generator (the only randomness a router has). Ties go to the first replica in a rotating
order, so an idle cluster spreads requests instead of piling them on replica 0.

The policies are those of the cluster simulators: Vidur's global schedulers (round-robin,
random, least outstanding requests), SplitwiseSim's join-the-shortest-queue family (by
requests, by queued tokens, by KV in use), power-of-two choices (Mitzenmacher), a
prefix-affinity router in the spirit of BLIS's prefix-cache scorer, and vLLM's own
data-parallel load balancer (`vllm-dp`), so vLLM's data-parallel mode (N engines behind
its front end) is one configuration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from kvsched.registry import ROUTERS
from kvsched.request import Request


class BlindView:
    """The view a router that declared `reads_state = False` gets: reading it is a bug."""

    __slots__ = ("now", "num_replicas")

    def __init__(self, num_replicas: int) -> None:
        self.num_replicas = num_replicas
        self.now = 0.0

    def replica(self, i: int):
        raise RuntimeError("a router with reads_state = False read a replica; declare reads_state = True")


class Snapshot:
    """What a router reads of a replica, as published at a refresh tick, plus the requests
    the router itself sent there since (as vLLM's front end adds its own routing to the
    counts its coordinator last published)."""

    __slots__ = ("capacity_tokens", "kv_used_blocks", "kv_used_tokens", "now", "num_free_blocks", "num_outstanding",
                 "num_queued_tokens", "num_running", "num_waiting")

    def __init__(self, replica) -> None:
        self.now = replica.now
        self.num_outstanding = replica.num_outstanding
        self.num_waiting = replica.num_waiting
        self.num_running = replica.num_running
        self.num_queued_tokens = replica.num_queued_tokens
        self.kv_used_tokens = replica.kv_used_tokens
        self.kv_used_blocks = replica.kv_used_blocks
        self.num_free_blocks = replica.num_free_blocks
        self.capacity_tokens = replica.capacity_tokens

    def add(self, request: Request) -> None:
        """The router sent `request` here after the snapshot was taken."""
        self.num_outstanding += 1
        self.num_waiting += 1
        self.num_queued_tokens += request.prompt_len + request.num_output_tokens - request.num_computed_tokens


class ClusterView:
    """The replicas as the router sees them at `now`.

    refresh_s None (default): each replica as it is at the arrival, read live. A number:
    replica state is published every refresh_s seconds of simulated time (the first read
    after a tick advances the replica to the tick and snapshots it), and a router reads the
    last snapshot plus its own routing since; vLLM's data-parallel coordinator publishes
    every 0.1 s. Besides modelling that staleness, it bounds the cost of routers that read
    every replica: a replica is stopped at most once per tick instead of at every arrival."""

    __slots__ = ("_advance", "_replicas", "_snaps", "_tick", "_tick_of", "_ticks", "now", "refresh_s")

    def __init__(self, replicas: Sequence, advance: Callable[[int, float], None],
                 refresh_s: float | None = None) -> None:
        if refresh_s is not None and not (refresh_s > 0 and math.isfinite(refresh_s)):
            raise ValueError(f"router refresh_s must be a finite number > 0, got {refresh_s}")
        self._replicas = replicas
        self._advance = advance
        self.now = 0.0
        self.refresh_s = refresh_s
        n = len(replicas)
        self._snaps: list[Snapshot | None] = [None] * n
        self._ticks = [-1.0] * n
        self._tick_of, self._tick = -1.0, -1.0  # the tick of the last `now` seen (read N times per arrival)

    @property
    def num_replicas(self) -> int:
        return len(self._replicas)

    def replica(self, i: int):
        """Replica i at `now` (it may be a step past it: a step in flight when the request
        arrives is already decided and counted), or its last published snapshot."""
        if self.refresh_s is None:
            self._advance(i, self.now)
            return self._replicas[i]
        if self.now != self._tick_of:
            self._tick_of, self._tick = self.now, math.floor(self.now / self.refresh_s) * self.refresh_s
        tick = self._tick
        if self._ticks[i] < tick:
            self._advance(i, tick)
            self._snaps[i] = Snapshot(self._replicas[i])
            self._ticks[i] = tick
        return self._snaps[i]

    def routed(self, i: int, request: Request) -> None:
        """The coordinator sent `request` to replica i (counted on top of a snapshot)."""
        # A snapshot taken later counts it from the replica itself (it is handed over by then).
        snap = self._snaps[i] if self.refresh_s is not None else None
        if snap is not None:
            snap.add(request)


class Router:
    """Base class: `route` picks a replica index.

    `reads_state = False` declares that `route` never reads the view (round-robin, random):
    the coordinator may then route every request first and run each replica to its end,
    one after the other, which gives the same run (replicas only interact through the
    router) with better memory locality; the view it is given refuses reads."""

    reads_state = True

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        if num_replicas < 1:
            raise ValueError(f"a cluster needs at least one replica, got {num_replicas}")
        self.num_replicas = num_replicas
        self.rng = rng
        self._turn = 0

    def route(self, request: Request, view: ClusterView) -> int:
        raise NotImplementedError

    def config(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("rng", "num_replicas")}

    def _least(self, view: ClusterView, key: Callable) -> int:
        """The replica with the smallest `key(replica)`; ties to the first in rotating order."""
        n = self.num_replicas
        start = self._turn
        self._turn = (start + 1) % n
        best, best_key = start, None
        for k in range(n):
            i = (start + k) % n
            v = key(view.replica(i))
            if best_key is None or v < best_key:
                best, best_key = i, v
        return best


@ROUTERS.register("round-robin", "replicas in turn (Vidur's round_robin); reads no replica state")
class RoundRobin(Router):
    reads_state = False

    def route(self, request: Request, view: ClusterView) -> int:
        i = self._turn
        self._turn = (i + 1) % self.num_replicas
        return i


@ROUTERS.register("random", "a uniformly random replica from the run's seeded generator (Vidur's random)")
class Random(Router):
    reads_state = False

    def route(self, request: Request, view: ClusterView) -> int:
        return int(self.rng.integers(self.num_replicas))


@ROUTERS.register("least-outstanding", "fewest requests routed and not finished (Vidur's LOR, SplitwiseSim's JSQ)")
class LeastOutstanding(Router):
    def route(self, request: Request, view: ClusterView) -> int:
        return self._least(view, lambda r: r.num_outstanding)


@ROUTERS.register("least-kv", "least KV cache in use, in blocks (SplitwiseSim's KV-JSQ)")
class LeastKV(Router):
    def route(self, request: Request, view: ClusterView) -> int:
        return self._least(view, lambda r: (r.kv_used_blocks, r.num_outstanding))


@ROUTERS.register("shortest-token-queue", "fewest queued tokens to prefill (SplitwiseSim's token-JSQ)")
class ShortestTokenQueue(Router):
    def route(self, request: Request, view: ClusterView) -> int:
        return self._least(view, lambda r: (r.num_queued_tokens, r.num_outstanding))


@ROUTERS.register("vllm-dp", "vLLM's data-parallel load balancer: least 4 x waiting + running requests")
class VLLMDataParallel(Router):
    """vLLM v1's front end in data-parallel mode (`DPLBAsyncMPClient`) sends a request to the
    engine with the smallest 4 x waiting + running request count, scanning from a rotating
    start. vLLM reads counts its coordinator publishes about every 100 ms (and adds its own
    routing to the waiting count in between); this router reads them fresh at the arrival."""

    def route(self, request: Request, view: ClusterView) -> int:
        return self._least(view, lambda r: 4 * r.num_waiting + r.num_running)


@ROUTERS.register("power-of-two", "two random replicas, the one with fewer outstanding requests (Mitzenmacher)")
class PowerOfTwo(Router):
    def route(self, request: Request, view: ClusterView) -> int:
        n = self.num_replicas
        if n == 1:
            return 0
        # Two distinct replicas from one draw (Generator.choice without replacement costs
        # tens of microseconds a call): k picks an ordered pair among n (n - 1).
        a, b = divmod(int(self.rng.integers(n * (n - 1))), n - 1)
        b += b >= a
        return b if view.replica(b).num_outstanding < view.replica(a).num_outstanding else a


@ROUTERS.register("prefix-affinity", "the replica that last served the request's longest known prefix, when it "
                                     "covers min_match of the prefix and that replica is at most max_load_gap "
                                     "requests busier than the least loaded; else the least loaded")
class PrefixAffinity(Router):
    """Requests sharing a prefix (`Request.prefix_block_ids`, chained ids) go where that
    prefix was last sent, so a replica with prefix caching finds it in its cache. The router
    keeps its own index (prefix id -> replica), as a router in front of real engines must;
    it never reads the replicas' caches. The match counts only when it covers at least
    `min_match` of the request's prefix blocks (a shared system prompt alone would send
    every request to one replica), and only while the affine replica has at most
    `max_load_gap` outstanding requests more than the least loaded one. Otherwise the
    request goes to the least loaded replica (least-outstanding)."""

    def __init__(self, max_load_gap: int = 8, min_match: float = 0.5) -> None:
        if max_load_gap < 0:
            raise ValueError(f"max_load_gap must be >= 0, got {max_load_gap}")
        if not 0 <= min_match <= 1:
            raise ValueError(f"min_match must be in [0, 1], got {min_match}")
        self.max_load_gap = max_load_gap
        self.min_match = min_match

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        super().reset(num_replicas, rng)
        self._owner: dict[int, int] = {}

    def route(self, request: Request, view: ClusterView) -> int:
        least = self._least(view, lambda r: r.num_outstanding)
        ids = request.prefix_block_ids or ()
        owner = self._owner
        choice = least
        for k in range(len(ids) - 1, -1, -1):  # chained ids: the deepest known one is the longest match
            i = owner.get(ids[k])
            if i is not None:
                if (k + 1 >= self.min_match * len(ids)
                        and view.replica(i).num_outstanding <= view.replica(least).num_outstanding + self.max_load_gap):
                    choice = i
                break
        for pid in ids:
            owner[pid] = choice
        return choice


__all__ = ["ClusterView", "Router", "Snapshot"]
