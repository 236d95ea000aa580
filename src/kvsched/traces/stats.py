"""Summary statistics of a workload, comparable with docs/traces.md and the data README.

rate_per_s = num_requests / span_time_s (the data README's definition) and
interarrival_cv = std / mean of the gaps between consecutive arrivals (population
std). Both are NaN when undefined (fewer than 2 requests, or all at one instant).
Percentiles use numpy's default linear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kvsched.request import Request


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
    }
