"""Workloads for kvsched: real traces, synthetic generators, transforms and statistics.

    from kvsched.traces import load_trace
    reqs = load_trace("azure-conv")                                  # shipped, real arrivals
    reqs = load_trace("sharegpt-8k", rng=np.random.default_rng(0), rate=5.0)   # lengths + Poisson
    reqs = load_trace("synthetic:n=1000,rate=5,prompt=512,output=20", rng=rng)
    reqs = load_trace("my_trace.csv")                                # format from the header

Importing this package registers the shipped traces in `kvsched.registry.TRACES`.
Every problem with a trace file or spec raises `TraceError` (a ValueError). See docs/traces.md.
"""

from kvsched.traces.load import load_trace
from kvsched.traces.loaders import (
    FORMATS,
    TraceFormat,
    TraceTable,
    detect_format,
    load_azure_csv,
    load_csv,
    load_generic_csv,
    load_length_only_csv,
    load_mooncake_csv,
    load_vidur_csv,
    read_table,
)
from kvsched.traces.shipped import SHIPPED_TRACES, ShippedTrace, read_shipped
from kvsched.traces.spec import (
    parse_length,
    parse_synthetic,
    parse_types,
    trace_lengths,
)
from kvsched.traces.stats import trace_stats
from kvsched.traces.synthetic import (
    Empirical,
    Fixed,
    Geometric,
    LengthDist,
    LogNormal,
    RequestType,
    UniformInt,
    arrival_times,
    batch_arrivals,
    gamma_arrivals,
    mixture,
    poisson_arrivals,
    synthetic_workload,
)
from kvsched.traces.transforms import (
    clip_lengths,
    head,
    sample,
    scale_lengths,
    scale_rate,
)
from kvsched.traces.validate import TraceError, requests_from_arrays

__all__ = [
    "FORMATS", "SHIPPED_TRACES", "Empirical", "Fixed", "Geometric", "LengthDist", "LogNormal",
    "RequestType", "ShippedTrace", "TraceError", "TraceFormat", "TraceTable", "UniformInt",
    "arrival_times", "batch_arrivals", "clip_lengths", "detect_format", "gamma_arrivals", "head",
    "load_azure_csv", "load_csv", "load_generic_csv", "load_length_only_csv", "load_mooncake_csv",
    "load_trace", "load_vidur_csv", "mixture", "parse_length", "parse_synthetic", "parse_types",
    "poisson_arrivals", "read_shipped", "read_table", "requests_from_arrays", "sample",
    "scale_lengths", "scale_rate", "synthetic_workload", "trace_lengths", "trace_stats",
]
