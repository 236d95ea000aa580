"""Readers for the CSV trace formats, and format detection from a file's header.

Every reader returns requests in arrival order with `request_id` = row index and
times in seconds relative to the first request (first arrival = 0.0). Timed
formats must list rows in non-decreasing time order (a row that goes backwards is
an error, not something to sort away). Length-only files carry no times, so an
arrival process (Poisson by default) is drawn from an explicit rng.

Formats (required columns; other columns are ignored):
  azure     TIMESTAMP (wall clock, 100 ns), ContextTokens, GeneratedTokens
  vidur     arrived_at (s), num_prefill_tokens, num_decode_tokens
  mooncake  timestamp_ms (ms), input_length, output_length   (+ hash_ids: prefix identities,
            space-separated chained ids of 512-token blocks, kept for prefix caching)
  generic   arrival_time (s), prompt_len, output_len
  lengths   num_prefill_tokens, num_decode_tokens            (no time column)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kvsched.request import Request
from kvsched.traces.reading import read_csv, read_simple_csv
from kvsched.traces.synthetic import arrival_times
from kvsched.traces.validate import (
    MAX_LENGTH,
    TraceError,
    check_non_decreasing,
    length_column,
    raise_first_bad,
    requests_from_arrays,
    require_columns,
    time_column,
)

if TYPE_CHECKING:
    import pandas as pd

AZURE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # %f takes up to 9 digits in pandas: 100 ns survives
NS_PER_S = 1_000_000_000
MS_PER_S = 1_000.0
MOONCAKE_HASH_COLUMN = "hash_ids"
MOONCAKE_HASH_BLOCK = 512  # tokens per Mooncake hash id


@dataclass(frozen=True, slots=True)
class TraceFormat:
    name: str
    time_column: str | None  # None: lengths only
    prompt_column: str
    output_column: str
    time_unit: str  # "wallclock", "s", "ms" or "" (no times)

    @property
    def columns(self) -> tuple[str, ...]:
        names = (self.time_column, self.prompt_column, self.output_column)
        return tuple(c for c in names if c is not None)


AZURE = TraceFormat("azure", "TIMESTAMP", "ContextTokens", "GeneratedTokens", "wallclock")
VIDUR = TraceFormat("vidur", "arrived_at", "num_prefill_tokens", "num_decode_tokens", "s")
MOONCAKE = TraceFormat("mooncake", "timestamp_ms", "input_length", "output_length", "ms")
GENERIC = TraceFormat("generic", "arrival_time", "prompt_len", "output_len", "s")
LENGTHS = TraceFormat("lengths", None, "num_prefill_tokens", "num_decode_tokens", "")
FORMATS: tuple[TraceFormat, ...] = (AZURE, VIDUR, MOONCAKE, GENERIC, LENGTHS)


@dataclass(frozen=True, slots=True)
class TraceTable:
    """The validated columns of one file, rows in file order."""

    source: str
    arrival_times_s: np.ndarray | None  # relative to the first row; None for lengths-only files
    prompt_lens: np.ndarray
    output_lens: np.ndarray
    # Prefix identities per row (chained ids of `prefix_block_size`-token blocks), or None.
    prefix_block_ids: list[tuple[int, ...]] | None = None
    prefix_block_size: int = 0

    def __len__(self) -> int:
        return len(self.prompt_lens)


def _accepted_formats() -> str:
    return "; ".join(f"{f.name}: {', '.join(f.columns)}" for f in FORMATS)


def read_header(path: str | Path, source: str | None = None) -> list[str]:
    """Column names of a CSV (plain or .gz); a name given twice is an error, not a silent pick."""
    import pandas as pd

    source = source or str(path)
    try:
        first = read_csv(path, source, header=None, nrows=1, dtype=str, keep_default_na=False,
                         skipinitialspace=True)
    except pd.errors.EmptyDataError:
        formats = _accepted_formats()
        raise TraceError(f"{source}: empty file, expected a CSV header; accepted formats: {formats}") from None
    header = [str(c) for c in (first.iloc[0].tolist() if len(first) else [])]
    seen: dict[str, int] = {}
    for k, name in enumerate(header, start=1):
        if name and name in seen:
            raise TraceError(f"{source}: line 1 (the header) names column {name!r} twice (columns {seen[name]} "
                             f"and {k}); which one holds the data is ambiguous")
        seen.setdefault(name, k)
    return header


def detect_format(header: list[str], source: str) -> TraceFormat:
    """The one format whose required columns the header holds.

    A format whose columns are a subset of another match's (lengths within vidur)
    yields to the richer one, so a Vidur file keeps its times.
    """
    matches = [f for f in FORMATS if set(f.columns) <= set(header)]
    matches = [f for f in matches if not any(set(f.columns) < set(g.columns) for g in matches)]
    if not matches:
        raise TraceError(f"{source}: unknown trace format, header {header}; accepted formats "
                         f"(required columns): {_accepted_formats()}")
    if len(matches) > 1:
        raise TraceError(f"{source}: header {header} matches several formats: {[f.name for f in matches]}")
    return matches[0]


def _read_frame(path: str | Path, fmt: TraceFormat, source: str) -> pd.DataFrame:
    """The file as a DataFrame whose row i is file line i + 2 (after checking its header)."""
    import pandas as pd

    require_columns(source, read_header(path, source), fmt.columns, fmt.name)
    # Timestamps stay text so we parse them ourselves; blank lines stay rows so that
    # pandas' row numbers keep matching file lines (a blank line inside is an error).
    dtypes = {AZURE.time_column: str} if fmt is AZURE else None
    # All columns are read (no usecols) and the first is not an index, so that a row
    # with more fields than the header is an error rather than silently shifted or cut.
    try:
        frame = read_csv(path, source, dtype=dtypes, index_col=False, skip_blank_lines=False,
                         skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise TraceError(f"{source}: no data rows after the header") from None
    # Trailing blank lines (an editor's habit) are not rows.
    filled = np.flatnonzero(frame.notna().any(axis=1).to_numpy())
    frame = frame.iloc[: filled[-1] + 1 if filled.size else 0]
    if frame.empty:
        raise TraceError(f"{source}: no data rows after the header")
    return frame


def _wallclock_times_s(source: str, column: str, values: pd.Series) -> np.ndarray:
    """Seconds since the first row of Azure's wall-clock stamps, exact to 100 ns."""
    import pandas as pd

    missing = values.isna().to_numpy()
    stamps = pd.to_datetime(values, format=AZURE_TIME_FORMAT, errors="coerce")
    unparsed = stamps.isna().to_numpy() & ~missing
    raise_first_bad(source, column, values, [
        (missing, "missing value (empty cell)"),
        (unparsed, "not a timestamp like '2023-11-16 18:15:46.6805900'"),
    ])
    ns = stamps.to_numpy(dtype="datetime64[ns]").view(np.int64)
    check_non_decreasing(source, column, values, ns)
    # Subtract in integer ns before converting: epoch seconds as float64 keep only ~0.2 us.
    return (ns - ns[0]) / NS_PER_S


