"""Thin, lazily imported wrappers around the two HiGHS front ends.

`highspy` is preferred: it takes a warm start (`setSolution`), a time limit, relative and
absolute gaps, and reports the dual bound. `scipy.optimize.milp` (also HiGHS) is the
fallback: no warm start. Neither is imported at module import time, so
`kvsched.bounds` works (volume bounds, replay, greedy) without any solver.

Neither may write to standard output, where `--json` commands print their answer:
HiGHS prints a banner from C++ on the first `Highs()` of a process (highspy 1.16),
before any option can be set, so every solve runs with file descriptor 1 pointed at
/dev/null (or at stderr when `verbose`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kvsched.bounds.model import TimeIndexedModel

SolverName = Literal["auto", "highspy", "scipy"]
Outcome = Literal["optimal", "time-limit", "infeasible", "other"]


class SolverUnavailable(RuntimeError):
    """Neither highspy nor scipy.optimize.milp can be imported."""


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_solver(preferred: SolverName = "auto") -> str:
    """Resolve `preferred` to an importable backend name, or raise `SolverUnavailable`."""
    if preferred == "highspy" or (preferred == "auto" and _has_module("highspy")):
        if not _has_module("highspy"):
            raise SolverUnavailable("solver 'highspy' requested but the highspy package is not installed")
        return "highspy"
    if preferred in ("scipy", "auto"):
        try:
            from scipy.optimize import milp  # noqa: F401
        except ImportError as exc:
            raise SolverUnavailable(
                "no MIP solver: install highspy (preferred) or scipy>=1.9 for scipy.optimize.milp"
            ) from exc
        return "scipy"
    raise ValueError(f"unknown solver {preferred!r}; use 'auto', 'highspy' or 'scipy'")


def solver_available(preferred: SolverName = "auto") -> bool:
    try:
        available_solver(preferred)
    except SolverUnavailable:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SolveOutcome:
    """What one backend run returned; objective and dual bound include the model offset."""

    solver: str
    outcome: Outcome
    raw_status: str
    x: np.ndarray | None  # a primal solution when one is available
    objective: float | None
    dual_bound: float | None  # proven lower bound (LP: the optimal value)
    solve_time_s: float
    row_dual: np.ndarray | None = None  # LP row duals (highspy, LP solved to optimality)


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def solve_model(
    model: TimeIndexedModel,
    *,
    integral: bool,
    solver: SolverName = "auto",
    time_limit_s: float | None = None,
    mip_rel_gap: float = 0.0,
    mip_abs_gap: float = 0.0,
    threads: int = 1,
    random_seed: int = 0,
    start: np.ndarray | None = None,
    heuristic_effort: float | None = None,
    presolve: bool = True,
    verbose: bool = False,
) -> SolveOutcome:
    """Solve the model (IP when `integral`, else its LP relaxation) with the chosen backend.

    `heuristic_effort` is HiGHS's `mip_heuristic_effort` (None: HiGHS's default); scipy's
    milp does not expose it.
    """
    name = available_solver(solver)
    with native_stdout_to_stderr(quiet=not verbose):
        if name == "highspy":
            return _solve_highspy(
                model, integral, time_limit_s, mip_rel_gap, mip_abs_gap, threads, random_seed, start,
                heuristic_effort, presolve, verbose,
            )
        return _solve_scipy(model, integral, time_limit_s, mip_rel_gap, presolve, verbose)


# dup2 on descriptor 1 is process-wide: two solves in threads must not interleave it.
_STDOUT_LOCK = threading.Lock()


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers, where native code's printf output waits when stdout is a pipe."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to load by name (not POSIX)
        pass


@contextlib.contextmanager
def native_stdout_to_stderr(*, quiet: bool = False) -> Iterator[None]:
    """Send what native code writes to file descriptor 1 to stderr (or /dev/null when
    `quiet`) for the duration; Python's own `print` is unaffected once it is restored."""
    with _STDOUT_LOCK:
        sys.stdout.flush()
        _flush_c_stdio()
        saved = os.dup(1)
        try:
            target = os.open(os.devnull, os.O_WRONLY) if quiet else os.dup(2)
            os.dup2(target, 1)
            os.close(target)
            yield
        finally:
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


