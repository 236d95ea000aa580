"""Digests of many simulations, for tests/test_compiled.py to run once compiled and once with
KVSCHED_PURE=1 (the modules' Python source) and compare: equal digests mean byte-identical runs.

Prints one JSON object: the file each hot module was imported from, and a sha256 per run over
its end time, every steps column (raw bytes) and every request field (repr). The runs: every
registered scheduler with its defaults, and the decode pool's variants (tests/test_decode_pool.py),
on random workloads from an explicit generator with a KV budget small enough to preempt, with
and without prefix caching and lookahead slots; and a slice of the Azure conversation trace at
four times its rate. A run that raises gives its error message instead: the same in both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import kvsched.compiled
from kvsched.predictors import with_predictions
from kvsched.registry import SCHEDULERS
from kvsched.request import Request
from kvsched.sim import simulate
from kvsched.sim.cost import AffinePrefillCost
from kvsched.traces import load_trace, parse_synthetic, scale_rate

sys.path.insert(0, str(Path(__file__).parent))
from conftest import create_scheduler

COST = AffinePrefillCost(d0_s=0.01, d1_s_per_token=1e-4, d2_s_per_prefill_token=1e-3)
VARIANTS = [
    ("vllm", {"policy": "priority"}),
    ("vllm", {"preemption": "restart"}),
    ("vllm", {"max_num_batched_tokens": 64, "max_num_seqs": 24, "long_prefill_token_threshold": 24}),
    ("vllm", {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}),
    ("sjf", {"key": "remaining"}),
    ("fcfs-static", {"predictor": "predicted"}),
    ("sarathi", {"chunk_size": 64, "batch_size_cap": 8}),
    ("vidur-vllm", {"batch_size_cap": 6, "max_tokens_in_batch": 2048}),
    ("mcsf", {"preemption": "recompute", "clearing": "bernoulli", "beta": 0.3, "clear_to": "capacity"}),
]


def digest(run) -> str:
    h = hashlib.sha256(repr(run.end_time).encode())
    for column in run.steps:
        h.update(column.encode() + np.asarray(run.steps[column]).tobytes())
    for r in run.requests:
        h.update(repr([getattr(r, f.name) for f in dataclasses.fields(Request)]).encode())
    return h.hexdigest()


def one(reqs, name, options, preemptions, **kwargs) -> str:
    try:
        scheduler = create_scheduler(name, list(reqs), **options)
        run = simulate([r.copy_fresh() for r in reqs], scheduler, COST, **kwargs)
        preemptions.append(sum(r.num_preemptions for r in run.requests))
        return digest(run)
    except Exception as exc:  # noqa: BLE001 -- the error is the result to compare
        return f"{type(exc).__name__}: {exc}"


def main() -> None:
    rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    out, preemptions = {}, []
    configs = [(name, {}) for name in SCHEDULERS.names()] + VARIANTS
    for w in range(4):
        rate, n = float(rng.uniform(2, 40)), int(rng.integers(60, 160))
        spec = f"synthetic:n={n},arrival=poisson,rate={rate},prompt=lognormal(4.5,0.8),output=uniform(1,160)"
        plain = parse_synthetic(spec, rng)
        points, intervals = with_predictions(plain, "relative:0.5", rng), with_predictions(plain, "interval-ratio:0.5", rng)
        reqs = [dataclasses.replace(p, predicted_output_interval=i.predicted_output_interval)
                for p, i in zip(points, intervals)]
        capacity, block_size = int(rng.integers(600, 3000)), int(rng.choice([1, 8, 16]))
        for i, (name, options) in enumerate(configs):
            key = f"w{w} {name} {json.dumps(options, sort_keys=True)}"
            out[key] = one(reqs, name, options, preemptions, capacity_tokens=capacity, block_size=block_size,
                           lookahead_tokens=int(i % 3 == 2), prefix_caching=False)
    trace = with_predictions(scale_rate(load_trace("azure-conv", first=600), 4.0), "exact", rng)
    for name, apc in (("vllm", True), ("vllm", False), ("sarathi", False), ("mcsf", False)):
        out[f"azure-conv x4 {name} apc={apc}"] = one(trace, name, {}, preemptions, capacity_tokens=20_000, block_size=16,
                                                     prefix_caching=apc)
    modules = {m: sys.modules[m].__file__ for m in kvsched.compiled.status()["compiled_modules"] if m in sys.modules}
    json.dump({"modules": modules, "runs": out, "num_preemptions": sum(preemptions)}, sys.stdout)


if __name__ == "__main__":
    main()
