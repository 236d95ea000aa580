"""Pure transforms of request lists: replay faster, subsample, rescale or cap lengths.

Each returns new Request objects (inputs are never mutated; progress counters start
fresh) sorted by arrival time, with ids renumbered 0..n-1 in that order. Predictions
(`predicted_output_len`, `predicted_output_interval`) and prefix identities
(`prefix_block_ids`) are carried over unchanged; ids only cover the prompt they describe, so
a rescaled or clipped prompt shares at most what its ids still cover.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsched.request import Request
from kvsched.traces.validate import TraceError


def _renumbered(reqs: Sequence[Request], arrival_times_s: Sequence[float] | None = None,
                prompt_lens: Sequence[int] | None = None, output_lens: Sequence[int] | None = None) -> list[Request]:
    """Fresh copies with the given fields replaced, stably sorted by arrival, ids 0..n-1."""
    times = [r.arrival_time for r in reqs] if arrival_times_s is None else [float(t) for t in arrival_times_s]
    prompts = [r.prompt_len for r in reqs] if prompt_lens is None else [int(p) for p in prompt_lens]
    outputs = [r.output_len for r in reqs] if output_lens is None else [int(o) for o in output_lens]
    order = sorted(range(len(reqs)), key=times.__getitem__)  # sorted() is stable
    return [
        Request(new_id, times[i], prompts[i], outputs[i], reqs[i].predicted_output_len,
                reqs[i].predicted_output_interval, reqs[i].prefix_block_ids, reqs[i].prefix_block_size)
        for new_id, i in enumerate(order)
    ]


def scale_rate(reqs: Sequence[Request], factor: float) -> list[Request]:
    """Replay at `factor` times the request rate: every arrival time divided by `factor`."""
    if not np.isfinite(factor) or factor <= 0:
        raise TraceError(f"scale_rate: factor must be a finite number > 0, got {factor!r}")
    return _renumbered(reqs, arrival_times_s=[r.arrival_time / factor for r in reqs])


def head(reqs: Sequence[Request], n: int) -> list[Request]:
    """The first `n` requests in arrival order (all of them when fewer exist); times unchanged."""
    if n < 0:
        raise TraceError(f"head: n must be >= 0, got {n}")
    # Only the kept requests are copied (what `_renumbered(_renumbered(reqs)[:n])` gives, without
    # copying the whole trace to keep one request): the stable arrival order, then its first n.
    times = [r.arrival_time for r in reqs]
    order = sorted(range(len(reqs)), key=times.__getitem__)[:n]
    return _renumbered([reqs[i] for i in order])


def sample(reqs: Sequence[Request], n: int, rng: np.random.Generator, *, rebase: bool = True) -> list[Request]:
    """`n` requests drawn without replacement, kept in arrival order.

    With `rebase` (default) times shift so the first kept request arrives at 0.0,
    like a loaded trace; the gaps between kept requests are the original ones.
    """
    if not 0 <= n <= len(reqs):
        raise TraceError(f"sample: n must be in 0..{len(reqs)} (the number of requests), got {n}")
    ordered = _renumbered(reqs)
    kept = [ordered[i] for i in np.sort(rng.choice(len(ordered), size=n, replace=False)).tolist()]
    shift_s = kept[0].arrival_time if (rebase and kept) else 0.0
    return _renumbered(kept, arrival_times_s=[r.arrival_time - shift_s for r in kept])


def scale_lengths(reqs: Sequence[Request], prompt_factor: float = 1.0, output_factor: float = 1.0) -> list[Request]:
    """Multiply lengths, round half to even (numpy rint), clip to >= 1."""
    for name, factor in (("prompt_factor", prompt_factor), ("output_factor", output_factor)):
        if not np.isfinite(factor) or factor <= 0:
            raise TraceError(f"scale_lengths: {name} must be a finite number > 0, got {factor!r}")
    prompts = np.maximum(np.rint(np.array([r.prompt_len for r in reqs], dtype=np.float64) * prompt_factor), 1)
    outputs = np.maximum(np.rint(np.array([r.output_len for r in reqs], dtype=np.float64) * output_factor), 1)
    return _renumbered(reqs, prompt_lens=prompts.astype(np.int64).tolist(),
                       output_lens=outputs.astype(np.int64).tolist())


def clip_lengths(reqs: Sequence[Request], max_prompt_len: int | None = None,
                 max_output_len: int | None = None) -> list[Request]:
    """Cap prompt and/or output lengths (None leaves that length alone)."""
    for name, cap in (("max_prompt_len", max_prompt_len), ("max_output_len", max_output_len)):
        if cap is not None and cap < 1:
            raise TraceError(f"clip_lengths: {name} must be >= 1 or None, got {cap!r}")
    prompts = [r.prompt_len if max_prompt_len is None else min(r.prompt_len, max_prompt_len) for r in reqs]
    outputs = [r.output_len if max_output_len is None else min(r.output_len, max_output_len) for r in reqs]
    return _renumbered(reqs, prompt_lens=prompts, output_lens=outputs)