def read_table(path: str | Path, fmt: TraceFormat, source: str | None = None) -> TraceTable:
    """Read and validate one file in a known format."""
    source = source or str(path)
    simple = read_simple_csv(path)
    table = _simple_table(simple, fmt, source) if simple is not None else None
    return table if table is not None else _read_table_pandas(path, fmt, source)


def read_any(path: str | Path, source: str | None = None) -> TraceTable:
    """Read and validate one file in the format its header names."""
    source = source or str(path)
    simple = read_simple_csv(path)
    if simple is not None:
        table = _simple_table(simple, detect_format(simple[0], source), source)
        if table is not None:
            return table
    return _read_table_pandas(path, detect_format(read_header(path, source), source), source)


# --- the pandas-free reader of simple files -----------------------------------------------
# It accepts only cells whose value pandas' reader provably gives the same, and only files
# that pass every check of the pandas path; on anything else it returns None and the pandas
# path reads the file again and reports the problem (tests/test_traces.py compares both
# readers on every shipped trace).
_LENGTHS_RE = re.compile(r"[0-9]{1,16}(?:\n[0-9]{1,16})*")  # 16 digits: up to 2**53 checked below
# Plain decimals (no sign, no exponent) of at most 17 significant digits (a double's
# round-trip precision): pandas' C parser and numpy both round these correctly, so they agree
# (tests/test_traces.py checks random ones).
_TIMES_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:\n[0-9]+(?:\.[0-9]+)?)*")
_STAMP_RE = re.compile(r"(?:(?:1[6-9]|2[0-2])[0-9]{2}-[01][0-9]-[0-3][0-9] (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                       r"\.[0-9]{1,9}(?:\n|$))+")
_HASH_RE = re.compile(r"(?:[0-9]{1,18}(?: [0-9]{1,18})*)?")


