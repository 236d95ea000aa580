"""Sorted-F (Wang, Ye, Zhou, arXiv 2508.06133): clairvoyant batch-level baseline.

The greedy construction kvsched uses for Sorted-F (Wang, Ye, Zhou, arXiv 2508.06133; docs/gsa.md): from the remaining jobs sorted by
(o, s, id), find the longest prefix whose jobs can start together (the reservation check
of `FuturePlan` with a common start), take the prefix X of that length or shorter that
minimises F(X) = Σ_X o / |X|² (ties: the longer), and repeat. The batches then run back
to back in ascending F, each starting when every job of the previous one has finished.
This greedy prefix rule is a simplification; the published ratio (<= 48) belongs to the
paper's construction, not necessarily to this one.

With online arrivals the batches are rebuilt from everything waiting whenever the
engine is empty and new requests arrived since the last construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvsched.decision import Decision, Scheduler, View
from kvsched.registry import SCHEDULERS
from kvsched.request import RequestStatus
from kvsched.schedulers.future_plan import FuturePlan, ledger_pad

STEADY = 1 << 30


def sorted_f_batches(prompt: list[int], output: list[int], ids: list[int], capacity: int) -> list[list[int]]:
    """Sorted-F's batches (lists of ids) in the order they run.

    `prompt` is each job's footprint in the plan (s_i under the theory ledger)."""
    order = sorted(range(len(ids)), key=lambda i: (output[i], prompt[i], ids[i]))
    batches: list[tuple[float, int, list[int]]] = []
    start = 0
    while start < len(order):
        plan = FuturePlan(capacity)
        k = start
        while k < len(order) and plan.fits(prompt[order[k]], output[order[k]]):
            plan.add(prompt[order[k]], output[order[k]])
            k += 1
        if k == start:  # fits nowhere even alone (padding): run it by itself
            k = start + 1
        sizes = np.arange(1, k - start + 1)
        f = np.cumsum([output[i] for i in order[start:k]]) / sizes**2
        best = int(np.flatnonzero(f == f.min())[-1]) + 1  # ties: the longer prefix
        batches.append((float(f[best - 1]), len(batches), [ids[i] for i in order[start:start + best]]))
        start += best
    batches.sort(key=lambda b: (b[0], b[1]))
    return [ids_ for _, _, ids_ in batches]


@SCHEDULERS.register("sorted-f", "Sorted-F (Wang, Ye, Zhou): clairvoyant batches of minimum sum(o)/k^2, run back "
                                  "to back")
@dataclass(eq=False)
class SortedFScheduler(Scheduler):
    """Sorted-F, greedy construction (docs/gsa.md). Clairvoyant; never kills; idle rounds
    never happen while jobs wait (the next batch starts the round the last one ends)."""

    _batches: list[list[int]] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        self._running: set[int] = set()
        self._stale = True

    def config(self) -> dict:
        return {}

    def schedule(self, view: View) -> Decision:
        if view.arrived:
            self._stale = True
        for r in view.finished:
            if r.request_id in self._running:
                self._running.discard(r.request_id)
            elif r.status is RequestStatus.ABORTED:  # withdrawn while waiting (online loop)
                self._stale = True  # the batches still name it: rebuild them
        run = {rid: view.resident[rid].num_tokens - view.resident[rid].num_computed_tokens for rid in self._running}
        if not self._running and view.waiting:
            if self._stale or not self._batches:
                pad = ledger_pad(view)
                waiting = list(view.waiting.values())
                self._batches = sorted_f_batches([r.prompt_len + r.num_output_tokens + pad for r in waiting],
                                                 [r.output_len - r.num_output_tokens for r in waiting],
                                                 [r.request_id for r in waiting], view.capacity_tokens)
                self._stale = False
            batch = self._batches.pop(0)
            for rid in batch:
                r = view.waiting[rid]
                run[rid] = r.num_tokens - r.num_computed_tokens
            self._running.update(batch)
            return Decision(run)
        return Decision(run, repeat=STEADY)
