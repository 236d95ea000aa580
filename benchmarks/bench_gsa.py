"""GSA/GBA on long offline batches: the fast path (Decision.repeat) against stepping.

    python benchmarks/bench_gsa.py                 # n = 2,000, ~1-2 min on a 2-core machine
    python benchmarks/bench_gsa.py -n 10000        # the largest size of the studies (several minutes)

kvsched aims for makespans of 1e5-1e6 rounds with n up to 10,000 to run
in reasonable time. The loop fast-forwards a decision while the scheduler promises it
stays the same (until the next kill, the credit turning positive, or a waiting job that
starts to fit as time passes). This benchmark times one run with that fast path and one
that calls the scheduler every round (`fast_forward=False`), on the same batch sampled
from the shipped Azure conversation trace, and prints the ratio measured in this run.
Both runs must give identical completion times; the script checks that.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from kvsched.experiments.gsa import sample_batch
from kvsched.registry import SCHEDULERS
from kvsched.sim import simulate_batch


def timed(name: str, s, o, capacity: int, fast_forward: bool) -> tuple[float, list, int]:
    t0 = time.perf_counter()
    run = simulate_batch(s, o, SCHEDULERS.create(name), capacity_tokens=capacity, fast_forward=fast_forward)
    wall = time.perf_counter() - t0
    return wall, sorted((r.request_id, r.finish_time) for r in run.requests), len(run.steps["step"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--capacity", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedulers", default="gba,gsa")
    args = p.parse_args()
    s, o, dropped = sample_batch("azure-conv", args.n, args.capacity, args.seed)
    table = Table(title=f"offline batch, azure-conv n={len(s)} ({dropped} dropped), M={args.capacity}")
    for col in ("scheduler", "makespan (rounds)", "fast path (s)", "rows", "every round (s)", "rows", "speed-up"):
        table.add_column(col, justify="right")
    for name in args.schedulers.split(","):
        fast, fast_result, fast_rows = timed(name, s, o, args.capacity, True)
        slow, slow_result, slow_rows = timed(name, s, o, args.capacity, False)
        if fast_result != slow_result:
            raise SystemExit(f"{name}: the fast path changed the schedule")
        makespan = max(t for _, t in fast_result)
        table.add_row(name, f"{makespan:,.0f}", f"{fast:.2f}", f"{fast_rows:,}", f"{slow:.2f}", f"{slow_rows:,}",
                      f"{slow / fast:.1f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