def _simple_lengths(cells: list[str]) -> np.ndarray | None:
    if not _LENGTHS_RE.fullmatch("\n".join(cells)):
        return None
    # Python's int() of each checked cell: the values numpy's string cast gives, ~3x faster.
    lengths = np.fromiter(map(int, cells), dtype=np.int64, count=len(cells))
    return lengths if lengths.min() >= 1 and lengths.max() <= MAX_LENGTH else None


def _simple_times(cells: list[str], unit: str) -> np.ndarray | None:
    if not _TIMES_RE.fullmatch("\n".join(cells)) or max(len(c.replace(".", "").lstrip("0")) for c in cells) > 17:
        return None
    raw = np.array(cells).astype(np.float64)
    if (np.diff(raw) < 0).any():
        return None
    return (raw - raw[0]) / (MS_PER_S if unit == "ms" else 1.0)


def _simple_stamps(cells: list[str]) -> np.ndarray | None:
    if not _STAMP_RE.fullmatch("\n".join(cells)) or min(cells)[:4] < "1678" or max(cells)[:4] > "2261":
        return None
    try:
        ns = np.array(cells, dtype="datetime64[ns]").view(np.int64)
    except ValueError:  # a day or month that does not exist
        return None
    if (np.diff(ns) < 0).any():
        return None
    return (ns - ns[0]) / NS_PER_S


