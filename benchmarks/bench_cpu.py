"""CPU seconds of one simulation in this process, and a digest of its result: to compare two
source trees (a change against its base) run it once per tree, in fresh processes, interleaved.

    PYTHONPATH=BASE/src python benchmarks/bench_cpu.py vllm      # base tree
    PYTHONPATH=src python benchmarks/bench_cpu.py vllm           # this tree

Configs: `vllm` (azure-conv x1, prefix caching on, its default), `vllm-noapc`, `sarathi`, `mcsf`
(exact predictions), and
`synthetic:N` (N requests of bench_sim.py's synthetic spec, seed 0, vllm). It prints the CPU
seconds (`time.process_time`, best of REPEATS runs in this process), the number of step rows,
the peak RSS, a sha256 over the end time, every steps column and every request (`repr`):
equal digests mean byte-identical results; and the core it ran on (`compiled-core` or
`pure-Python`, kvsched.compiled: KVSCHED_PURE=1 picks the Python source). CPU time is less sensitive than wall time to the
other processes on a shared machine; still, compare only figures measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import time

import numpy as np

import kvsched.compiled
import kvsched.schedulers
import kvsched.sim.cost  # registers the cost models
from kvsched.predictors import with_predictions
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.sim import simulate
from kvsched.traces import load_trace, parse_synthetic

SYNTH_SPEC = "synthetic:n={n},arrival=poisson,rate=10,prompt=lognormal(5.5,0.5),output=uniform(50,350)"
AZURE = {"vllm": ("vllm", None), "vllm-noapc": ("vllm", False), "sarathi": ("sarathi", None), "mcsf": ("mcsf", None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="vllm | vllm-noapc | sarathi | mcsf | synthetic:N")
    p.add_argument("repeats", nargs="?", type=int, default=1)
    args = p.parse_args()
    if args.config.startswith("synthetic:"):
        n = int(args.config.partition(":")[2])
        reqs = parse_synthetic(SYNTH_SPEC.format(n=n), np.random.default_rng(0))
        name, apc = "vllm", None
    elif args.config in AZURE:
        reqs = load_trace("azure-conv")
        name, apc = AZURE[args.config]
        if name == "mcsf":  # MC-SF reads predicted lengths: exact ones, as bench_sim.py
            reqs = with_predictions(reqs, "exact", np.random.default_rng(0))
    else:
        p.error(f"config must be one of {sorted(AZURE)} or synthetic:N, got {args.config!r}")
    best = float("inf")
    for _ in range(args.repeats):
        scheduler, cost = SCHEDULERS.create(name), COST_MODELS.create("llama2-7b-a100")
        t = time.process_time()
        run = simulate(reqs, scheduler, cost, capacity_tokens=137_000, block_size=16, prefix_caching=apc)
        best = min(best, time.process_time() - t)
    digest = hashlib.sha256(repr(run.end_time).encode())
    for column in run.steps:
        digest.update(repr(run.steps[column]).encode())
    for r in run.requests:
        digest.update(repr(r).encode())
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.config} cpu_s={best:.3f} rows={run.steps.num_rows} peak_rss_mib={rss_mib:.0f} "
          f"digest={digest.hexdigest()[:16]} core={kvsched.compiled.describe().split(':')[0].replace(' ', '-')}")


if __name__ == "__main__":
    main()
