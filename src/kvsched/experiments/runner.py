"""Run many independent tasks on local processes or on Ray, saving each one as it finishes.

A task is a JSON-able dict (a sweep cell, one run of a paper's study). Its id is a hash
of its canonical JSON, so a later call with the same tasks knows which are already done:
an interrupted run resumes where it stopped, and a grid that grew runs only its new cells.
`fn(task)` returns a summary dict, or `(summary, {name: DataFrame})` to keep whole tables
too (a run's requests and steps). A task that raises becomes a failed result carrying the
error and its traceback; the other tasks go on.

Results directory:

    cells/<task_id>/  config.json (the task), summary.json, <name>.parquet
    failed/<task_id>.json  {"task_id", "config", "error", "traceback"}

A finished cell is written into a temporary folder and renamed into place, so a crash or
Ctrl-C never leaves half a cell that a resume would take for done. Only the driver writes
files: workers return their results, so Ray workers on other machines need no shared disk.
Wall times are kept apart (`timing.json`) so the same tasks give byte-identical cells
wherever they ran.

Local worker processes end with the process that started them, even when it is killed
outright (SIGKILL of the leader alone, not its process group): on Linux the kernel
signals them (`prctl(PR_SET_PDEATHSIG)`), elsewhere a watchdog thread in each worker
notices that its parent is gone. Ray manages its own workers.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import traceback as tb
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kvsched.results import json_safe, write_json

TaskFn = Callable[[dict], "dict | tuple[dict, dict[str, pd.DataFrame]]"]
ProgressFn = Callable[[int, int, int], None]  # (done, total, failed)


def task_id(task: dict) -> str:
    """A stable 16-hex-digit id of the task's canonical JSON."""
    text = json.dumps(json_safe(task), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TaskResult:
    task_id: str
    summary: dict | None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    wall_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def execute(fn: TaskFn, task: dict) -> TaskResult:
    """Call `fn(task)` and capture whatever it returns or raises (runs on the worker)."""
    tid = task_id(task)
    t0 = time.perf_counter()
    try:
        out = fn(task)
    except Exception as exc:  # noqa: BLE001 -- a failed cell is data, not a crash of the sweep
        return TaskResult(tid, None, error=f"{type(exc).__name__}: {exc}", traceback=tb.format_exc(),
                          wall_time_s=time.perf_counter() - t0)
    summary, tables = out if isinstance(out, tuple) else (out, {})
    return TaskResult(tid, plain(summary), dict(tables), wall_time_s=time.perf_counter() - t0)


def plain(obj):
    """`obj` as it reads back from JSON (numpy scalars to Python, NaN to None), so a summary
    computed now and one loaded from an earlier run's file are the same value."""
    def scalar(o):
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")

    return json_safe(json.loads(json.dumps(obj, default=scalar)))


def _lost(task: dict, exc: BaseException) -> TaskResult:
    """A task whose worker died (killed, out of memory): failed, with what we know."""
    return TaskResult(task_id(task), None, error=f"worker lost: {type(exc).__name__}: {exc}",
                      traceback="".join(tb.format_exception(exc)))


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0  # the watchdog's period where the kernel cannot signal a parent's death


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def _exit_with_parent(leader_pid: int, start_method: str) -> None:
    """Worker initializer: end this worker when the pool's leader dies, however it dies.

    The worker's parent is the leader (fork, spawn) or the fork server, which exits when
    the leader does (forkserver). On Linux the kernel sends SIGKILL when that parent
    dies; checking the parent right after closes the race with a death before the call.
    Everywhere, a daemon thread polls for the parent (or the leader) being gone: without
    either, a worker blocked on its task queue or inside a long task outlives a killed
    leader forever. (The kernel signals when the *thread* that forked the worker ends;
    `map_unordered` starts and shuts down its pool in one call, so that thread outlives
    the workers.)"""
    parent = leader_pid if start_method != "forkserver" else os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still works
            pass
    if os.getppid() != parent:  # the parent died before the kernel was told to signal
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent or _process_gone(leader_pid):
                os._exit(1)

    threading.Thread(target=watch, name="kvsched-parent-watchdog", daemon=True).start()


class LocalExecutor:
    """`jobs` worker processes (1 = in this process, the easiest to debug)."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def map_unordered(self, fn: TaskFn, tasks: Sequence[dict]) -> Iterator[tuple[int, TaskResult]]:
        if self.jobs == 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                yield i, execute(fn, task)
            return
        context = multiprocessing.get_context()
        pool = ProcessPoolExecutor(max_workers=min(self.jobs, len(tasks)), mp_context=context,
                                   initializer=_exit_with_parent,
                                   initargs=(os.getpid(), context.get_start_method()))
        try:
            pending = {pool.submit(execute, fn, task): i for i, task in enumerate(tasks)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    try:
                        yield i, fut.result()
                    except Exception as exc:  # noqa: BLE001 -- BrokenProcessPool: the worker died
                        yield i, _lost(tasks[i], exc)
        finally:  # Ctrl-C or an early stop: drop what has not started
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Tasks as Ray remote calls: a local Ray instance (`address=None`, `num_cpus` workers)
    or a running cluster (`address="auto"` or "ray://host:10001"). Workers need kvsched
    installed; at most two tasks per CPU are in flight so a million-cell grid does not
    fill the object store."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address, self.num_cpus = address, num_cpus

    def _init(self):
        try:
            import ray
        except ImportError:
            raise ImportError("the Ray executor needs Ray: pip install 'kvsched[ray]'") from None
        if ray.is_initialized():
            return ray, False
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if self.address is None:
            kwargs["num_cpus"] = self.num_cpus
        ray.init(address=self.address, **kwargs)
        return ray, True

    def map_unordered(self, fn: TaskFn, tasks: Sequence[dict]) -> Iterator[tuple[int, TaskResult]]:
        ray, started = self._init()
        try:
            remote = ray.remote(execute)
            fn_ref = ray.put(fn)
            limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
            queue = iter(enumerate(tasks))
            pending: dict = {}
            for i, task in queue:
                pending[remote.remote(fn_ref, task)] = i
                if len(pending) >= limit:
                    break
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except Exception as exc:  # noqa: BLE001 -- a dead Ray worker, a lost object
                    result = _lost(tasks[i], exc)
                for j, task in queue:  # refill to the limit
                    pending[remote.remote(fn_ref, task)] = j
                    break
                yield i, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def make_executor(jobs: int = 1, ray: str | None = None) -> LocalExecutor | RayExecutor:
    """ray=None: local processes; "local": a local Ray instance with `jobs` CPUs; any
    other string: the address of a running Ray cluster."""
    if ray is None:
        return LocalExecutor(jobs)
    return RayExecutor(None, jobs) if ray == "local" else RayExecutor(ray)


class CellStore:
    """The results directory: which tasks are done, and atomic writes of new ones."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.cells, self.failed = self.root / "cells", self.root / "failed"
        self.cells.mkdir(parents=True, exist_ok=True)
        self.failed.mkdir(parents=True, exist_ok=True)
        for stale in self.cells.glob(".tmp-*"):  # left by a run killed mid-write
            shutil.rmtree(stale, ignore_errors=True)

    def is_done(self, tid: str) -> bool:
        return (self.cells / tid / "summary.json").is_file()

    def summary(self, tid: str) -> dict:
        return json.loads((self.cells / tid / "summary.json").read_text())

    def failure(self, tid: str) -> dict | None:
        path = self.failed / f"{tid}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, task: dict, result: TaskResult) -> None:
        if not result.ok:
            write_json(self.failed / f"{result.task_id}.json",
                       {"task_id": result.task_id, "config": task, "error": result.error,
                        "traceback": result.traceback})
            return
        tmp = self.cells / f".tmp-{result.task_id}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            write_json(tmp / "config.json", task)
            for name, frame in result.tables.items():
                frame.to_parquet(tmp / f"{name}.parquet", index=False, compression="zstd")
            write_json(tmp / "timing.json", {"wall_time_s": result.wall_time_s})
            # Last, as its presence means "done"; in the summary's own key order, so a table
            # built from saved cells has the same columns as one built from fresh results.
            (tmp / "summary.json").write_text(json.dumps(json_safe(result.summary), indent=2) + "\n")
            final = self.cells / result.task_id
            if final.exists():  # the same task finished twice (two drivers): keep the first
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:  # Ctrl-C mid-write included: leave no half-written cell behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (self.failed / f"{result.task_id}.json").unlink(missing_ok=True)


@dataclass
class Outcome:
    """Per task, in the order given: its summary (None if failed) and error (None if ok)."""

    task_ids: list[str]
    summaries: list[dict | None]
    errors: list[str | None]
    ran: list[str]  # ids run by this call
    skipped: list[str]  # ids found done on disk

    @property
    def failed(self) -> list[str]:
        return [t for t, e in zip(self.task_ids, self.errors) if e is not None]


def run_tasks(tasks: Sequence[dict], fn: TaskFn, *, out: Path | None = None,
              executor: LocalExecutor | RayExecutor | None = None, progress: ProgressFn | None = None,
              retry_failed: bool = True) -> Outcome:
    """Run every task not already done in `out`; save each result as soon as it arrives.

    retry_failed=False keeps the recorded error of a task that failed in an earlier run
    instead of running it again."""
    ids = [task_id(t) for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("run_tasks: the same task appears twice")
    store = CellStore(out) if out is not None else None
    summaries: list[dict | None] = [None] * len(tasks)
    errors: list[str | None] = [None] * len(tasks)
    skipped, todo = [], []
    for i, tid in enumerate(ids):
        earlier = store.failure(tid) if store and not retry_failed else None
        if store and store.is_done(tid):
            summaries[i] = store.summary(tid)
            skipped.append(tid)
        elif earlier is not None:
            errors[i] = earlier["error"]
            skipped.append(tid)
        else:
            todo.append(i)
    ran: list[str] = []
    num_failed = sum(e is not None for e in errors)
    if progress:
        progress(len(tasks) - len(todo), len(tasks), num_failed)
    for k, result in (executor or LocalExecutor()).map_unordered(fn, [tasks[i] for i in todo]):
        i = todo[k]
        if store:
            store.save(tasks[i], result)
        summaries[i], errors[i] = result.summary, result.error
        num_failed += not result.ok
        ran.append(ids[i])
        if progress:
            progress(len(tasks) - len(todo) + len(ran), len(tasks), num_failed)
    return Outcome(ids, summaries, errors, ran, skipped)
