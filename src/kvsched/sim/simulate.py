"""`simulate`: one call that wires requests, a scheduler, a cost model and a KV cache.

`simulate_theory` is the papers' model (MC-SF, WAIT, GBA/GSA theory): unit-time rounds,
memory counted in single tokens, and a request holding prompt + j tokens after its j-th
output token, so that total latency equals the papers' objective to the token.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvsched.decision import Scheduler
from kvsched.kvcache import KVCache
from kvsched.loop import ProgressFn, Run, run
from kvsched.request import Request
from kvsched.sim.backend import SimBackend
from kvsched.sim.cost import UnitCost


def simulate(
    requests: Sequence[Request],
    scheduler: Scheduler,
    cost_model,
    *,
    capacity_tokens: int,
    block_size: int = 16,
    fast_forward: bool = True,
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
    lookahead_tokens: int = 0,
) -> Run:
    """Simulate `requests` under `scheduler`; the inputs are not mutated."""
    kv = KVCache(capacity_tokens, block_size)
    return run(requests, scheduler, SimBackend(cost_model, fast_forward=fast_forward), kv, progress=progress,
               max_steps=max_steps, lookahead_tokens=lookahead_tokens)


def simulate_theory(
    requests: Sequence[Request],
    scheduler: Scheduler,
    *,
    capacity_tokens: int,
    fast_forward: bool = True,
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
) -> Run:
    """The theory papers' model: every round lasts 1, block size 1, one lookahead slot.

    With integer arrivals, a request's latency `finish_time - arrival_time` is the
    papers' `c_i - a_i` and the steps' `kv_used_tokens` is the papers' memory at each
    epoch (MC-SF spec sections 2.2-2.3, 3.1-3.4)."""
    return simulate(requests, scheduler, UnitCost(), capacity_tokens=capacity_tokens, block_size=1,
                    fast_forward=fast_forward, progress=progress, max_steps=max_steps, lookahead_tokens=1)
