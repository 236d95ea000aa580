"""`load_trace`: one entry point for registered names, synthetic specs and CSV paths.

This is what the CLI calls with the user's `--trace` string:
  - a registered name (`kvsched.registry.TRACES`, e.g. `azure-conv`),
  - `synthetic:n=...,...` (grammar in `kvsched.traces.spec`), or
  - a path to a CSV (plain or .gz) in any accepted format, detected from its header.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from kvsched.registry import TRACES
from kvsched.request import Request
from kvsched.traces import shipped as _shipped  # noqa: F401  (registers the shipped traces)
from kvsched.traces.loaders import load_csv
from kvsched.traces.spec import SYNTHETIC_PREFIX, parse_synthetic
from kvsched.traces.transforms import head
from kvsched.traces.validate import TraceError


def load_trace(name_or_path: str, *, rng: np.random.Generator | None = None,
               rate: float | None = None, first: int | None = None) -> list[Request]:
    """Requests for a registered trace name, a `synthetic:` spec or a CSV path.

    `rng` and `rate` are needed only where arrivals are drawn (length-only traces);
    a synthetic spec carries its own rate, so passing `rate` with one is an error. The
    requests are new on every call (the caller may set their predictions in place).
    `first=N` gives `head(load_trace(...), N)`, the same draws made; shipped traces and CSV
    files build only those N requests.
    """
    if first is not None and (first < 0 or name_or_path.startswith(SYNTHETIC_PREFIX)):
        return head(load_trace(name_or_path, rng=rng, rate=rate), first)  # head's error for N < 0
    if name_or_path.startswith(SYNTHETIC_PREFIX):
        if rate is not None:
            raise TraceError(f"{name_or_path!r}: put the rate inside the synthetic spec (rate=...), not as rate={rate}")
        return parse_synthetic(name_or_path, rng)
    if name_or_path in TRACES:
        if first is None:
            return TRACES.create(name_or_path, rng=rng, rate=rate)
        factory = TRACES.get(name_or_path).factory
        if "first" in inspect.signature(factory).parameters:
            return factory(rng=rng, rate=rate, first=first)
        return head(factory(rng=rng, rate=rate), first)  # a trace registered elsewhere, without `first`
    if Path(name_or_path).is_file():
        return load_csv(name_or_path, rng=rng, rate=rate, first=first)
    raise TraceError(f"unknown trace {name_or_path!r}: not a registered name ({', '.join(TRACES.names())}), "
                     f"not a '{SYNTHETIC_PREFIX}...' spec and not an existing file")
