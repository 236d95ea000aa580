"""Saving and loading runs as files pandas reads.

A run directory holds:
  requests.parquet  one row per request (metrics.requests_frame)
  steps.parquet     one row per step, or per fast-forwarded run of decode steps
  summary.json      metrics.summarize
  config.json       everything needed to reproduce it (trace, seed, scheduler and its
                    options, cost model, capacity, block size, kvsched version)
The same inputs give byte-identical files: no wall-clock times are written.
`format="csv"` writes .csv tables instead of Parquet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from kvsched.loop import Run
from kvsched.metrics import requests_frame, steps_frame, summarize

if TYPE_CHECKING:  # pandas (and pyarrow) only once a table is written or read
    import pandas as pd

TABLES = ("requests", "steps")


def json_safe(obj):
    """JSON has no NaN: write null so every reader accepts the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=True) + "\n")


def save_run(run: Run, out_dir: str | Path, config: dict, *, format: str = "parquet",
             extra_summary: dict | None = None) -> dict:
    """Write the run's files into `out_dir` (created) and return its summary.

    extra_summary: more headline numbers to store in summary.json (e.g. the bound ratio)."""
    check_format(format)
    reqs = requests_frame(run)
    summary = summarize(run, reqs)
    summary.update(extra_summary or {})
    write_run_dir(out_dir, (("requests", reqs), ("steps", steps_frame(run))), summary, config, format=format)
    return summary


def check_format(format: str) -> None:
    if format not in ("parquet", "csv"):
        raise ValueError(f"format must be 'parquet' or 'csv', got {format!r}")


def write_run_dir(out_dir: str | Path, tables, summary: dict, config: dict, *, format: str = "parquet") -> None:
    """Write `(name, DataFrame)` tables, summary.json and config.json into `out_dir` (created)."""
    check_format(format)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables:
        if format == "parquet":
            df.to_parquet(out / f"{name}.parquet", index=False, compression="zstd")
        else:
            df.to_csv(out / f"{name}.csv", index=False)
    write_json(out / "summary.json", summary)
    write_json(out / "config.json", config)


def load_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    """Read `requests` or `steps` from a run directory, whichever format it has."""
    if name not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {name!r}")
    import pandas as pd

    d = Path(run_dir)
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = d / f"{name}{suffix}"
        if path.exists():
            if suffix == ".csv" and name == "requests":
                df = reader(path, dtype={"reject_reason": str})
                df["reject_reason"] = df["reject_reason"].fillna("")
                return df
            return reader(path)
    raise FileNotFoundError(f"{d}: no {name}.parquet or {name}.csv (is it a kvsched run directory?)")


def load_json(run_dir: str | Path, name: str) -> dict:
    path = Path(run_dir) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (is it a kvsched run directory?)")
    return json.loads(path.read_text())
