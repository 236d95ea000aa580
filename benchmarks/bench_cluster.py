"""Cluster benchmark (issue 20): how fast `kvsched.cluster.simulate_cluster` runs at scale.

    python benchmarks/bench_cluster.py                       # azure x64 on 64 replicas + scaling N=1,4,16
    python benchmarks/bench_cluster.py --quick               # smaller scaling sizes
    python benchmarks/bench_cluster.py --only million        # 1,000,000 requests on 16 replicas (minutes)
    python benchmarks/bench_cluster.py --only million --large-n 250000   # fewer, 1,000,000 extrapolated
    python benchmarks/bench_cluster.py --only scaling        # one part (azure, scaling, million)

1. azure: the Azure conversation trace (19,366 requests) replayed 64x faster on 64 replicas,
   per router, against one replica on the trace at its own rate measured in the same run
   (the same load per replica): wall, microseconds per request and their ratio.
2. scaling: the bench_sim synthetic workload (lognormal prompts, uniform 50-350 outputs,
   Poisson at 10 req/s per replica, about two thirds of a replica's saturation) on N = 1, 4,
   16 replicas at N x the rate and N x the requests: cost per request at each N over N = 1's,
   per router. `random` thins a Poisson stream, so every replica sees the N = 1 workload.
   Round-robin's overhead over independent runs on the same shares (which it equals, tested)
   is printed too. Routers that read replica state stop every replica's fast-forwarded decode
   runs at every arrival, so their cost per request grows with N until no run is long enough
   to fast-forward: the table shows where.
3. million: 1,000,000 such requests on 16 replicas (`--only million`, not in the default run);
   with `--large-n K` it runs K and extrapolates 1,000,000 from the cost per request, and says
   so (run with the scaling part, it also prints the ratio to the scaling part's N = 16 cost
   per request: about 1 when the cost per request does not grow with the trace's length).

Every figure is the best of `--repeats` runs, in CPU seconds of this single-threaded
process (`time.process_time`) around the simulation, workload generation excluded: on a
shared machine the wall clock also counts other processes' turns (the JSON keeps the wall
times too). Other processes still slow a run through caches, so the ratios against a
neighbouring baseline are the figures to compare. Results also go to
benchmarks/results/bench_cluster.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

import kvsched.schedulers
import kvsched.sim.cost  # noqa: F401  (registration)
from kvsched.cluster import simulate_cluster
from kvsched.cluster.metrics import cluster_summary
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.sim import simulate
from kvsched.traces import load_trace, parse_synthetic, scale_rate

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_cluster.json"
CAPACITY_TOKENS = 137_000
COST_MODEL = "llama2-7b-a100"
SCHEDULER = "vllm"
AZURE_REPLICAS = 64
AZURE_ROUTERS = (("round-robin", None), ("random", None), ("least-outstanding", None), ("power-of-two", None),
                 ("least-outstanding", 0.1))
SCALING_N = (1, 4, 16)
# (router, refresh interval): None reads replica state live at every arrival; 0.1 s is vLLM's
# data-parallel coordinator's publishing interval (docs/cluster.md).
SCALING_ROUTERS = (("random", None), ("round-robin", None), ("power-of-two", None), ("least-outstanding", None),
                   ("least-outstanding", 0.1))
SYNTH_SPEC = ("synthetic:n={n},arrival=poisson,rate={rate},prompt=lognormal(5.5,0.5),output=uniform(50,350)")
SYNTH_RATE_PER_REPLICA = 10.0
MILLION = 1_000_000
MILLION_REPLICAS = 16


def timed(fn, repeats: int):
    """(best CPU seconds, best wall seconds, the last result). CPU time of this process is the
    figure compared: on a shared machine the wall clock also counts other processes' turns."""
    cpus, walls, out = [], [], None
    for _ in range(repeats):
        out = None
        c, t = time.process_time(), time.perf_counter()
        out = fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - t)
    return min(cpus), min(walls), out


def cluster(reqs, n: int, router: str, refresh_s: float | None = None):
    return simulate_cluster(reqs, SCHEDULERS.get(SCHEDULER).factory, COST_MODELS.create(COST_MODEL),
                            capacity_tokens=CAPACITY_TOKENS, num_replicas=n, router=router, router_refresh_s=refresh_s)


