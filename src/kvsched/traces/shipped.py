"""The real traces shipped inside the package, registered by name in `TRACES`.

The CSVs live gzip-compressed in `kvsched/traces/data/` and are opened through
`importlib.resources`, so they work from an installed wheel with no network.
Origins, licences and citations: NOTICE at the repository root and docs/traces.md.

Factories take keyword arguments only. Timed traces take `rng=None, rate=None`
(they need neither; a rate is refused, see `loaders.table_to_requests`).
Length-only traces need `rng` and `rate`, and may pick `arrival="gamma", cv=...`.
Both take `first=N` to build only the first N requests in arrival order (`load_trace`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import as_file, files

import numpy as np

from kvsched.registry import TRACES
from kvsched.request import Request
from kvsched.traces.loaders import (
    AZURE,
    LENGTHS,
    MOONCAKE,
    VIDUR,
    TraceFormat,
    TraceTable,
    read_table,
    table_to_requests,
)


@dataclass(frozen=True, slots=True)
class ShippedTrace:
    name: str
    file_name: str  # in kvsched/traces/data/
    fmt: TraceFormat
    num_requests: int
    description: str


SHIPPED_TRACES: tuple[ShippedTrace, ...] = (
    ShippedTrace("azure-conv", "azure_llm_2023_conv.csv.gz", AZURE, 19_366,
                 "Azure LLM inference 2023 chat (Splitwise): real arrivals + lengths, 19,366 requests, 1 h, 5.5 req/s"),
    ShippedTrace("azure-code", "azure_llm_2023_code.csv.gz", AZURE, 8_819,
                 "Azure LLM inference 2023 code: long prompts, short outputs, very bursty, 8,819 requests, 1 h"),
    ShippedTrace("vidur-splitwise-conv", "vidur_splitwise_conv.csv.gz", VIDUR, 19_366,
                 "azure-conv in Vidur's format (same 19,366 requests, times rounded to 1 us)"),
    ShippedTrace("vidur-splitwise-code", "vidur_splitwise_code.csv.gz", VIDUR, 8_819,
                 "azure-code in Vidur's format (same 8,819 requests)"),
    ShippedTrace("arxiv-summarization", "vidur_arxiv_summarization_llama2_tokenizer.csv.gz", LENGTHS, 28_257,
                 "arXiv summarization lengths only (Vidur, Llama-2 tokens, total <= 4096), 28,257 requests; needs rate"),
    ShippedTrace("sharegpt-8k", "sarathi_sharegpt_8k_llama2_tokenizer.csv.gz", LENGTHS, 30_731,
                 "ShareGPT chat lengths only (Sarathi/Vidur default, total <= 8k), 30,731 requests; needs rate"),
    ShippedTrace("mooncake-conv", "mooncake_conversation_trace.csv.gz", MOONCAKE, 12_031,
                 "Mooncake (Kimi) conversation trace: real arrivals, very long prompts, 12,031 requests, 1 h"),
    ShippedTrace("mooncake-synthetic", "mooncake_synthetic_trace.csv.gz", MOONCAKE, 3_993,
                 "Mooncake synthetic trace: real-style arrivals, long prompts, 3,993 requests, 17 min"),
)
_BY_NAME = {t.name: t for t in SHIPPED_TRACES}


def read_shipped(name: str) -> TraceTable:
    """The validated columns of a shipped trace (rows in file order)."""
    trace = _BY_NAME.get(name)
    if trace is None:
        raise KeyError(f"no shipped trace {name!r}; shipped: {', '.join(_BY_NAME)}")
    resource = files("kvsched.traces").joinpath("data", trace.file_name)
    with as_file(resource) as path:  # a real path already, unless installed as a zip
        return read_table(path, trace.fmt, source=f"kvsched/traces/data/{trace.file_name}")


def _timed_factory(name: str) -> Callable[..., list[Request]]:
    def factory(*, rng: np.random.Generator | None = None, rate: float | None = None,
                first: int | None = None) -> list[Request]:
        return table_to_requests(read_shipped(name), rng=rng, rate=rate, first=first)

    return factory


def _length_only_factory(name: str) -> Callable[..., list[Request]]:
    def factory(*, rng: np.random.Generator | None = None, rate: float | None = None,
                arrival: str = "poisson", cv: float | None = None, first: int | None = None) -> list[Request]:
        return table_to_requests(read_shipped(name), rng=rng, rate=rate, arrival=arrival, cv=cv, first=first)

    return factory


for _trace in SHIPPED_TRACES:
    _make = _length_only_factory if _trace.fmt is LENGTHS else _timed_factory
    TRACES.register(_trace.name, _trace.description)(_make(_trace.name))
del _trace, _make
