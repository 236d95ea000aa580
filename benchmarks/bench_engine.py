"""The real engine's throughput, and kvsched's continuous batching against static batching.

    python benchmarks/bench_engine.py               # about 3 minutes on a 2-core CPU
    python benchmarks/bench_engine.py --requests 16 --skip-hf

1. Decode throughput of `Llama.forward_step` at several batch sizes (each sequence holds
   `--context` tokens): tokens per second = batch / median step time.
2. One workload, all requests at time 0 (Azure conversation lengths scaled to the small
   model), served two ways with the same KV memory (`--capacity` tokens):
   * kvsched's engine under the `vllm` scheduler: continuous batching on the paged cache;
   * Hugging Face transformers' `generate` on the same GGUF weights with static
     batching: batches of as many requests as fit the same memory when each holds its
     padded prompt plus the batch's longest output, each batch running until its
     longest request is done (greedy, EOS ignored through `min_new_tokens`).
   Throughput counts the output tokens the trace asks for, over wall time. The first
   request's outputs from both are compared token for token (same weights, greedy).
Needs the `engine` extra; part 2 also needs `transformers` and `accelerate`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from kvsched.engine.model import SeqInput
from kvsched.engine.run import run_engine
from kvsched.engine.weights import default_gguf_path, load_model
from kvsched.registry import SCHEDULERS
from kvsched.request import Request
from kvsched.traces import load_trace


def decode_throughput(model, batch_sizes, context_len: int, repeats: int = 5) -> list[tuple[int, float, float]]:
    block_size = 16
    blocks_per_seq = -(-(context_len + 1) // block_size)
    paged = model.new_kv_cache(blocks_per_seq * max(batch_sizes), block_size)
    rows = []
    for b in batch_sizes:
        seqs = [SeqInput([100 + i], context_len, list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)))
                for i in range(b)]
        model.forward_step(seqs, paged)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.forward_step(seqs, paged).argmax(-1).tolist()
            times.append(time.perf_counter() - t0)
        step = statistics.median(times)
        rows.append((b, step, b / step))
    return rows


def workload(n: int, scale: float, max_output: int, seed: int) -> list[Request]:
    reqs = load_trace("azure-conv")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(reqs), n, replace=False)
    return [Request(i, 0.0, max(4, round(reqs[j].prompt_len * scale)), max(2, min(max_output, reqs[j].output_len)))
            for i, j in enumerate(pick)]


def hf_static(reqs: list[Request], prompts: dict[int, list[int]], capacity: int) -> tuple[float, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    path = default_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()
    t0 = time.perf_counter()
    first_output: list[int] = []
    i = 0
    while i < len(reqs):
        # Grow the batch while the padded footprint fits the same KV memory.
        j = i + 1
        while j < len(reqs):
            batch = reqs[i:j + 1]
            if len(batch) * (max(r.prompt_len for r in batch) + max(r.output_len for r in batch)) > capacity:
                break
            j += 1
        batch = reqs[i:j]
        width = max(r.prompt_len for r in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, r in enumerate(batch):  # left padding, as decoder-only batching needs
            ids[k, width - r.prompt_len:] = torch.tensor(prompts[r.request_id])
            mask[k, width - r.prompt_len:] = 1
        new = max(r.output_len for r in batch)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=0)
        if i == 0:
            first_output = out[0, width:width + batch[0].output_len].tolist()
        i = j
    return time.perf_counter() - t0, first_output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--length-scale", type=float, default=0.05, help="prompt lengths x this (fit the small model)")
    p.add_argument("--max-output", type=int, default=48)
    p.add_argument("--capacity", type=int, default=1024, help="KV tokens for both engines")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args()
    console = Console()
    model, _ = load_model(None)

    table = Table(title=f"kvsched engine decode throughput (SmolLM2-135M, context {args.context})")
    for col in ("batch", "step (ms)", "tokens/s"):
        table.add_column(col, justify="right")
    for b, step, tps in decode_throughput(model, (1, 4, 16, 32), args.context):
        table.add_row(str(b), f"{1e3 * step:.1f}", f"{tps:.0f}")
    console.print(table)

    reqs = workload(args.requests, args.length_scale, args.max_output, args.seed)
    useful = sum(r.output_len for r in reqs)
    t0 = time.perf_counter()
    run, backend = run_engine(reqs, SCHEDULERS.create("vllm"), capacity_tokens=args.capacity, model=model)
    ours = time.perf_counter() - t0
    prompts = {r.request_id: backend.prompt_ids(r) for r in reqs}
    table = Table(title=f"{len(reqs)} requests at t=0, {useful} output tokens, {args.capacity} KV tokens")
    for col in ("engine", "wall (s)", "tokens/s", "throughput / kvsched's"):
        table.add_column(col, justify="right")
    table.add_row("kvsched (vllm scheduler, continuous batching)", f"{ours:.1f}", f"{useful / ours:.1f}", "1.00")
    if not args.skip_hf:
        hf, first = hf_static(reqs, prompts, args.capacity)
        table.add_row("transformers generate, static batching", f"{hf:.1f}", f"{useful / hf:.1f}",
                      f"{ours / hf:.2f}")
        same = first == backend.generated_ids(reqs[0].request_id)
        console.print(f"request 0: identical greedy tokens from both engines: {same}")
    console.print(table)
    console.print(f"kvsched preemptions: {sum(r.num_preemptions for r in run.requests)}")


if __name__ == "__main__":
    main()
