"""Plumbing the paper studies share (WAIT, MC-SF, GBA/GSA): tasks through the runner, rows into tables.

`run_study` hands a study's tasks to `runner.run_tasks`, so every study is resumable (each
finished task is saved under `out/cells/` and found again by a later call with the same
`out`) and runs on local processes or on Ray (`executor`, or `jobs` worker processes). A
task that raised makes the study raise once the others are done, naming the error: the
finished tasks stay saved and a re-run retries only the failed ones.

`rows_frame` turns the task summaries into a table. Summaries come back from the runner as
they read back from JSON (NaN as None), so the table fixes its own column order and
restores numeric dtypes: a resumed study gives the same table as a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from kvsched.experiments.runner import (
    LocalExecutor,
    RayExecutor,
    make_executor,
    run_tasks,
)

StudyProgress = Callable[[int, int], None]  # (done, total)
Executor = LocalExecutor | RayExecutor


class StudyError(RuntimeError):
    """Some tasks of a study failed; the others are saved and a re-run retries the failed ones."""


def run_study(tasks: Sequence[dict], fn: Callable[[dict], dict], *, out: Path | None = None,
              executor: Executor | None = None, jobs: int = 1,
              progress: StudyProgress | None = None) -> list[dict]:
    """Every task's summary, in task order (tasks already done in `out` are not run again)."""
    callback = (lambda done, total, _failed: progress(done, total)) if progress else None
    outcome = run_tasks(tasks, fn, out=None if out is None else Path(out),
                        executor=executor or make_executor(jobs), progress=callback)
    errors = [e for e in outcome.errors if e is not None]
    if errors:
        where = f" (recorded under {Path(out) / 'failed'}; re-run to retry them)" if out is not None else ""
        raise StudyError(f"{len(errors)} of {len(tasks)} tasks failed{where}; first error: {errors[0]}")
    return list(outcome.summaries)


def rows_frame(rows: Sequence[dict], first: Sequence[str] = ()) -> pd.DataFrame:
    """A table of `rows`: the `first` columns in that order, then the others alphabetically
    (the same order whatever keys a row happens to carry), object columns that hold only
    numbers and None made numeric again."""
    frame = pd.DataFrame(list(rows))
    lead = [c for c in first if c in frame.columns]
    frame = frame[lead + sorted(c for c in frame.columns if c not in lead)]
    for col in frame.columns:
        values = frame[col].dropna()
        if frame[col].dtype == object and len(values) and all(_is_number(v) for v in values):
            frame[col] = pd.to_numeric(frame[col])
    return frame


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
