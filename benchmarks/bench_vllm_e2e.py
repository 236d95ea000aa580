"""Latency in engine steps of kvsched policies inside real vLLM (CPU) on an Azure-conv sample.

    kvsched model export --output /tmp/smollm2-hf
    python benchmarks/bench_vllm_e2e.py --model /tmp/smollm2-hf        # ~4 min on 2 busy cores
    python benchmarks/bench_vllm_e2e.py --model DIR --schedulers vllm,mcsf,sjf --num-requests 64

Issue 16, item 7 (end-to-end half; the per-step overhead on the fake-KV harness is
benchmarks/bench_vllm.py). Workload: `--num-requests` requests sampled from the Azure LLM
inference trace (conversation, 2023) with `kvsched`'s workload builder, lengths scaled by
`--length-scale` and clipped (SmolLM2-135M on 2 CPU cores), exact output predictions
sent as `extra_args["kvsched"]["predicted_output_len"]`, `ignore_eos` and `max_tokens` =
the trace's output length. All requests arrive before the first step (offline
`vllm.LLM.generate`), and the KV cache is `--num-blocks` blocks of 32 tokens, small enough
that memory binds. Each policy runs in a fresh process (kvsched.vllm.offline) on the
same requests.

Latency of a request = index of the last engine step that scheduled it + 1, read from the
plugin's step log (`KVSCHED_STEP_LOG`). Steps, not seconds: on a shared CPU the wall time
of a step is noise, while the step sequence is deterministic. Printed per policy: engine
steps for the batch, mean / p50 / p90 latency in steps, preemptions, tokens computed
(prompt recomputation after preemption included), wall time (for information only).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def workload(num_requests: int, seed: int, length_scale: float, max_prompt_len: int, max_output_len: int):
    """(prompt token ids, max_tokens) per request: an Azure-conv sample, scaled and clipped.
    Prompt ids are drawn from a fixed range (the content does not matter under ignore_eos)."""
    import numpy as np

    from kvsched.workload import build_workload

    reqs, _ = build_workload("azure-conv", num_requests=num_requests, sample=True, seed=seed,
                             length_scale=length_scale, max_prompt_len=max_prompt_len,
                             max_output_len=max_output_len, predictions="exact")
    rng = np.random.default_rng([seed, 2])
    return [(rng.integers(100, 20000, size=r.prompt_len).tolist(), int(r.output_len)) for r in reqs]


def run_e2e(model_dir: str, schedulers: list[str], *, num_requests: int = 48, seed: int = 0,
            length_scale: float = 0.1, max_prompt_len: int = 160, max_output_len: int = 64, num_blocks: int = 32,
            max_num_seqs: int = 16, workdir: str | None = None) -> dict:
    """One real-vLLM run per scheduler on the same sample; returns the summary rows."""
    from kvsched.vllm.offline import OfflineRequest, run_batch, step_metrics

    sample = workload(num_requests, seed, length_scale, max_prompt_len, max_output_len)
    requests = [OfflineRequest(p, m, m) for p, m in sample]
    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench_vllm_e2e_"))
    rows = {}
    for name in schedulers:
        log = workdir / f"{name}.jsonl"
        start = time.perf_counter()
        run_batch(model_dir, requests, scheduler=name, step_log=log, num_blocks=num_blocks, block_size=32,
                  max_num_seqs=max_num_seqs, max_model_len=max_prompt_len + max_output_len + 32)
        wall = time.perf_counter() - start
        m = step_metrics(log)
        rows[name] = {"steps": m.num_steps, "mean_latency_steps": round(m.mean_latency, 2),
                      "p50_latency_steps": m.quantile(0.5), "p90_latency_steps": m.quantile(0.9),
                      "preemptions": m.num_preemptions, "tokens_computed": sum(m.tokens_scheduled.values()),
                      "wall_s": round(wall, 1)}
    return {"workload": {"trace": "azure-conv", "num_requests": num_requests, "seed": seed,
                         "length_scale": length_scale, "max_prompt_len": max_prompt_len,
                         "max_output_len": max_output_len, "prompt_tokens": sum(len(p) for p, _ in sample),
                         "output_tokens": sum(m for _, m in sample)},
            "engine": {"num_blocks": num_blocks, "block_size": 32, "max_num_seqs": max_num_seqs,
                       "dtype": "float32"},
            "machine": platform.machine(), "python": platform.python_version(), "results": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an HF folder (kvsched model export --output DIR)")
    parser.add_argument("--schedulers", default="vllm,mcsf")
    parser.add_argument("--num-requests", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length-scale", type=float, default=0.1)
    parser.add_argument("--max-prompt-len", type=int, default=160)
    parser.add_argument("--max-output-len", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=32, help="KV blocks of 32 tokens (block 0 is vLLM's null block)")
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--output", type=Path, help="write the summary as JSON here")
    args = parser.parse_args()
    summary = run_e2e(args.model, args.schedulers.split(","), num_requests=args.num_requests, seed=args.seed,
                      length_scale=args.length_scale, max_prompt_len=args.max_prompt_len,
                      max_output_len=args.max_output_len, num_blocks=args.num_blocks, max_num_seqs=args.max_num_seqs)
    w = summary["workload"]
    print(f"azure-conv sample: {w['num_requests']} requests, {w['prompt_tokens']} prompt / {w['output_tokens']} output "
          f"tokens; KV {args.num_blocks} x 32 tokens, max_num_seqs {args.max_num_seqs}")
    print(f"{'scheduler':<10} {'steps':>6} {'mean':>8} {'p50':>5} {'p90':>5} {'preempt':>8} {'tokens':>7} {'wall s':>7}")
    for name, r in summary["results"].items():
        print(f"{name:<10} {r['steps']:>6} {r['mean_latency_steps']:>8.2f} {r['p50_latency_steps']:>5} "
              f"{r['p90_latency_steps']:>5} {r['preemptions']:>8} {r['tokens_computed']:>7} {r['wall_s']:>7.1f}")
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
