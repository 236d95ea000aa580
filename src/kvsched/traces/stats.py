"""Summary statistics of a workload, comparable with docs/traces.md and the data README.

rate_per_s = num_requests / span_time_s (the data README's definition) and
interarrival_cv = std / mean of the gaps between consecutive arrivals (population
std). Both are NaN when undefined (fewer than 2 requests, or all at one instant).
Percentiles use numpy's default linear interpolation.

prefix_hit_ratio is the infinite-cache hit ratio: requests in arrival order, each finding
the longest run of its full blocks (at most prompt_len - 1 tokens) that an earlier request
holds by prefix identity (`Request.prefix_block_ids`), over all prompt tokens. An infinite
cache never evicts, so it bounds what automatic prefix caching can save on the workload.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kvsched.kvcache import block_key
from kvsched.request import Request

PREFIX_BLOCK_SIZE = 16  # vLLM's default page size: the granularity of trace_stats' hit ratio


def _length_stats(prefix: str, lengths: np.ndarray) -> dict[str, float]:
    return {
        f"{prefix}_mean": float(lengths.mean()),
        f"{prefix}_p50": float(np.percentile(lengths, 50)),
        f"{prefix}_p99": float(np.percentile(lengths, 99)),
        f"{prefix}_max": int(lengths.max()),
    }


def trace_stats(reqs: Sequence[Request]) -> dict[str, float]:
    """Flat dict: counts, time span, rate, inter-arrival CV, length percentiles, token totals."""
    if not reqs:
        raise ValueError("the workload has no requests to describe")
    times_s = np.sort(np.array([r.arrival_time for r in reqs], dtype=np.float64))
    prompt_lens = np.array([r.prompt_len for r in reqs], dtype=np.int64)
    output_lens = np.array([r.output_len for r in reqs], dtype=np.int64)
    span_time_s = float(times_s[-1] - times_s[0])
    gaps_s = np.diff(times_s)
    gap_mean_s = float(gaps_s.mean()) if gaps_s.size else 0.0
    return {
        "num_requests": len(reqs),
        "span_time_s": span_time_s,
        "rate_per_s": len(reqs) / span_time_s if span_time_s > 0 else math.nan,
        "interarrival_cv": float(gaps_s.std()) / gap_mean_s if gap_mean_s > 0 else math.nan,
        **_length_stats("prompt_len", prompt_lens),
        **_length_stats("output_len", output_lens),
        "total_prompt_tokens": int(prompt_lens.sum()),
        "total_output_tokens": int(output_lens.sum()),
        "total_tokens": int(prompt_lens.sum() + output_lens.sum()),
        "prefix_hit_ratio": prefix_hit_ratio(reqs),
    }


def prefix_hit_ratio(reqs: Sequence[Request], block_size: int = PREFIX_BLOCK_SIZE) -> float:
    """Cached prompt tokens / prompt tokens under an infinite prefix cache (module docstring)."""
    seen: set = set()
    hit_tokens = prompt_tokens = 0
    for r in sorted(reqs, key=lambda r: (r.arrival_time, r.request_id)):
        prompt_tokens += r.prompt_len
        ids = r.prefix_block_ids
        if not ids:
            continue  # its own blocks: no other request can hit them
        j, limit = 0, (r.prompt_len - 1) // block_size
        while j < limit and block_key(r, j, block_size) in seen:
            j += 1
        hit_tokens += j * block_size
        covered = min(len(ids) * r.prefix_block_size, r.prompt_len + r.output_len) // block_size
        seen.update(block_key(r, k, block_size) for k in range(j, covered))
    return hit_tokens / prompt_tokens if prompt_tokens else 0.0
