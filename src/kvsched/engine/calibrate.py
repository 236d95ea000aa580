"""Calibration and fidelity: fit the simulator's cost model to the real engine, then check it.

* `profile_steps` times `Llama.forward_step` over a grid of batch shapes (prefill
  chunks, decode batches at several KV lengths, mixed steps) on a scratch paged cache;
  block contents do not change the work, so the cache is not filled first.
* `run_steps` records every step of a calibration run of the engine (vLLM scheduler,
  a synthetic workload of its own seed), the batches a scheduler really forms.
* `calibrate` fits `AffinePrefillCost` (d0 + d1·KV + d2·prefill tokens + d3·seqs +
  d4·prefill attention) to both by non-negative least squares (`fit_affine`).
* `validate` serves one workload with one scheduler twice, on the engine and in the
  simulator with the fitted model, and reports the relative errors of mean and p90 TTFT
  and end-to-end latency.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvsched.backend import BatchShape
from kvsched.request import Request
from kvsched.sim.cost import FitResult, fit_affine

PREFILL_LENS = (16, 64, 128, 256)
DECODE_BATCHES = (1, 2, 4, 8, 16)
DECODE_KV_LENS = (32, 128, 256)
MIXED = ((64, 4), (128, 8), (32, 16))  # (prefill tokens, decodes) in one step
MULTI_PREFILL = ((2, 32), (4, 32), (8, 32), (16, 32), (4, 64), (8, 64))  # (sequences, tokens each)
# Below this r² the fitted model explains too little of the measured step times to trust its
# predictions (typically a CPU busy with other work while profiling).
POOR_FIT_R2 = 0.5

# progress(phase, done, total): called as calibration advances (phase "profile" over the grid's
# batch shapes, "run" over the calibration run's requests).
CalibrationProgress = Callable[[str, int, int], None]


def poor_fit_warning(fit: FitResult, threshold: float = POOR_FIT_R2) -> str | None:
    """A one-line warning with the fit's numbers when its r² is below `threshold`, else None."""
    if fit.r2 >= threshold:
        return None
    return (f"poor fit: r2 = {fit.r2:.3f} (below {threshold:g}) over {fit.num_points} steps, "
            f"rmse {1e3 * fit.rmse_s:.2f} ms, max relative error {fit.max_rel_err:.0%}: the cost model "
            "explains little of the measured step times (a busy machine?); rerun on an idle one or with "
            "more --repeats before using it")


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
                  mixed: Sequence[tuple[int, int]] = MIXED,
                  multi_prefill: Sequence[tuple[int, int]] = MULTI_PREFILL,
                  progress: CalibrationProgress | None = None) -> list[tuple[BatchShape, float]]:
    """(shape, median seconds) for every grid point; one warm-up step first; `progress("profile",
    done, total)` after each point."""
    from kvsched.engine.model import PagedKVCache, SeqInput

    longest = max(max(prefill_lens), max(decode_kv_lens) + 1)
    blocks_per_seq = -(-longest // block_size)
    max_seqs = max(max(decode_batches), max(d for _, d in mixed) + 1, max(k for k, _ in multi_prefill))
    dtype = next(model.parameters()).dtype
    paged = PagedKVCache(model.config, blocks_per_seq * max_seqs, block_size, dtype=dtype, device=device)

    def table(i: int) -> list[int]:
        return list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq))

    vocab = model.config.vocab_size

    def tokens(n: int) -> list[int]:  # arbitrary ids: the work does not depend on them
        return [(100 + 7 * j) % vocab for j in range(n)]

    total = len(prefill_lens) + len(decode_batches) * len(decode_kv_lens) + len(multi_prefill) + len(mixed)

    points: list[tuple[BatchShape, float]] = []

    def add(shape: BatchShape, seconds: float) -> None:
        points.append((shape, seconds))
        if progress:
            progress("profile", len(points), total)

    if progress:
        progress("profile", 0, total)
    _time_step(model, paged, [SeqInput(tokens(8), 0, table(0))], 1)  # warm-up
    for p in prefill_lens:
        shape = BatchShape(1, p, 0, p, p * p)
        add(shape, _time_step(model, paged, [SeqInput(tokens(p), 0, table(0))], repeats))
    for b in decode_batches:
        for kv in decode_kv_lens:
            seqs = [SeqInput(tokens(1), kv, table(i)) for i in range(b)]
            add(BatchShape(b, 0, b, b * (kv + 1), 0), _time_step(model, paged, seqs, repeats))
    for k, p in multi_prefill:  # several prompts in one step: per-sequence attention work
        seqs = [SeqInput(tokens(p), 0, table(i)) for i in range(k)]
        add(BatchShape(k, k * p, 0, k * p, k * p * p), _time_step(model, paged, seqs, repeats))
    for p, d in mixed:
        kv = decode_kv_lens[len(decode_kv_lens) // 2]
        seqs = [SeqInput(tokens(p), 0, table(0))] + [SeqInput(tokens(1), kv, table(i + 1)) for i in range(d)]
        shape = BatchShape(d + 1, p, d, p + d * (kv + 1), p * p)
        add(shape, _time_step(model, paged, seqs, repeats))
    return points


CALIBRATION_WORKLOAD = "synthetic:n=48,rate=6,prompt=uniform(16,128),output=uniform(8,48)"


def run_steps(model, *, workload: str = CALIBRATION_WORKLOAD, capacity_tokens: int = 1024, block_size: int = 16,
              device: str = "cpu", seed: int = 12345,
              progress: CalibrationProgress | None = None) -> list[tuple[BatchShape, float]]:
    """(shape, seconds) of every step of a vLLM run of `workload` on the engine: the
    batches a scheduler really forms, timed under the same conditions as a served run;
    `progress("run", finished requests, total)` as it goes."""
    import numpy as np

    from kvsched.engine.run import run_engine
    from kvsched.registry import SCHEDULERS
    from kvsched.traces import parse_synthetic

    reqs = parse_synthetic(workload, np.random.default_rng(seed))
    if progress:
        progress("run", 0, len(reqs))
    _, backend = run_engine(reqs, SCHEDULERS.create("vllm"), capacity_tokens=capacity_tokens,
                            block_size=block_size, model=model, device=device, seed=seed,
                            progress=(lambda now, done: progress("run", done, len(reqs))) if progress else None)
    return list(zip(backend.step_shapes, backend.step_times_s, strict=True))


def calibrate(model, *, block_size: int = 16, repeats: int = 3, device: str = "cpu",
              with_run: bool = True, progress: CalibrationProgress | None = None) -> tuple[FitResult, list]:
    """The fitted cost model and the points it was fitted to: the profiling grid plus,
    with `with_run`, every step of a calibration run (a different seed and workload from
    anything `validate` is asked to check)."""
    points = profile_steps(model, block_size=block_size, repeats=repeats, device=device, progress=progress)
    if with_run:
        points += run_steps(model, block_size=block_size, device=device, progress=progress)
    return fit_affine([s for s, _ in points], [d for _, d in points], model="affine-prefill"), points


@dataclass(frozen=True)
class Fidelity:
    """Engine vs simulator on one workload and scheduler.

    `engine` holds the mean over the engine runs (measured step times vary from run to
    run, and a different step time can change a scheduler's decisions), `engine_runs`
    each run; `errors()` gives simulator / engine mean - 1, `engine_spread()` the
    (max - min) / mean of the engine runs, the noise floor of the comparison."""

    scheduler: str
    engine: dict
    simulator: dict
    engine_runs: tuple[dict, ...] = ()

    def errors(self) -> dict[str, float]:
        return {k: self.simulator[k] / self.engine[k] - 1.0 for k in self.engine if self.engine[k]}

    def engine_spread(self) -> dict[str, float]:
        runs = self.engine_runs or (self.engine,)
        return {k: (max(r[k] for r in runs) - min(r[k] for r in runs)) / self.engine[k]
                for k in self.engine if self.engine[k]}


FIDELITY_KEYS = ("ttft_mean", "ttft_p90", "e2e_mean", "e2e_p90")


def validate(requests: Sequence[Request], scheduler_name: str, cost_model, *, model, capacity_tokens: int,
             block_size: int = 16, options: dict | None = None, device: str = "cpu", seed: int = 0,
             engine_repeats: int = 1) -> Fidelity:
    """Serve `requests` on the engine (`engine_repeats` times) and once in the simulator
    with `cost_model` (deterministic); compare."""
    from kvsched.engine.run import run_engine
    from kvsched.metrics import summarize
    from kvsched.registry import SCHEDULERS
    from kvsched.sim import simulate

    keys = (*FIDELITY_KEYS, "num_preemptions", "makespan_s")
    runs = []
    for _ in range(max(1, engine_repeats)):
        engine_run, _ = run_engine(requests, SCHEDULERS.create(scheduler_name, **(options or {})),
                                   capacity_tokens=capacity_tokens, block_size=block_size, model=model,
                                   device=device, seed=seed)
        e = summarize(engine_run)
        runs.append({k: float(e[k]) for k in keys})
    # The engine's KV cache has no prefix caching: compare like with like.
    sim_run = simulate(requests, SCHEDULERS.create(scheduler_name, **(options or {})), cost_model,
                       capacity_tokens=capacity_tokens, block_size=block_size, prefix_caching=False)
    s = summarize(sim_run)
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    return Fidelity(scheduler_name, mean, {k: float(s[k]) for k in keys}, tuple(runs))
