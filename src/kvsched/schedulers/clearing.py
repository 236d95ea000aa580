"""Clearing: what the theory papers' schedulers do when memory actually overflows.

In the papers' model (the MC-SF paper's model) an overflow drops the KV of
some running requests; they lose every generated token, go back to the waiting queue
with their original arrival time and start over. In kvsched that is
`Decision(restart=...)` (or `preempt=...` under the keep-generated option).

Rules (`clearing=`):
- `none`:      the run is infeasible (`InfeasibleSchedule`): α-protection greedy.
- `all`:       clear every running request.
- `lifo`:      evict the latest-started first until the next round fits the target. The
               earliest-started request is kept unless the capacity itself requires
               evicting it: it always fits alone, and evicting it too would let the same
               overflow recur forever (a deterministic livelock).
- `bernoulli`: clear each running request with probability β (seeded); if that is not
               enough to fit the capacity, continue LIFO (memory is never exceeded).

An overflow is judged on real blocks: the next round of the running set needs more
blocks than the cache has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsched.decision import View
from kvsched.request import Request

CLEARING_RULES = ("none", "all", "lifo", "bernoulli")


class InfeasibleSchedule(RuntimeError):
    """The policy's own rule declares the run infeasible (an overflow with clearing='none')."""


def check_clearing(rule: str) -> None:
    if rule not in CLEARING_RULES:
        raise ValueError(f"unknown clearing rule {rule!r}; known: {', '.join(CLEARING_RULES)}")


def next_round_blocks(view: View, r: Request) -> int:
    """Blocks `r` holds after computing everything it has left to compute next round."""
    total = r.num_tokens + view.lookahead_tokens  # num_tokens = prompt + generated so far
    return -(-total // view.block_size)


def clear(
    view: View,
    running: Sequence[Request],
    rule: str,
    *,
    target_tokens: int,
    beta: float = 0.0,
    rng: np.random.Generator | None = None,
    who: str = "scheduler",
) -> list[Request]:
    """Victims to clear if the next round of `running` (in start order) does not fit.

    Returns [] when it fits the capacity. Otherwise evicts by `rule` until the next
    round fits `target_tokens` (never more than the capacity)."""
    check_clearing(rule)
    need = [next_round_blocks(view, r) for r in running]
    total = sum(need)
    if total <= view.num_blocks:
        return []
    if rule == "none":
        raise InfeasibleSchedule(
            f"{who}: overflow at step {view.step} (t={view.now:g}): the next round of {len(running)} running "
            f"requests needs {total * view.block_size} KV tokens, capacity is {view.capacity_tokens}"
        )
    if rule == "all":
        return list(running)
    target_blocks = min(view.num_blocks, max(0, target_tokens) // view.block_size)
    victims: set[int] = set()
    if rule == "bernoulli":
        if rng is None:
            raise ValueError("bernoulli clearing needs a seeded generator")
        draws = rng.uniform(0.0, 1.0, len(running))
        for i, r in enumerate(running):
            if draws[i] < beta:
                victims.add(i)
                total -= need[i]
        target_blocks = view.num_blocks  # beyond the draws, only what safety requires
    i = len(running) - 1
    while total > target_blocks and i >= 1:
        if i not in victims:
            victims.add(i)
            total -= need[i]
        i -= 1
    if total > view.num_blocks:  # only safety may evict the oldest (it never happens: it fits alone)
        victims.add(0)
    return [running[i] for i in sorted(victims)]
