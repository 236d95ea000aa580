"""One workload from a description: a trace and the transforms every command applies.

`build_workload` is what `kvsched simulate` and a sweep cell both call, so a cell of a
sweep and the same settings on the command line run the same requests. The order of the
transforms is fixed (load, head or sample, rate, lengths, predictions) and every random
choice comes from a generator seeded by `seed`; predictions draw from their own stream
so choosing a prediction model never changes the workload's draws.

`target_rate` (requests per second) is the sweep's rate axis, defined for every kind of
trace: a synthetic spec gets it as its `rate=` key, a length-only trace draws Poisson
arrivals at it, and a trace with real arrival times is replayed faster or slower so that
its mean rate, (n - 1) / (last arrival - first arrival), equals it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsched.request import Request
from kvsched.traces.spec import SYNTHETIC_PREFIX, parse_fields


def mean_rate(reqs: Sequence[Request]) -> float:
    """(n - 1) / span of the arrivals: the rate a trace replays at (NaN for < 2 arrivals)."""
    if len(reqs) < 2:
        return float("nan")
    times = [r.arrival_time for r in reqs]
    span = max(times) - min(times)
    return (len(reqs) - 1) / span if span > 0 else float("inf")


def _with_synthetic_rate(spec: str, rate: float) -> str:
    fields = parse_fields(spec)
    fields["rate"] = repr(float(rate))
    return SYNTHETIC_PREFIX + ",".join(f"{k}={v}" for k, v in fields.items())


def _load(trace: str, rng: np.random.Generator, rate: float | None,
          target_rate: float | None, first: int | None) -> tuple[list[Request], bool]:
    """(requests, whether they still need rescaling to target_rate); `first`: see `load_trace`."""
    from kvsched.traces import TraceError, load_trace

    if target_rate is not None:
        if rate is not None:
            raise ValueError(f"{trace!r}: give either rate={rate} or target_rate={target_rate}, not both")
        if not (np.isfinite(target_rate) and target_rate > 0):
            raise ValueError(f"{trace!r}: target_rate must be a positive number, got {target_rate!r}")
        if trace.startswith(SYNTHETIC_PREFIX):
            return load_trace(_with_synthetic_rate(trace, target_rate), rng=rng, first=first), False
        try:  # a timed trace loads without a rate and is rescaled after the selection
            return load_trace(trace, rng=rng, first=first), True
        except TraceError:  # a length-only trace (refused before any draw): Poisson at the target
            return load_trace(trace, rng=rng, rate=target_rate, first=first), False
    return load_trace(trace, rng=rng, rate=rate, first=first), False


def build_workload(trace: str, *, rate: float | None = None, target_rate: float | None = None,
                   rate_scale: float = 1.0, num_requests: int | None = None, sample: bool = False, seed: int = 0,
                   length_scale: float = 1.0, max_prompt_len: int | None = None, max_output_len: int | None = None,
                   predictions: str = "exact") -> tuple[list[Request], dict]:
    """The requests and a JSON description that rebuilds them.

    Raises ValueError (TraceError) naming the trace and the setting that is wrong."""
    from kvsched.predictors import parse_predictions
    from kvsched.traces import clip_lengths, scale_lengths, scale_rate
    from kvsched.traces import sample as sample_requests

    rng = np.random.default_rng(seed)  # the load's draws, then the sample's
    # The head is taken by the load (`first`), which builds only the requests it keeps.
    reqs, rescale = _load(trace, rng, rate, target_rate, None if sample else num_requests)
    if num_requests is not None and sample:
        reqs = sample_requests(reqs, num_requests, rng)
    if rescale:
        native = mean_rate(reqs)
        if not (np.isfinite(native) and native > 0):
            raise ValueError(f"{trace!r}: target_rate needs at least two distinct arrival times")
        reqs = scale_rate(reqs, target_rate / native)
    if rate_scale != 1.0:
        reqs = scale_rate(reqs, rate_scale)
    if length_scale != 1.0:
        reqs = scale_lengths(reqs, length_scale, length_scale)
    if max_prompt_len is not None or max_output_len is not None:
        reqs = clip_lengths(reqs, max_prompt_len, max_output_len)
    # Every request here is this call's own (load_trace builds new ones, each transform copies):
    # the predictions are set on them rather than on a second copy of the whole workload.
    parse_predictions(predictions).assign(reqs, np.random.default_rng([seed, 1]))
    desc = {
        "trace": trace, "rate": rate, "target_rate": target_rate, "rate_scale": rate_scale,
        "num_requests": num_requests, "sample": sample, "seed": seed, "length_scale": length_scale,
        "max_prompt_len": max_prompt_len, "max_output_len": max_output_len, "predictions": predictions,
    }
    return reqs, desc
