"""Metrics: pure functions of a finished run's requests and steps.

Conventions (docs/architecture.md): TTFT from arrival to the end of the step that emits
the first token; end-to-end latency from arrival to the end of the step that emits
the last token; TPOT = (e2e - TTFT) / (output_len - 1) over requests with more than
one output token (vLLM's serving-benchmark definition); throughput counts only
output tokens of completed requests, divided by the makespan (first arrival to the
end of the last step). KV statistics are weighted by step duration (busy time).
Preemptions (recompute, tokens kept) and restarts (kill-and-restart, tokens discarded)
are counted separately; restart waste is reported in tokens and in KV token x steps. Prefix caching: the hit
rate is cached prompt tokens at first admission over prompt tokens (completed requests),
hits on re-admission after preemption are in num_reused_tokens, and the prefill tokens
the steps actually computed in num_prefill_tokens_computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kvsched.loop import Run
from kvsched.request import RequestStatus
from kvsched.request_table import RequestTable

if TYPE_CHECKING:  # summarize needs no pandas (start-up of `kvsched simulate --json`)
    import pandas as pd

PERCENTILES = (50, 90, 99)
# The stability rule of the WAIT experiments' lambda* (and `kvsched capacity-search --criterion
# stable`): the queue does not grow and completions keep up with arrivals.
STABLE_RATIO = 1.5
COMPLETION_TOLERANCE = 0.05


def requests_frame(run: Run) -> pd.DataFrame:
    """One row per request, in request-id order."""
    import pandas as pd

    return pd.DataFrame(_request_columns(run))


def _request_columns(run: Run) -> dict:
    """The columns of `requests_frame`, as numpy arrays (text columns as lists)."""
    if isinstance(run.requests, RequestTable) or hasattr(run.requests, "column"):  # packed (cluster: concatenated)
        return _table_columns(run.requests)
    rows = sorted(run.requests, key=lambda r: r.request_id)
    nan = float("nan")

    def t(x):
        return nan if x is None else x

    df = (
        {
            "request_id": np.array([r.request_id for r in rows], dtype=np.int64),
            "arrival_time": np.array([r.arrival_time for r in rows], dtype=np.float64),
            "prompt_len": np.array([r.prompt_len for r in rows], dtype=np.int64),
            "output_len": np.array([r.output_len for r in rows], dtype=np.int64),
            "status": [r.status.value for r in rows],
            "first_scheduled_time": np.array([t(r.first_scheduled_time) for r in rows], dtype=np.float64),
            "first_token_time": np.array([t(r.first_token_time) for r in rows], dtype=np.float64),
            "finish_time": np.array([t(r.finish_time) for r in rows], dtype=np.float64),
            "num_preemptions": np.array([r.num_preemptions for r in rows], dtype=np.int64),
            "num_restarts": np.array([r.num_restarts for r in rows], dtype=np.int64),
            "num_wasted_tokens": np.array([r.num_wasted_tokens for r in rows], dtype=np.int64),
            "num_discarded_tokens": np.array([r.num_discarded_tokens for r in rows], dtype=np.int64),
            "wasted_kv_area": np.array([r.wasted_kv_area for r in rows], dtype=np.int64),
            # Prefix caching: prompt tokens found cached at the first admission, and tokens
            # found over every admission (re-admissions after preemption included).
            "num_cached_tokens": np.array([r.num_cached_tokens for r in rows], dtype=np.int64),
            "num_reused_tokens": np.array([r.num_reused_tokens for r in rows], dtype=np.int64),
            # Start of the attempt that finished (first_scheduled_time is the first attempt's).
            "final_attempt_time": np.array(
                [t(r.admit_time) if r.finish_time is not None else nan for r in rows], dtype=np.float64),
        }
    )
    df["ttft"] = df["first_token_time"] - df["arrival_time"]
    df["e2e_latency"] = df["finish_time"] - df["arrival_time"]
    decode_steps = np.where(df["output_len"] > 1, df["output_len"] - 1, np.nan)  # float64, NaN for 1 token
    df["tpot"] = (df["finish_time"] - df["first_token_time"]) / decode_steps
    df["reject_reason"] = [r.reject_reason or "" for r in rows]
    return df


def _table_columns(table) -> dict:
    """`_request_columns` read straight from a packed table's arrays (no Request objects):
    the same values, in request id order."""
    order = np.argsort(table.column("request_id"), kind="stable")

    def col(name):
        return table.column(name)[order]

    df = {name: col(name) for name in (
        "request_id", "arrival_time", "prompt_len", "output_len")}
    df["status"] = col("status").tolist()
    for name in ("first_scheduled_time", "first_token_time", "finish_time", "num_preemptions", "num_restarts",
                 "num_wasted_tokens", "num_discarded_tokens", "wasted_kv_area", "num_cached_tokens",
                 "num_reused_tokens"):
        df[name] = col(name)
    finish = df["finish_time"]
    df["final_attempt_time"] = np.where(np.isnan(finish), np.nan, col("admit_time"))
    df["ttft"] = df["first_token_time"] - df["arrival_time"]
    df["e2e_latency"] = df["finish_time"] - df["arrival_time"]
    decode_steps = np.where(df["output_len"] > 1, df["output_len"] - 1, np.nan)
    df["tpot"] = (df["finish_time"] - df["first_token_time"]) / decode_steps
    df["reject_reason"] = col("reject_reason").tolist()
    return df


def steps_frame(run: Run) -> pd.DataFrame:
    import pandas as pd

    steps = run.steps
    return pd.DataFrame({c: steps.array(c) if hasattr(steps, "array") else steps[c] for c in steps})


def percentiles(values: np.ndarray, q=PERCENTILES) -> np.ndarray:
    """`np.percentile(values, q)` of a 1-D float array without NaN, bit for bit: numpy's own
    'linear' steps (its `_get_indexes`, `_get_gamma` and `_lerp`) on a copy partitioned at the
    same points (ties such as 0.0 and -0.0 land where numpy's partition puts them), with the
    points' `np.unique` done in Python: numpy's imports numpy.ma (~8 ms of every `kvsched
    simulate`). tests/test_metrics.py compares the two."""
    n = len(values)
    virtual = (n - 1) * np.true_divide(np.asarray(q), 100)
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1  # the last value (numpy's index -1)
    previous[above] = -1
    following[above] = -1
    previous, following = previous.astype(np.intp), following.astype(np.intp)
    ordered = values.flatten()
    ordered.partition(np.array(sorted({0, -1, *previous.tolist(), *following.tolist()}), dtype=np.intp))
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    a, b = ordered[previous], ordered[following]
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe")
    return out


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {f"{prefix}_mean": float("nan"), **{f"{prefix}_p{p}": float("nan") for p in PERCENTILES}}
    out = {f"{prefix}_mean": float(values.mean())}
    if values.dtype == np.float64 and values.ndim == 1:
        quantiles = percentiles(values)
    else:
        quantiles = np.percentile(values, PERCENTILES)
    for p, v in zip(PERCENTILES, quantiles):
        out[f"{prefix}_p{p}"] = float(v)
    return out


def _sum(values: np.ndarray):
    """A column's sum skipping NaN, as pandas' Series.sum."""
    return np.nansum(values) if values.dtype.kind == "f" else values.sum()


def _total(df: dict, column: str) -> int:
    return int(_sum(df[column])) if column in df else 0  # tables saved before the column existed


def _ratio(df: dict, num: str, den: str) -> float:
    total = int(_sum(df[den]))
    return _total(df, num) / total if total else 0.0


def _step_column(steps, name: str, dtype) -> np.ndarray:
    """A steps column as an array: read straight from a StepTable's typed storage (no list of
    boxed numbers in between), or converted from a mapping of lists."""
    return steps.array(name) if hasattr(steps, "array") else np.asarray(steps[name], dtype=dtype)


def summarize(run: Run, requests: pd.DataFrame | None = None) -> dict:
    """The headline numbers of a run (all JSON-serialisable); numpy only, so that the JSON
    summary of `kvsched simulate` never imports pandas (a given frame is read as arrays)."""
    if requests is None:
        df = {k: np.asarray(v, dtype=object) if isinstance(v, list) else v for k, v in _request_columns(run).items()}
    else:
        df = {str(k): requests[k].to_numpy() for k in requests.columns}
    num_requests = len(df["arrival_time"])
    finished = np.asarray(df["status"] == RequestStatus.FINISHED.value, dtype=bool)
    done = {k: v[finished] for k, v in df.items()}
    steps = run.steps
    durations = _step_column(steps, "duration", np.float64)
    kv_tokens = _step_column(steps, "kv_used_tokens", np.float64)
    kv_blocks = _step_column(steps, "kv_used_blocks", np.int64)
    busy_time = float(durations.sum())
    ends = _step_column(steps, "start_time", np.float64) + durations
    makespan = float(ends.max() - np.nanmin(df["arrival_time"])) if len(ends) else 0.0
    completed_tokens = int(_sum(done["output_len"]))
    summary = {
        "num_requests": num_requests,
        "num_completed": int(finished.sum()),
        "num_rejected": int(np.asarray(df["status"] == RequestStatus.REJECTED.value, dtype=bool).sum()),
        **_stats("ttft", done["ttft"]),
        **_stats("tpot", done["tpot"]),
        **_stats("e2e", done["e2e_latency"]),
        "throughput_tokens_per_s": completed_tokens / makespan if makespan > 0 else float("nan"),
        "throughput_requests_per_s": int(finished.sum()) / makespan if makespan > 0 else float("nan"),
        "num_completed_output_tokens": completed_tokens,
        "num_preemptions": int(_sum(df["num_preemptions"])),
        "num_restarts": int(_sum(df["num_restarts"])),
        "num_preempted_requests": int(((df["num_preemptions"] + df["num_restarts"]) > 0).sum()),
        "num_wasted_tokens": int(_sum(df["num_wasted_tokens"])),
        # Kill-and-restart waste: output tokens generated again, prompts prefilled again
        # and the KV token x steps held by killed attempts.
        "num_discarded_tokens": int(_sum(df["num_discarded_tokens"])),
        "num_recomputed_prompt_tokens": int(_sum(df["num_restarts"] * df["prompt_len"])),
        "wasted_kv_area": int(_sum(df["wasted_kv_area"])),
        # Prefix caching (0 when off): the share of completed requests' prompt tokens found
        # in the cache at their first admission (vLLM's num_cached_tokens / prompt tokens),
        # the tokens reused over all admissions, and the prefill tokens actually computed.
        "prefix_hit_rate": _ratio(done, "num_cached_tokens", "prompt_len"),
        "num_cached_tokens": _total(df, "num_cached_tokens"),
        "num_reused_tokens": _total(df, "num_reused_tokens"),
        "num_prefill_tokens_computed": int(_step_column(steps, "num_prefill_tokens", np.int64).sum()),
        "peak_kv_tokens": int(kv_tokens.max()) if len(kv_tokens) else 0,
        "peak_kv_blocks": int(kv_blocks.max()) if len(kv_blocks) else 0,
        # Python's left-to-right float sum (numpy's pairwise sum would round differently).
        "mean_kv_tokens": (float(sum(_step_column(steps, "kv_token_seconds", np.float64).tolist()) / busy_time)
                           if busy_time > 0 else 0.0),
        "capacity_tokens": int(run.num_blocks * run.block_size),
        "block_size": int(run.block_size),
        "num_steps": int(_step_column(steps, "num_steps", np.int64).sum()),
        "makespan_s": float(makespan),
        "busy_time_s": busy_time,
    }
    return summary


def load_stats(run: Run) -> dict:
    """Offered and completion rates of a run and its stability ratio: the mean latency of the
    last quarter of arrivals over the second quarter's, about 1 when the queue is stable and
    growing with the run's length when it is not (NaN with fewer than 4 completions)."""
    reqs = run.requests
    arrivals = [r.arrival_time for r in reqs]
    span = max(arrivals) - min(arrivals) if reqs else 0.0
    done = sorted((r for r in reqs if r.status is RequestStatus.FINISHED), key=lambda r: r.arrival_time)
    lat = np.array([r.finish_time - r.arrival_time for r in done])
    q = len(lat) // 4
    makespan = max((r.finish_time for r in done), default=0.0) - min(arrivals, default=0.0)
    return {
        "offered_rate_per_s": (len(reqs) - 1) / span if span > 0 else float("nan"),
        "completion_rate_per_s": len(done) / makespan if makespan > 0 else float("nan"),
        "stability_ratio": float(lat[-q:].mean() / lat[q:2 * q].mean()) if q else float("nan"),
    }
