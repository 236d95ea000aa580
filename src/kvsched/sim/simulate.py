"""`simulate`: one call that wires requests, a scheduler, a cost model and a KV cache.

`simulate_theory` is the papers' model (MC-SF, WAIT, GBA/GSA theory): unit-time rounds,
memory counted in single tokens, and a request holding prompt + j tokens after its j-th
output token, so that total latency equals the papers' objective to the token.

`simulate_batch` is the same model for the offline batch setting of the GBA/GSA paper
(docs/gsa.md): every job (s_i, o_i) arrives at 0, and s_i may be 0. The engine cannot prefill an
empty prompt, so a job is stored as prompt_len = s_i + 1 without a lookahead slot, which
gives the identical ledger (s_i + u in the round that emits token u; docs/gsa.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsched.decision import Scheduler
from kvsched.kvcache import make_kv_cache
from kvsched.loop import ProgressFn, Run, run
from kvsched.request import Request
from kvsched.sim.backend import SimBackend
from kvsched.sim.cost import UnitCost


def simulate(
    requests: Sequence[Request],
    scheduler: Scheduler,
    cost_model,
    *,
    capacity_tokens: int,
    block_size: int = 16,
    fast_forward: bool = True,
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
    lookahead_tokens: int = 0,
    check_oracle: bool = False,
    prefix_caching: bool | None = None,
    decode_pool: bool = True,
) -> Run:
    """Simulate `requests` under `scheduler`; the inputs are not mutated. `check_oracle`:
    a non-clairvoyant scheduler's reads of true output lengths raise (see `loop.run`).
    `prefix_caching`: automatic prefix caching in the KV model; None (default) follows the
    scheduler's `enable_prefix_caching` (on for `vllm`, off for the other schedulers unless asked).
    `decode_pool`: advance decoding requests as a group for schedulers that opt in
    (`kvsched.pool`); False visits every request every step, with the same results (kept
    for tests and benchmarks)."""
    if prefix_caching is None:
        prefix_caching = bool(getattr(scheduler, "enable_prefix_caching", False))
    elif prefix_caching and not hasattr(scheduler, "enable_prefix_caching"):
        # A scheduler that counts the memory a preemption frees from block_counts would
        # over-count blocks shared with other requests: only the vLLM family is ready.
        raise ValueError(f"{type(scheduler).__name__} does not support prefix caching (schedulers with an "
                         "enable_prefix_caching option do: vllm, sjf, srpt, fcfs-static)")
    kv = make_kv_cache(capacity_tokens, block_size, prefix_caching=prefix_caching)
    return run(requests, scheduler, SimBackend(cost_model, fast_forward=fast_forward), kv, progress=progress,
               max_steps=max_steps, lookahead_tokens=lookahead_tokens, check_oracle=check_oracle,
               decode_pool=decode_pool)


def simulate_theory(
    requests: Sequence[Request],
    scheduler: Scheduler,
    *,
    capacity_tokens: int,
    fast_forward: bool = True,
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
) -> Run:
    """The theory papers' model: every round lasts 1, block size 1, one lookahead slot.

    With integer arrivals, a request's latency `finish_time - arrival_time` is the
    papers' `c_i - a_i` and the steps' `kv_used_tokens` is the papers' memory at each
    epoch (the MC-SF paper's model, arXiv 2502.07115; docs/mcsf.md)."""
    return simulate(requests, scheduler, UnitCost(), capacity_tokens=capacity_tokens, block_size=1,
                    fast_forward=fast_forward, progress=progress, max_steps=max_steps, lookahead_tokens=1)


def batch_requests(prompt_lens: Sequence[int], output_lens: Sequence[int]) -> list[Request]:
    """Jobs (s_i >= 0, o_i >= 1), all at time 0, ids 0..n-1, stored as prompt_len = s_i + 1."""
    s = np.asarray(prompt_lens, dtype=np.int64)
    o = np.asarray(output_lens, dtype=np.int64)
    if s.shape != o.shape or s.ndim != 1:
        raise ValueError(f"prompt_lens and output_lens must be equal-length 1-d, got {s.shape} and {o.shape}")
    for name, arr, low in (("prompt_len", s, 0), ("output_len", o, 1)):
        bad = np.flatnonzero(arr < low)
        if bad.size:
            raise ValueError(f"job {int(bad[0])}: {name} must be >= {low}, got {int(arr[bad[0]])}")
    return [Request(i, 0.0, int(si) + 1, int(oi)) for i, (si, oi) in enumerate(zip(s, o, strict=True))]


def simulate_batch(
    prompt_lens: Sequence[int],
    output_lens: Sequence[int],
    scheduler: Scheduler,
    *,
    capacity_tokens: int,
    fast_forward: bool = True,
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
    check_oracle: bool = True,
) -> Run:
    """The offline batch theory model: unit rounds, block size 1, jobs (s_i, o_i) at time 0.

    A request's `finish_time` is the paper's C_i (in rounds); `prompt_len - 1` is s_i.
    Jobs with s_i + o_i > capacity are reported rejected, never silently dropped. The
    oracle is checked by default: every batch run of GSA proves it never read a length."""
    return simulate(batch_requests(prompt_lens, output_lens), scheduler, UnitCost(), capacity_tokens=capacity_tokens,
                    block_size=1, fast_forward=fast_forward, progress=progress, max_steps=max_steps,
                    lookahead_tokens=0, check_oracle=check_oracle)
