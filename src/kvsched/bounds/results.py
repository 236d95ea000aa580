"""Options and result records of the hindsight IP and its LP relaxation (`kvsched.bounds.ip`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from kvsched.bounds.solvers import SolverName

IPStatus = Literal["optimal", "bounded", "no-solution"]


@dataclass(frozen=True, slots=True)
class IPOptions:
    """Everything that shapes the model and the solve (stored in every result)."""

    aggregate: bool = True  # identical (a, s, o) requests share integer columns
    tighten_horizon: bool = True  # valid per-request horizons from the incumbent
    horizon: int | None = None  # heuristic last start epoch for every request (re-checked)
    horizon_margin: int | None = None  # heuristic horizon = incumbent makespan + margin
    cardinality_cuts: bool = False  # at most K requests alive at any epoch
    threshold_cuts: int = 1  # q = 1..this: at most q alive with footprint > M/(q+1)
    chain_cuts: int = 0  # completion-chain families (kvsched.bounds.chain): one tail per epoch
    objective_cut: bool = False  # objective >= the best closed-form bound (LB_vol, chain, waste) as a row
    waste_bound: bool = True  # the growth-waste closed form (kvsched.bounds.waste): a lower bound, and in CP-SAT a row
    formulation: str = "dense"  # "dense": start columns; "sparse": cumulative starts (same LP)
    symmetry_cuts: bool = False  # order identical requests (only without aggregation)
    greedy_incumbent: bool = True  # no incumbent given: use best_greedy_starts
    pass_warm_start: bool = True  # give the incumbent to the solver (else: bounds and horizons only)
    heuristic_effort: float | None = None  # HiGHS mip_heuristic_effort (None: HiGHS default 0.05)
    presolve: bool = True  # solver presolve
    time_limit_s: float | None = 60.0
    mip_rel_gap: float = 0.0
    threads: int = 1
    random_seed: int = 0
    solver: SolverName = "auto"
    verbose: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class IPResult:
    """Outcome of `solve_ip`. `starts[i]` belongs to `inst.request_ids[i]`."""

    status: IPStatus
    objective: int | None  # TEL of the incumbent (upper bound), None without one
    lower_bound: int  # proven lower bound on the optimal TEL
    lower_bound_source: str  # "ip-dual", "cpsat-bound", "volume", "sum-output", "chain", "waste" or "horizon-check"
    upper_bound: int | None
    gap: float | None  # (upper - lower) / upper
    starts: tuple[int, ...] | None
    incumbent_source: str | None  # "solver" or "warm-start"
    horizon: int  # the largest per-request last start epoch used
    horizon_kind: str  # "safe", "tightened" or "heuristic"
    horizon_proven: bool  # False when a heuristic horizon could not be re-checked
    dual_bound: float | None  # raw solver dual bound for the model as built
    solver_status: str
    solve_time_s: float
    solver: str
    num_vars: int
    num_rows: int
    num_nonzeros: int
    row_counts: dict[str, int]
    options: IPOptions
    notes: tuple[str, ...] = field(default=())
    formulation: str = "time-indexed"  # "time-indexed" (HiGHS) or "intervals" (CP-SAT)
    # Who proved `lower_bound`: "highspy"/"scipy" (the MIP's dual bound), "cpsat",
    # "closed-form" (volume/sum-output/chain, recomputed by `certify.check_result`) or "caller".
    lower_bound_solver: str = ""
    # Each part of a combined answer (`hindsight.solve_hindsight(method="best")`).
    parts: tuple[dict[str, object], ...] = field(default=())

    def certificate(self) -> dict[str, object]:
        """Where each end of the interval comes from; `kvsched.bounds.certify` re-checks it."""
        upper_by = self.solver if self.incumbent_source == "solver" else self.incumbent_source
        return {
            "status": self.status,
            "upper_bound": self.upper_bound,
            "upper_bound_from": upper_by,
            "lower_bound": self.lower_bound,
            "lower_bound_source": self.lower_bound_source,
            "lower_bound_solver": self.lower_bound_solver,
            "proved_by": self.lower_bound_solver if self.status == "optimal" else None,
        }

    def to_dict(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("options", "parts")}
        d["starts"] = None if self.starts is None else list(self.starts)
        d["notes"] = list(self.notes)
        d["options"] = self.options.to_dict()
        d["parts"] = [dict(p) for p in self.parts]
        d["certificate"] = self.certificate()
        return d


@dataclass(frozen=True, slots=True)
class LPResult:
    value: float | None  # LP optimum (TEL units), None if the solver did not finish
    ceil_value: int | None  # ceil(value): also a valid bound since TEL is integral
    status: str
    solve_time_s: float
    solver: str
    num_vars: int
    num_rows: int
    num_nonzeros: int
    # Lagrangian certificate of the LP bound: a price per epoch on the memory rows (from
    # the LP's duals) and the bound `kvsched.bounds.certify.lagrangian_bound` recomputes
    # from them alone (valid for any prices >= 0; equal to the LP value up to tolerances).
    memory_prices: tuple[float, ...] = ()  # index t-1 = epoch t
    certified_value: float | None = None
