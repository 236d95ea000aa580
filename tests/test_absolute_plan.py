"""AbsolutePlan (MC-SF's plan kept in absolute rounds for the decode pool) against a
FuturePlan built afresh from the same requests at every round, as the per-request pass does."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvsched.schedulers.future_plan import AbsolutePlan, FuturePlan

# One operation per round: admit (footprint, rounds), finish the i-th running request,
# or let rounds pass; after each, every candidate is asked of both plans.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(1, 60), st.integers(1, 20)),
        st.tuples(st.just("finish"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("wait"), st.integers(1, 5), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(ops=ops, cap=st.integers(20, 400), candidates=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 15)),
                                                              min_size=1, max_size=6),
       bulk=st.booleans(), numpy_from=st.sampled_from([1, 4, 8, 10**9]))
# Many distinct ends, then rounds passing and finishes: the numpy arrays grow, and fall back to lists.
@example(ops=[("admit", 3, r) for r in range(1, 21)] + [("wait", 4, 0), ("finish", 5, 0)] * 4, cap=400,
         candidates=[(5, 3)], bulk=False, numpy_from=1)
@example(ops=[("admit", 3, r) for r in range(20, 0, -1)] + [("wait", 4, 0), ("finish", 2, 0)] * 4, cap=300,
         candidates=[(5, 3)], bulk=True, numpy_from=8)
def test_absolute_plan_answers_as_a_fresh_future_plan(ops, cap, candidates, bulk, numpy_from):
    # numpy_from: the numpy arrays always (1), lists only (10**9), or switching both ways as the
    # number of planned ends crosses 4 or 8 (up and down, and at bulk rebuilds).
    now = 0
    running: dict[int, tuple[int, int]] = {}  # id -> (base, planned end); late ones re-planned every round
    plan = AbsolutePlan(cap, numpy_from)
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
            plan = AbsolutePlan(cap, numpy_from)
            for rid, (base, end) in running.items():
                plan.add(rid, base, max(end, now + 1))
        check()
    assert len(plan) == len(running) and all(rid in plan for rid in running)