def _simple_hash_ids(cells: list[str], prompt_lens: np.ndarray) -> list[tuple[int, ...]] | None:
    if not all(_HASH_RE.fullmatch(c) for c in cells):
        return None
    if "" in cells and not any(" " in c for c in cells):
        return None  # pandas reads such a column as floats, and the pandas path says what then
    return [tuple(int(t) for t in c.split())[: p // MOONCAKE_HASH_BLOCK]
            for c, p in zip(cells, prompt_lens.tolist())]


def _simple_table(simple: tuple[list[str], list[list[str]]], fmt: TraceFormat, source: str) -> TraceTable | None:
    """The table of a simple file (`reading.read_simple_csv`), or None where the pandas path decides."""
    header, rows = simple
    if not set(fmt.columns) <= set(header):
        return None

    def cells(name: str) -> list[str]:
        k = header.index(name)
        return [row[k] for row in rows]

    prompt_lens = _simple_lengths(cells(fmt.prompt_column))
    output_lens = _simple_lengths(cells(fmt.output_column))
    if prompt_lens is None or output_lens is None:
        return None
    times_s = None
    if fmt.time_unit == "wallclock":
        times_s = _simple_stamps(cells(fmt.time_column))
    elif fmt.time_unit:
        times_s = _simple_times(cells(fmt.time_column), fmt.time_unit)
    if fmt.time_unit and times_s is None:
        return None
    ids = None
    if fmt is MOONCAKE and MOONCAKE_HASH_COLUMN in header:
        ids = _simple_hash_ids(cells(MOONCAKE_HASH_COLUMN), prompt_lens)
        if ids is None:
            return None
    return TraceTable(source, times_s, prompt_lens, output_lens, ids, MOONCAKE_HASH_BLOCK if ids else 0)


# --- the pandas path: any file pandas reads, and every error message -----------------------
def _read_table_pandas(path: str | Path, fmt: TraceFormat, source: str) -> TraceTable:
    frame = _read_frame(path, fmt, source)
    prompt_lens = length_column(source, fmt.prompt_column, frame[fmt.prompt_column])
    output_lens = length_column(source, fmt.output_column, frame[fmt.output_column])
    times_s: np.ndarray | None = None
    if fmt.time_unit == "wallclock":
        times_s = _wallclock_times_s(source, fmt.time_column, frame[fmt.time_column])
    elif fmt.time_unit:
        raw = time_column(source, fmt.time_column, frame[fmt.time_column])
        times_s = (raw - raw[0]) / (MS_PER_S if fmt.time_unit == "ms" else 1.0)
    ids = None
    if fmt is MOONCAKE and MOONCAKE_HASH_COLUMN in frame:
        # A partial last hash block says nothing about the output tokens that fill the rest
        # of it: keep the ids of full 512-token prompt blocks only.
        ids = [h[: p // MOONCAKE_HASH_BLOCK] for h, p in
               zip(_hash_ids(source, frame[MOONCAKE_HASH_COLUMN]), prompt_lens.tolist())]
    return TraceTable(source, times_s, prompt_lens, output_lens, ids, MOONCAKE_HASH_BLOCK if ids else 0)


def _hash_ids(source: str, values: pd.Series) -> list[tuple[int, ...]]:
    """Mooncake's hash_ids cells ("0 1 2", or a JSON-style "[0, 1, 2]") as int tuples."""
    out = []
    for i, cell in enumerate(values.tolist()):
        text = "" if cell is None or (isinstance(cell, float) and np.isnan(cell)) else str(cell)
        try:
            ids = tuple(int(t) for t in text.strip("[] ").replace(",", " ").split())
        except ValueError:
            raise TraceError(f"{source}: line {i + 2}, column {MOONCAKE_HASH_COLUMN}: {text!r} is not "
                             "a list of integer ids") from None
        if any(t < 0 for t in ids):
            raise TraceError(f"{source}: line {i + 2}, column {MOONCAKE_HASH_COLUMN}: ids must be >= 0")
        out.append(ids)
    return out


def table_to_requests(
    table: TraceTable,
    *,
    rng: np.random.Generator | None = None,
    rate: float | None = None,
    arrival: str = "poisson",
    cv: float | None = None,
    first: int | None = None,
) -> list[Request]:
    """Requests from a table: real times if it has them, else drawn from the arrival process.

    A rate for a timed trace is an error rather than silently ignored: replaying a
    real trace faster is `transforms.scale_rate`. With `first`, only the first `first`
    requests in arrival order (`requests_from_arrays`), after the same draws.
    """
    if table.arrival_times_s is not None:
        if rate is not None:
            raise TraceError(f"{table.source}: has real arrival times, so rate={rate} does not apply; "
                             "to replay it faster use --rate-scale (kvsched.traces.scale_rate in Python)")
        return requests_from_arrays(table.arrival_times_s, table.prompt_lens, table.output_lens,
                                    table.prefix_block_ids, table.prefix_block_size, first=first)
    times_s = arrival_times(arrival, len(table), rate=rate, cv=cv, rng=rng, what=table.source)
    return requests_from_arrays(times_s, table.prompt_lens, table.output_lens, first=first)


def load_csv(path: str | Path, *, rng: np.random.Generator | None = None, rate: float | None = None,
             arrival: str = "poisson", cv: float | None = None, first: int | None = None) -> list[Request]:
    """Load a CSV of any accepted format, detected from its header (`first`: see `table_to_requests`)."""
    return table_to_requests(read_any(path), rng=rng, rate=rate, arrival=arrival, cv=cv, first=first)


def load_azure_csv(path: str | Path) -> list[Request]:
    """Azure LLM inference trace 2023 (TIMESTAMP, ContextTokens, GeneratedTokens)."""
    return table_to_requests(read_table(path, AZURE))


def load_vidur_csv(path: str | Path) -> list[Request]:
    """Vidur processed trace (arrived_at [s], num_prefill_tokens, num_decode_tokens)."""
    return table_to_requests(read_table(path, VIDUR))


def load_mooncake_csv(path: str | Path) -> list[Request]:
    """Mooncake trace as CSV (timestamp_ms, input_length, output_length; hash_ids, if present,
    become prefix identities of 512-token blocks)."""
    return table_to_requests(read_table(path, MOONCAKE))


def load_generic_csv(path: str | Path) -> list[Request]:
    """The plain format: arrival_time [s], prompt_len, output_len [tokens]."""
    return table_to_requests(read_table(path, GENERIC))


def load_length_only_csv(path: str | Path, *, rng: np.random.Generator, rate: float | None,
                         arrival: str = "poisson", cv: float | None = None) -> list[Request]:
    """Lengths (num_prefill_tokens, num_decode_tokens) in file order, arrivals drawn from `rng`."""
    return table_to_requests(read_table(path, LENGTHS), rng=rng, rate=rate, arrival=arrival, cv=cv)