def _solve_highspy(
    model: TimeIndexedModel,
    integral: bool,
    time_limit_s: float | None,
    mip_rel_gap: float,
    mip_abs_gap: float,
    threads: int,
    random_seed: int,
    start: np.ndarray | None,
    heuristic_effort: float | None,
    presolve: bool,
    verbose: bool,
) -> SolveOutcome:
    import highspy

    h = highspy.Highs()
    h.setOptionValue("output_flag", bool(verbose))
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("random_seed", int(random_seed))
    h.setOptionValue("presolve", "on" if presolve else "off")
    if time_limit_s is not None:
        h.setOptionValue("time_limit", float(time_limit_s))
    if integral:
        h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
        h.setOptionValue("mip_abs_gap", float(mip_abs_gap))
        if heuristic_effort is not None:
            h.setOptionValue("mip_heuristic_effort", float(heuristic_effort))

    lp = highspy.HighsLp()
    lp.num_col_ = model.num_vars
    lp.num_row_ = model.num_rows
    lp.col_cost_ = model.cost
    lp.offset_ = model.offset
    lp.col_lower_ = model.col_lower
    lp.col_upper_ = model.col_upper
    lp.row_lower_ = model.row_lower
    lp.row_upper_ = model.row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_ = model.num_vars
    lp.a_matrix_.num_row_ = model.num_rows
    lp.a_matrix_.start_ = model.a_start
    lp.a_matrix_.index_ = model.a_index
    lp.a_matrix_.value_ = model.a_value
    if integral:
        n_int = model.num_vars if model.integer_vars is None else model.integer_vars
        lp.integrality_ = [highspy.HighsVarType.kInteger] * n_int + [highspy.HighsVarType.kContinuous] * (
            model.num_vars - n_int
        )
    status = h.passModel(lp)
    if status == highspy.HighsStatus.kError:
        raise RuntimeError("highspy rejected the model (passModel returned kError)")
    if integral and start is not None:
        sol = highspy.HighsSolution()
        sol.col_value = np.asarray(start, dtype=np.float64)
        sol.value_valid = True
        h.setSolution(sol)

    t0 = time.perf_counter()
    h.run()
    elapsed = time.perf_counter() - t0
    ms = h.getModelStatus()
    info = h.getInfo()
    if ms == highspy.HighsModelStatus.kOptimal:
        outcome: Outcome = "optimal"
    elif ms == highspy.HighsModelStatus.kTimeLimit:
        outcome = "time-limit"
    elif ms == highspy.HighsModelStatus.kInfeasible:
        outcome = "infeasible"
    else:
        outcome = "other"
    has_primal = int(info.primal_solution_status) == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value, dtype=np.float64) if has_primal else None
    objective = _finite(info.objective_function_value) if has_primal else None
    row_dual = None
    if integral:
        dual = _finite(info.mip_dual_bound)
    else:
        dual = objective if outcome == "optimal" else None
        if outcome == "optimal" and int(info.dual_solution_status) == 2:
            row_dual = np.asarray(h.getSolution().row_dual, dtype=np.float64)
    return SolveOutcome("highspy", outcome, h.modelStatusToString(ms), x, objective, dual, elapsed, row_dual)


def _integrality(model: TimeIndexedModel) -> np.ndarray:
    out = np.zeros(model.num_vars)
    out[: model.num_vars if model.integer_vars is None else model.integer_vars] = 1
    return out


def _solve_scipy(
    model: TimeIndexedModel,
    integral: bool,
    time_limit_s: float | None,
    mip_rel_gap: float,
    presolve: bool,
    verbose: bool,
) -> SolveOutcome:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csc_matrix

    a = csc_matrix(
        (model.a_value, model.a_index, model.a_start), shape=(model.num_rows, model.num_vars)
    )
    options: dict[str, object] = {"disp": bool(verbose), "presolve": bool(presolve)}
    if time_limit_s is not None:
        options["time_limit"] = float(time_limit_s)
    if integral:
        options["mip_rel_gap"] = float(mip_rel_gap)
    t0 = time.perf_counter()
    res = milp(
        model.cost,
        constraints=LinearConstraint(a, model.row_lower, model.row_upper),
        integrality=_integrality(model) if integral else np.zeros(model.num_vars),
        bounds=Bounds(model.col_lower, model.col_upper),
        options=options,
    )
    elapsed = time.perf_counter() - t0
    outcome: Outcome = {0: "optimal", 1: "time-limit", 2: "infeasible"}.get(int(res.status), "other")  # type: ignore[assignment]
    x = None if res.x is None else np.asarray(res.x, dtype=np.float64)
    objective = None if res.fun is None or x is None else float(res.fun) + model.offset
    dual_raw = getattr(res, "mip_dual_bound", None) if integral else None
    if integral:
        dual = None if _finite(dual_raw) is None else float(dual_raw) + model.offset
    else:
        dual = objective if outcome == "optimal" else None
    return SolveOutcome("scipy", outcome, str(res.message), x, objective, dual, elapsed)
