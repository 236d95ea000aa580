"""Solver calls in a child process, so that a crash in a solver's native code is an error, not the end of the caller.

OR-Tools' CP-SAT once died with a general-protection fault four minutes into a 600 s
paper-size solve (docs/bounds.md, "At the issue's 600 s limit"): the benchmark process went
with it, and so did every result it had not yet written. `IsolatedWorker` runs each call in one
long-lived child process started with `spawn` (so the solvers' import cost is paid once, not
per call), hands back the call's result or re-raises its exception, and turns the child's
death into `SolverCrashed`, naming the signal or exit status. The next call starts a fresh
child.

    with IsolatedWorker() as worker:
        res = worker.call(solve_hindsight, inst, options, method="best")

The function and its arguments travel by pickle, so they must be importable by name
(module-level functions) and picklable, as `multiprocessing` requires.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable
from typing import Any, Self, TypeVar

T = TypeVar("T")

# How long `close` waits for an idle child to leave before killing it.
_CLOSE_WAIT_S = 10.0


class SolverCrashed(RuntimeError):
    """The child process running a solver call died before it answered; `how` says of what
    ("signal SIGSEGV", "exit status 3")."""

    def __init__(self, message: str, how: str = "") -> None:
        super().__init__(message, how)
        self.how = how

    def __str__(self) -> str:
        return str(self.args[0])


def describe_exit(exitcode: int | None) -> str:
    """`-11` -> "signal SIGSEGV"; `3` -> "exit status 3"."""
    if exitcode is None:
        return "no exit status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


def _serve(conn: Any) -> None:
    """The child's loop: run each `(fn, args, kwargs)` it receives, send back the outcome."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args, kwargs = message
        try:
            outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001  (every failure goes back to the caller)
            outcome = ("error", exc)
        try:
            conn.send(outcome)
        except Exception as exc:  # noqa: BLE001  (an unpicklable result or exception)
            what = "result" if outcome[0] == "ok" else f"exception {outcome[1]!r}"
            conn.send(("error", RuntimeError(f"{getattr(fn, '__name__', fn)}: could not send back its {what}: {exc}")))


class IsolatedWorker:
    """One child process that runs solver calls; see the module docstring."""

    def __init__(self) -> None:
        self._process: Any = None
        self._conn: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The current child's process id (None before the first call and after a crash)."""
        return None if self._process is None else self._process.pid

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child,), name="kvsched-solver", daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, parent

    def _forget(self) -> int | None:
        """Reap a dead (or dying) child and return its exit code."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        conn.close()
        process.join(_CLOSE_WAIT_S)
        if process.is_alive():
            process.kill()
            process.join()
        return process.exitcode

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in the child: its result, its exception, or `SolverCrashed`."""
        if self._process is None:
            self._start()
        try:
            self._conn.send((fn, args, kwargs))
            kind, value = self._conn.recv()
        except (EOFError, ConnectionError):  # ConnectionError covers a broken pipe
            how = describe_exit(self._forget())
            name = getattr(fn, "__qualname__", repr(fn))
            raise SolverCrashed(f"{name} died in its child process ({how}); the next call starts a fresh one",
                                how) from None
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Ask the child to leave (killing it if it does not) and wait for it."""
        if self._process is None:
            return
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._forget()
