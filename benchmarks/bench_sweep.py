"""Sweep throughput: the same grid in one process, on a local process pool and on local Ray.

    python benchmarks/bench_sweep.py                # 48 cells of 2,000 requests, ~1 min on 2 cores
    python benchmarks/bench_sweep.py --jobs 4 -n 5000

Every executor runs the same cells into its own directory; the script checks that the three
results.parquet files are byte-identical, then prints cells per second and the speed-up over
the single process measured in this run. Ray's figure includes starting and stopping its
local instance, which is what a user of `kvsched sweep --ray` pays once per sweep.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import kvsched.schedulers
import kvsched.sim  # noqa: F401  (registration)
from kvsched.experiments.runner import LocalExecutor, RayExecutor
from kvsched.experiments.sweep import Grid, run_sweep


def grid(num_requests: int) -> Grid:
    return Grid.from_dict({
        "name": "bench", "schedulers": ["vllm", "sarathi", "mcsf"], "rates": [4.0, 8.0, 12.0, 16.0],
        "capacities": [16384, 65536], "seeds": [0, 1],
        "workload": {"trace": f"synthetic:n={num_requests},prompt=lognormal(5.5,0.5),output=uniform(50,350)"},
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--num-requests", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    g = grid(args.num_requests)
    executors = {"one process": LocalExecutor(1), f"process pool ({args.jobs})": LocalExecutor(args.jobs),
                 f"local Ray ({args.jobs} CPUs)": RayExecutor(num_cpus=args.jobs)}
    table = Table(title=f"{len(g.cells())} cells of {args.num_requests:,} requests")
    for col in ("executor", "wall (s)", "cells/s", "speed-up vs one process"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        walls, tables = {}, []
        for name, ex in executors.items():
            out = Path(tmp) / str(len(walls))
            t0 = time.perf_counter()
            run_sweep(g, out, executor=ex, save_runs=False)
            walls[name] = time.perf_counter() - t0
            tables.append((out / "results.parquet").read_bytes())
        if any(t != tables[0] for t in tables):
            raise SystemExit("the executors gave different results")
    base = walls["one process"]
    for name, wall in walls.items():
        table.add_row(name, f"{wall:.1f}", f"{len(g.cells()) / wall:.2f}", f"{base / wall:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
