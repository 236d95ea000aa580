"""`simulate`: one call that wires requests, a scheduler, a cost model and a KV cache."""

from __future__ import annotations

from collections.abc import Sequence

from kvsched.decision import Scheduler
from kvsched.kvcache import KVCache
from kvsched.loop import ProgressFn, Run, run
from kvsched.request import Request
from kvsched.sim.backend import SimBackend


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
) -> Run:
    """Simulate `requests` under `scheduler`; the inputs are not mutated."""
    kv = KVCache(capacity_tokens, block_size)
    return run(requests, scheduler, SimBackend(cost_model, fast_forward=fast_forward), kv, progress=progress,
               max_steps=max_steps)
