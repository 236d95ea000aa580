"""AbsolutePlan (MC-SF's plan kept in absolute rounds for the decode pool) against a
FuturePlan built afresh from the same requests at every round, as the per-request pass does."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.schedulers.future_plan import AbsolutePlan, FuturePlan

# One operation per round: admit (footprint, rounds), finish the i-th running request,
# or let rounds pass; after each, every candidate is asked of both plans.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(1, 60), st.integers(1, 12)),
        st.tuples(st.just("finish"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("wait"), st.integers(1, 5), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, cap=st.integers(20, 400), candidates=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 15)),
                                                              min_size=1, max_size=6),
       bulk=st.booleans())
def test_absolute_plan_answers_as_a_fresh_future_plan(ops, cap, candidates, bulk):
    now = 0
    running: dict[int, tuple[int, int]] = {}  # id -> (base, planned end); late ones re-planned every round
    plan = AbsolutePlan(cap)
    next_id = 0

    def check() -> None:
        # The per-request pass: outlived requests get one round (g + 1), the rest end - now.
        for rid, base in plan.due(now):
            plan.add_late(rid, base)
        alive = [(base + now, max(1, end - now)) for base, end in running.values()]
        fresh = FuturePlan(cap, alive)
        for footprint, rounds in candidates:
            assert plan.fits(footprint, rounds, now) == fresh.fits(footprint, rounds), (footprint, rounds, alive)
        # At the boundary: for every length, the largest footprint that fits, and one more.
        footprints = np.arange(1, cap + 2)
        for rounds in range(1, 16):
            ok = fresh.fits_many(footprints, np.full(len(footprints), rounds))
            largest = int(footprints[ok][-1]) if ok.any() else 0
            for footprint in (largest, largest + 1):
                if footprint:
                    assert plan.fits(footprint, rounds, now) == fresh.fits(footprint, rounds), (footprint, rounds)

    for kind, a, b in ops:
        if kind == "admit":
            running[next_id] = (a - now, now + b)
            plan.add(next_id, a - now, now + b)
            next_id += 1
        elif kind == "finish" and running:
            rid = list(running)[a % len(running)]
            del running[rid]
            plan.remove(rid, now)
        elif kind == "wait":
            now += a
        if bulk and kind == "admit" and next_id % 3 == 0:
            # The per-request pass rebuilds the plan from every running request.
            for rid, base in plan.due(now):
                plan.add_late(rid, base)
            plan = AbsolutePlan(cap)
            for rid, (base, end) in running.items():
                plan.add(rid, base, max(end, now + 1))
        check()
    assert len(plan) == len(running) and all(rid in plan for rid in running)
