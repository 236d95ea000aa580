"""MC-SF's absolute plan (`future_plan.AbsolutePlan`): cost of one event against the number
of planned ends, for the numpy arrays it switches to at `NUMPY_FROM_CHECKPOINTS` against its
list path kept throughout (`numpy_from` = never), in the same run.

    python benchmarks/bench_plan.py

An event here is what an admission with a new planned end costs the plan: `add`, one
`fits` up to that end, and `remove` (a finish before the planned end), at a random position
among n distinct ends. The list path costs O(ends before it); the numpy path a near-constant
handful of numpy calls. Prints µs per event (best of 5) and lists / default.
"""

from __future__ import annotations

import random
import timeit

from kvsched.schedulers.future_plan import NUMPY_FROM_CHECKPOINTS, AbsolutePlan

NUM_ENDS = (16, 64, 128, 256, 512, 1024, 4096)
NEVER = 10**18


def us_per_event(num_ends: int, numpy_from: int) -> float:
    plan = AbsolutePlan(10**15, numpy_from)
    for rid in range(num_ends):
        plan.add(rid, 100, 1000 + 10 * rid)
    plan.fits(1, 1, 0)  # builds the arrays
    rng = random.Random(0)

    def event() -> None:
        end = 1000 + 10 * rng.randrange(num_ends) + 5  # between two planned ends: a new checkpoint
        plan.add(-1, 50, end)
        plan.fits(10, end - 5, 0)
        plan.remove(-1, 0)

    return min(timeit.repeat(event, number=2000, repeat=5)) / 2000 * 1e6


def main() -> None:
    print(f"AbsolutePlan: us per event (add + fits + remove), numpy from {NUMPY_FROM_CHECKPOINTS} ends")
    print(f"{'ends':>6} {'lists':>8} {'default':>8} {'lists/default':>14}")
    for n in NUM_ENDS:
        lists, default = us_per_event(n, NEVER), us_per_event(n, NUMPY_FROM_CHECKPOINTS)
        print(f"{n:>6} {lists:>8.1f} {default:>8.1f} {lists / default:>13.1f}x")


if __name__ == "__main__":
    main()