def bench_azure(repeats: int, log) -> dict:
    base = load_trace("azure-conv")
    fast = scale_rate(base, float(AZURE_REPLICAS))
    cost = COST_MODELS.create(COST_MODEL)

    def one_replica():
        return simulate(base, SCHEDULERS.create(SCHEDULER), cost, capacity_tokens=CAPACITY_TOKENS)

    rows = []
    for router, refresh in AZURE_ROUTERS:
        # The one-replica baseline is measured next to each cluster run, repeats interleaved:
        # the machine's load drifts, and a ratio of neighbours survives it.
        cpus1, cpus, walls, crun, run1 = [], [], [], None, None
        for _ in range(repeats):
            c1, _, run1 = timed(one_replica, 1)
            c, w, crun = timed(lambda router=router, refresh=refresh: cluster(fast, AZURE_REPLICAS, router, refresh),
                               1)
            cpus1.append(c1)
            cpus.append(c)
            walls.append(w)
        wall1, wall = min(cpus1), min(cpus)  # CPU seconds
        s = cluster_summary(crun, per_replica=False)
        name = router if refresh is None else f"{router}@{refresh:g}s"
        row = {"router": name, "router_refresh_s": refresh, "num_replicas": AZURE_REPLICAS,
               "num_requests": len(fast), "cpu_s": wall, "wall_s": min(walls),
               "us_per_request": 1e6 * wall / len(fast),
               "one_replica_cpu_s": wall1, "one_replica_us_per_request": 1e6 * wall1 / len(base),
               "ratio_to_one_replica": (wall / len(fast)) / (wall1 / len(base)),
               "step_rows": len(crun.run.steps["step"]), "one_replica_step_rows": len(run1.steps["step"]),
               "e2e_mean_s": s["e2e_mean"], "ttft_p99_s": s["ttft_p99"], "load_imbalance": s["load_imbalance"],
               "jain_index": s["jain_index"]}
        rows.append(row)
        log(f"azure x{AZURE_REPLICAS} on {AZURE_REPLICAS} replicas, {name}: {wall:.2f} s CPU "
            f"({row['us_per_request']:.0f} us/request; one replica on azure x1 next to it: {wall1:.2f} s CPU, "
            f"{row['one_replica_us_per_request']:.0f} us/request; ratio {row['ratio_to_one_replica']:.2f}), "
            f"{row['step_rows']:,} step rows (one replica {row['one_replica_step_rows']:,}), "
            f"e2e mean {s['e2e_mean']:.2f} s, imbalance {s['load_imbalance']:.3f}, Jain {s['jain_index']:.3f}")
    return {"clusters": rows}


def synthetic(n_requests: int, n_replicas: int):
    spec = SYNTH_SPEC.format(n=n_requests, rate=SYNTH_RATE_PER_REPLICA * n_replicas)
    return parse_synthetic(spec, np.random.default_rng(0))


def bench_scaling(per_replica: int, repeats: int, log) -> list[dict]:
    rows = []
    reqs1 = synthetic(per_replica, 1)

    def one_replica() -> float:
        """Cost per request of N = 1 (one replica whatever the router), measured again next to
        every N > 1 row: the machine's load drifts, and a ratio of two neighbours survives it."""
        return timed(lambda: cluster(reqs1, 1, "round-robin"), repeats + 1)[0] / len(reqs1)

    base, _, run1 = timed(lambda: cluster(reqs1, 1, "round-robin"), repeats + 1)  # CPU seconds
    base /= len(reqs1)
    stepped = simulate(reqs1, SCHEDULERS.create(SCHEDULER), COST_MODELS.create(COST_MODEL),
                       capacity_tokens=CAPACITY_TOKENS, fast_forward=False)
    ceiling = len(stepped.steps["step"]) / len(reqs1)
    rows1 = len(run1.run.steps["step"]) / len(reqs1)
    log(f"synthetic N= 1 (any router)            {len(reqs1):>7,} requests: {base * len(reqs1):6.2f} s, "
        f"{1e6 * base:5.0f} us/request (CPU), {rows1:.2f} step rows/request ({ceiling:.1f} without fast-forward)")
    rows.append({"router": "any", "num_replicas": 1, "num_requests": len(reqs1), "cpu_s": base * len(reqs1),
                 "us_per_request": 1e6 * base, "ratio_to_n1": 1.0, "step_rows": len(run1.run.steps["step"]),
                 "rows_per_request": rows1, "rows_per_request_without_fast_forward": ceiling})
    for n in SCALING_N[1:]:
        reqs = synthetic(per_replica * n, n)
        for router, refresh in SCALING_ROUTERS:
            wall, walls, crun = timed(lambda router=router, reqs=reqs, n=n, refresh=refresh:  # CPU, wall
                                      cluster(reqs, n, router, refresh), repeats)
            per, here = wall / len(reqs), one_replica()
            name = router if refresh is None else f"{router}@{refresh:g}s"
            row = {"router": name, "router_refresh_s": refresh, "num_replicas": n, "num_requests": len(reqs),
                   "cpu_s": wall, "wall_s": walls, "us_per_request": 1e6 * per, "n1_us_per_request": 1e6 * here,
                   "ratio_to_n1": per / here, "step_rows": len(crun.run.steps["step"]),
                   "rows_per_request": len(crun.run.steps["step"]) / len(reqs),
                   "e2e_mean_s": cluster_summary(crun, per_replica=False)["e2e_mean"]}
            if router == "round-robin":
                shares = [[r for r in reqs if crun.replica_of[r.request_id] == i] for i in range(n)]
                cost = COST_MODELS.create(COST_MODEL)
                alone, _, _ = timed(lambda shares=shares, cost=cost: [
                    simulate(s, SCHEDULERS.create(SCHEDULER), cost, capacity_tokens=CAPACITY_TOKENS)
                    for s in shares], repeats)
                row["independent_cpu_s"] = alone
                row["overhead_vs_independent"] = wall / alone
            rows.append(row)
            extra = (f", x{row['overhead_vs_independent']:.2f} of {n} independent runs"
                     if "overhead_vs_independent" in row else "")
            log(f"synthetic N={n:>2} {name:<22} {len(reqs):>7,} requests: {wall:6.2f} s CPU, "
                f"{row['us_per_request']:5.0f} us/request (x{row['ratio_to_n1']:.2f} of N=1 measured next to it), "
                f"{row['rows_per_request']:.2f} step rows/request{extra}")
    return rows


