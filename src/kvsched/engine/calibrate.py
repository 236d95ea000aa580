"""Calibration and fidelity: fit the simulator's cost model to the real engine, then check it.

* `profile_steps` times `Llama.forward_step` over a grid of batch shapes (prefill
  chunks, decode batches at several KV lengths, mixed steps) on a scratch paged cache;
  block contents do not change the work, so the cache is not filled first.
* `calibrate` fits `AffinePrefillCost` (d0 + d1·KV + d2·prefill tokens + d3·seqs +
  d4·prefill attention) to those timings by non-negative least squares (`fit_affine`).
* `validate` serves one workload with one scheduler twice, on the engine and in the
  simulator with the fitted model, and reports the relative errors of mean and p90 TTFT
  and end-to-end latency.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kvsched.backend import BatchShape
from kvsched.request import Request
from kvsched.sim.cost import FitResult, fit_affine

PREFILL_LENS = (16, 64, 128, 256)
DECODE_BATCHES = (1, 2, 4, 8, 16)
DECODE_KV_LENS = (32, 128, 256)
MIXED = ((64, 4), (128, 8))  # (prefill tokens, decodes) in one step


def _time_step(model, paged, seqs, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits = model.forward_step(seqs, paged)
        torch.argmax(logits, dim=-1).tolist()  # waits for the device, as EngineBackend does
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile_steps(model, *, block_size: int = 16, repeats: int = 3, device: str = "cpu",
                  prefill_lens: Sequence[int] = PREFILL_LENS, decode_batches: Sequence[int] = DECODE_BATCHES,
                  decode_kv_lens: Sequence[int] = DECODE_KV_LENS,
                  mixed: Sequence[tuple[int, int]] = MIXED) -> list[tuple[BatchShape, float]]:
    """(shape, median seconds) for every grid point; one warm-up step first."""
    from kvsched.engine.model import PagedKVCache, SeqInput

    longest = max(max(prefill_lens), max(decode_kv_lens) + 1)
    blocks_per_seq = -(-longest // block_size)
    max_seqs = max(max(decode_batches), max(d for _, d in mixed) + 1)
    dtype = next(model.parameters()).dtype
    paged = PagedKVCache(model.config, blocks_per_seq * max_seqs, block_size, dtype=dtype, device=device)

    def table(i: int) -> list[int]:
        return list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq))

    def tokens(n: int) -> list[int]:
        return [100 + (7 * j) % 1000 for j in range(n)]

    points: list[tuple[BatchShape, float]] = []
    _time_step(model, paged, [SeqInput(tokens(8), 0, table(0))], 1)  # warm-up
    for p in prefill_lens:
        shape = BatchShape(1, p, 0, p, p * p)
        points.append((shape, _time_step(model, paged, [SeqInput(tokens(p), 0, table(0))], repeats)))
    for b in decode_batches:
        for kv in decode_kv_lens:
            seqs = [SeqInput(tokens(1), kv, table(i)) for i in range(b)]
            points.append((BatchShape(b, 0, b, b * (kv + 1), 0), _time_step(model, paged, seqs, repeats)))
    for p, d in mixed:
        kv = decode_kv_lens[len(decode_kv_lens) // 2]
        seqs = [SeqInput(tokens(p), 0, table(0))] + [SeqInput(tokens(1), kv, table(i + 1)) for i in range(d)]
        shape = BatchShape(d + 1, p, d, p + d * (kv + 1), p * p)
        points.append((shape, _time_step(model, paged, seqs, repeats)))
    return points


def calibrate(model, *, block_size: int = 16, repeats: int = 3, device: str = "cpu") -> tuple[FitResult, list]:
    """The fitted cost model and the profiled points it was fitted to."""
    points = profile_steps(model, block_size=block_size, repeats=repeats, device=device)
    return fit_affine([s for s, _ in points], [d for _, d in points], model="affine-prefill"), points


@dataclass(frozen=True)
class Fidelity:
    """Engine vs simulator on one workload and scheduler (relative errors sim/engine - 1)."""

    scheduler: str
    engine: dict
    simulator: dict

    def errors(self) -> dict[str, float]:
        return {k: self.simulator[k] / self.engine[k] - 1.0 for k in self.engine if self.engine[k]}


FIDELITY_KEYS = ("ttft_mean", "ttft_p90", "e2e_mean", "e2e_p90")


def validate(requests: Sequence[Request], scheduler_name: str, cost_model, *, model, capacity_tokens: int,
             block_size: int = 16, options: dict | None = None, device: str = "cpu", seed: int = 0) -> Fidelity:
    """Serve `requests` on the engine and in the simulator with `cost_model`; compare."""
    from kvsched.engine.run import run_engine
    from kvsched.metrics import summarize
    from kvsched.registry import SCHEDULERS
    from kvsched.sim import simulate

    engine_run, _ = run_engine(requests, SCHEDULERS.create(scheduler_name, **(options or {})),
                               capacity_tokens=capacity_tokens, block_size=block_size, model=model, device=device,
                               seed=seed)
    sim_run = simulate(requests, SCHEDULERS.create(scheduler_name, **(options or {})), cost_model,
                       capacity_tokens=capacity_tokens, block_size=block_size)
    e, s = summarize(engine_run), summarize(sim_run)
    keys = (*FIDELITY_KEYS, "num_preemptions", "makespan_s")
    return Fidelity(scheduler_name, {k: e[k] for k in keys}, {k: s[k] for k in keys})
