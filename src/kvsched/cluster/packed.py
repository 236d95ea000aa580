"""The merged result of a cluster, packed: the replicas' request and step tables side by side.

Each replica's loop returns its finished requests as a `RequestTable` and its steps as a
`StepTable` (typed arrays, no per-request objects). Merging them into lists of `Request`s and
of boxed numbers would undo that: a million requests on 16 replicas would peak at about three
times the memory of the same million on one loop. These views keep the replicas' tables and
read through them: `ConcatRequestTable` is a sequence of requests in replica order (replica 0's
table, then replica 1's, ...), rebuilding an equal `Request` on each access as `RequestTable`
does, and `ConcatStepTable` is the steps mapping with a `replica` column. Both have the same
contents as the object merge (tested).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from kvsched.loop import STEP_COLUMNS
from kvsched.request import Request
from kvsched.request_table import RequestTable


class ConcatRequestTable(Sequence):
    """Requests of several `RequestTable`s, one table after the other, read without copying."""

    def __init__(self, tables: Sequence[RequestTable]) -> None:
        self._tables = list(tables)
        self._starts = list(itertools.accumulate((len(t) for t in self._tables), initial=0))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("request table index out of range")
        k = bisect.bisect_right(self._starts, i) - 1
        return self._tables[k][i - self._starts[k]]

    def __iter__(self) -> Iterator[Request]:
        for table in self._tables:
            yield from table

    def column(self, name: str) -> np.ndarray:
        """`RequestTable.column` over every table, concatenated; `replica` is the index of the
        table a request came from."""
        if name == "replica":
            return np.repeat(np.arange(len(self._tables), dtype=np.int64), [len(t) for t in self._tables])
        cols = [t.column(name) for t in self._tables]
        return np.concatenate(cols) if cols else np.zeros(0)

    @property
    def complete(self) -> bool:
        return all(t.complete for t in self._tables)


class ConcatStepTable(Mapping):
    """Every replica's steps (`loop.STEP_COLUMNS`), replica by replica, plus a `replica`
    column. Reads as a mapping column -> list like `StepTable`; `array(column)` gives numpy."""

    def __init__(self, tables: Sequence[Mapping]) -> None:
        self._tables = list(tables)

    def array(self, column: str) -> np.ndarray:
        if column == "replica":
            sizes = [len(_array(t, "step")) for t in self._tables]
            return np.repeat(np.arange(len(self._tables), dtype=np.int64), sizes)
        if column not in STEP_COLUMNS:
            raise KeyError(column)
        parts = [_array(t, column) for t in self._tables]
        return np.concatenate(parts) if parts else np.zeros(0)

    def __getitem__(self, column: str) -> list:
        return self.array(column).tolist()

    def __iter__(self) -> Iterator[str]:
        return iter((*STEP_COLUMNS, "replica"))

    def __len__(self) -> int:
        return len(STEP_COLUMNS) + 1


def _array(steps: Mapping, column: str) -> np.ndarray:
    if hasattr(steps, "array"):
        return steps.array(column)
    return np.asarray(steps[column])
