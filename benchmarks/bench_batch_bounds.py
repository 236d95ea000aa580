"""Offline-batch lower bounds (docs/gsa.md): time of LB_count at n = 10,000.

    python benchmarks/bench_batch_bounds.py              # a few seconds
    python benchmarks/bench_batch_bounds.py --n 1000 10000 100000 --repeats 3

Workload: `n` (prompt, output) pairs drawn with replacement (seed 0) from the shipped
`azure-conv` trace (19,366 real requests; median prompt 1,020, median output 129, largest
prompt + output 14,089 tokens), every job arriving at 0. `--source synthetic` draws
lognormal lengths instead (prompt median ~665, output median ~150, clipped to 8,000/1,000).
Each size is run at two KV budgets: M = 16,384 (jobs are large against M) and
M = 137,000 (the CLI default capacity). eps = max(s+o)/M depends on the largest job
drawn: at n = 10,000 from azure-conv it is about 0.86 and 0.10.

Figures are `time.perf_counter` wall times of one call, median of `--repeats` calls, in
one single-threaded Python process (input validation included, generating the workload
not). `x lb_mix` is the time of `lb_count` divided by the time of `lb_mix` (a vectorised
numpy sort and cumsum) **in the same run**: a relative figure, since other load on the
machine makes every time larger. The table also gives the values, `LB_count / LB_mix`,
and the number of distinct output lengths (a bound on the o-breakpoints). The target of
the task: `lb_count` at n = 10,000 well under a second. Results go to
benchmarks/results/bench_batch_bounds.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from kvsched.bounds.batch import job_size_ratio, lb_count, lb_mix, regime

HERE = Path(__file__).resolve().parent
CAPACITIES = (16_384, 137_000)


def _workload(source: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if source == "azure":
        from kvsched.traces import load_trace

        reqs = load_trace("azure-conv")
        s = np.array([r.prompt_len for r in reqs], dtype=np.int64)
        o = np.array([r.output_len for r in reqs], dtype=np.int64)
        pick = rng.integers(0, s.size, n)
        return s[pick], o[pick]
    s = np.clip(np.rint(rng.lognormal(6.5, 1.0, n)), 0, 8_000).astype(np.int64)
    o = np.clip(np.rint(rng.lognormal(5.0, 0.9, n)), 1, 1_000).astype(np.int64)
    return s, o


def _time(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    times = []
    value = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", choices=("azure", "synthetic"), default="azure")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_batch_bounds.json")
    args = ap.parse_args()

    rows = []
    for n in args.n:
        s, o = _workload(args.source, n, args.seed)
        for m in CAPACITIES:
            t_count, v_count = _time(lambda s=s, o=o, m=m: lb_count(s, o, m), args.repeats)
            t_mix, v_mix = _time(lambda s=s, o=o, m=m: lb_mix(s, o, m), args.repeats)
            eps = job_size_ratio(s, o, m)
            rows.append({
                "n": n, "capacity": m, "eps": eps, "regime": regime(eps),
                "distinct_o": int(np.unique(o).size),
                "lb_count_s": t_count, "lb_mix_s": t_mix, "time_ratio": t_count / t_mix,
                "lb_count": v_count, "lb_mix": v_mix, "value_ratio": v_count / v_mix,
            })

    table = Table(title=f"LB_count vs LB_mix, {args.source} lengths, all arrivals 0 "
                        f"(median of {args.repeats} calls)")
    for col in ("n", "M", "eps", "distinct o", "lb_count ms", "lb_mix ms", "x lb_mix", "LB_count",
                "LB_count / LB_mix", "under 1 s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['n']:,}", f"{r['capacity']:,}", f"{r['eps']:.3f}", f"{r['distinct_o']:,}",
                      f"{r['lb_count_s'] * 1e3:.2f}", f"{r['lb_mix_s'] * 1e3:.3f}", f"{r['time_ratio']:.0f}",
                      f"{r['lb_count']:,}", f"{r['value_ratio']:.6f}", "yes" if r["lb_count_s"] < 1 else "NO")
    Console(width=140).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                                    "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