def bench_million(n_requests: int, scaling: list[dict], log) -> dict:
    """`n_requests` (1,000,000 by default) on 16 replicas, random and power-of-two routing;
    below 1,000,000 the wall time of 1,000,000 is extrapolated from the cost per request."""
    t = time.perf_counter()
    reqs = synthetic(n_requests, MILLION_REPLICAS)
    gen = time.perf_counter() - t
    out = {"num_requests": n_requests, "num_replicas": MILLION_REPLICAS, "generate_s": gen, "runs": []}
    at16 = {r["router"]: r for r in scaling if r["num_replicas"] == MILLION_REPLICAS}
    for router in ("random", "power-of-two"):
        wall, wall_clock, crun = timed(lambda router=router: cluster(reqs, MILLION_REPLICAS, router), 1)
        s = cluster_summary(crun, per_replica=False)
        del crun
        per = wall / n_requests
        row = {"router": router, "cpu_s": wall, "wall_s": wall_clock, "us_per_request": 1e6 * per,
               "num_completed": s["num_completed"], "e2e_mean_s": s["e2e_mean"],
               "million_cpu_s": wall if n_requests == MILLION else per * MILLION,
               "million_measured": n_requests == MILLION}
        if router in at16:  # the same per-request cost at 4x or 60x the requests: no growth with the trace
            row["ratio_to_scaling_n16"] = 1e6 * per / at16[router]["us_per_request"]
        out["runs"].append(row)
        how = "measured" if n_requests == MILLION else f"extrapolated from {n_requests:,}"
        log(f"{n_requests:,} requests on {MILLION_REPLICAS} replicas, {router}: {wall:.1f} s CPU ({wall_clock:.1f} s wall) "
            f"({1e6 * per:.0f} us/request), {s['num_completed']:,} completed; 1,000,000 requests: "
            f"{row['million_cpu_s']:.0f} s CPU ({how})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1,000 requests per replica in the scaling part")
    p.add_argument("--large-n", type=int, default=MILLION,
                   help="requests of the large part on 16 replicas (default 1,000,000; fewer: extrapolated)")
    p.add_argument("--only", action="append", choices=("azure", "scaling", "million"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--per-replica", type=int, help="synthetic requests per replica (default 4000; 1000 --quick)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    parts = set(args.only or ("azure", "scaling"))
    per_replica = args.per_replica or (1000 if args.quick else 4000)
    repeats = 1 if args.quick else args.repeats

    def log(msg: str) -> None:
        print(msg, flush=True)

    result: dict = {"machine": platform.platform(), "python": platform.python_version(), "repeats": repeats,
                    "scheduler": SCHEDULER, "cost_model": COST_MODEL, "capacity_tokens": CAPACITY_TOKENS}
    if "azure" in parts:
        result["azure"] = bench_azure(repeats, log)
    scaling = bench_scaling(per_replica, repeats, log) if "scaling" in parts else []
    if scaling:
        result["scaling"] = scaling
    if "million" in parts:
        result["million"] = bench_million(args.large_n, scaling, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
