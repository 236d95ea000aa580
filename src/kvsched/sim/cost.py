"""Cost models: how long one step of the simulator takes, in seconds.

A cost model maps a `BatchShape` to a duration. `decode_times` gives the durations of a
run of consecutive pure-decode steps in a constant number of numpy calls: it is the
simulator's hot path when the loop fast-forwards decodes. Models:

- `UnitCost`: every step takes the same time (the theory papers' unit-time rounds).
- `AffineCost`: d0 + d1 * num_kv_tokens (WAIT paper eq. 1).
- `AffinePrefillCost`: adds prefill-token, per-sequence and prefill-attention terms.
- `PiecewiseTokenCost`: max(floor, base + slope * batched tokens) for the weight-bound /
  compute-bound linear layers, plus the affine terms (the profiled `llama2-7b-*` and
  `llama2-70b-a100-tp2` presets).

`fit_affine` calibrates the affine models from measured steps. Named presets are in
`COST_MODELS`; their derivations are in docs/cost_models.md and `kvsched.sim.profiles`.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from kvsched.backend import BatchShape
from kvsched.registry import COST_MODELS
from kvsched.sim import profiles

_ONE_DECODE = BatchShape(1, 0, 1, 1, 0)  # the smallest non-empty step


class CostModel:
    """Base class. Subclasses are frozen dataclasses whose fields are the config."""

    kind: ClassVar[str] = ""

    def step_time(self, shape: BatchShape) -> float:
        raise NotImplementedError

    def decode_times(self, num_seqs: int, num_kv_tokens: int, num_steps: int) -> np.ndarray:
        """Durations of `num_steps` consecutive pure-decode steps: step i (0-based) has shape
        BatchShape(num_seqs, 0, num_seqs, num_kv_tokens + i * num_seqs, 0)."""
        _check_decode_args(num_seqs, num_kv_tokens, num_steps)
        return np.array(
            [self.step_time(BatchShape(num_seqs, 0, num_seqs, num_kv_tokens + i * num_seqs, 0))
             for i in range(num_steps)],
            dtype=np.float64,
        )

    def decode_times_for(self, shape: BatchShape, num_steps: int) -> np.ndarray:
        """`decode_times` of the run of pure-decode steps that starts with `shape`: step i has
        num_kv_tokens + i * num_seqs KV tokens and, when known, max/min decode KV lengths + i.
        Models that read the decodes' length spread override it."""
        return self.decode_times(shape.num_seqs, shape.num_kv_tokens, num_steps)

    def config(self) -> dict[str, Any]:
        """{"name": kind, **constructor args}; `from_config` rebuilds the model."""
        return {"name": self.kind, **asdict(self)}  # type: ignore[call-overload]

    def _validate(self, nonneg: Sequence[str], finite: Sequence[str] = ()) -> None:
        for name in (*nonneg, *finite):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{type(self).__name__}.{name} must be a finite number, got {value!r}")
            if name in nonneg and value < 0:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))  # ints would make decode_times int
        if not self.step_time(_ONE_DECODE) > 0:
            raise ValueError(f"{type(self).__name__}: a one-token decode step must take > 0 s; "
                             f"make one of {', '.join(nonneg)} positive")


def _check_decode_args(num_seqs: int, num_kv_tokens: int, num_steps: int) -> None:
    for name, value in (("num_seqs", num_seqs), ("num_kv_tokens", num_kv_tokens), ("num_steps", num_steps)):
        if value < 0:
            raise ValueError(f"decode_times: {name} must be >= 0, got {value}")


def _decode_kv(num_seqs: int, num_kv_tokens: int, num_steps: int) -> np.ndarray:
    _check_decode_args(num_seqs, num_kv_tokens, num_steps)
    return num_kv_tokens + num_seqs * np.arange(num_steps, dtype=np.int64)


@dataclass(frozen=True)
class UnitCost(CostModel):
    """Every step takes `step_time_s` (the theory papers' rounds)."""

    kind: ClassVar[str] = "unit"
    step_time_s: float = 1.0

    def __post_init__(self) -> None:
        self._validate(nonneg=("step_time_s",))

    def step_time(self, shape: BatchShape) -> float:
        return float(self.step_time_s)

    def decode_times(self, num_seqs: int, num_kv_tokens: int, num_steps: int) -> np.ndarray:
        _check_decode_args(num_seqs, num_kv_tokens, num_steps)
        return np.full(num_steps, float(self.step_time_s))

    def decode_time(self, num_seqs: int, num_kv_tokens: int) -> float:
        """One `decode_times` value (step with `num_kv_tokens`), bit for bit, without numpy."""
        return float(self.step_time_s)


@dataclass(frozen=True)
class AffineCost(CostModel):
    """d0 + d1 * num_kv_tokens (WAIT paper eq. 1); kv is the KV the batch holds after the step."""

    kind: ClassVar[str] = "affine"
    d0_s: float
    d1_s_per_token: float

    def __post_init__(self) -> None:
        self._validate(nonneg=("d0_s", "d1_s_per_token"))

    def step_time(self, shape: BatchShape) -> float:
        return float(self.d0_s + self.d1_s_per_token * shape.num_kv_tokens)

    def decode_times(self, num_seqs: int, num_kv_tokens: int, num_steps: int) -> np.ndarray:
        kv = _decode_kv(num_seqs, num_kv_tokens, num_steps)
        return self.d0_s + self.d1_s_per_token * kv

    def decode_time(self, num_seqs: int, num_kv_tokens: int) -> float:
        """One `decode_times` value (step with `num_kv_tokens`), bit for bit, without numpy."""
        return self.d0_s + self.d1_s_per_token * num_kv_tokens


@dataclass(frozen=True)
class AffinePrefillCost(CostModel):
    """d0 + d1*kv + d2*prefill tokens + d3*num_seqs + d4*prefill_attn_tokens (seconds).

    kv is the KV the batch holds after the step (the WAIT paper's charge); prefill_attn_tokens
    is sum(new * (computed + new)) over prefill chunks, the quadratic attention work.
    """

    kind: ClassVar[str] = "affine-prefill"
    d0_s: float
    d1_s_per_token: float
    d2_s_per_prefill_token: float = 0.0
    d3_s_per_seq: float = 0.0
    d4_s_per_attn_token: float = 0.0

    def __post_init__(self) -> None:
        self._validate(nonneg=[f.name for f in fields(self)])

    def _terms(self, kv: Any, prefill: Any, seqs: Any, attn: Any) -> Any:
        # One expression for scalars and arrays: decode_times equals step_time bit for bit.
        return (self.d0_s + self.d1_s_per_token * kv + self.d2_s_per_prefill_token * prefill
                + self.d3_s_per_seq * seqs + self.d4_s_per_attn_token * attn)

    def step_time(self, shape: BatchShape) -> float:
        return float(self._terms(shape.num_kv_tokens, shape.num_prefill_tokens, shape.num_seqs,
                                 shape.prefill_attn_tokens))

    def decode_times(self, num_seqs: int, num_kv_tokens: int, num_steps: int) -> np.ndarray:
        kv = _decode_kv(num_seqs, num_kv_tokens, num_steps)
        return np.asarray(self._terms(kv, 0, num_seqs, 0), dtype=np.float64)

    def decode_time(self, num_seqs: int, num_kv_tokens: int) -> float:
        """One `decode_times` value (step with `num_kv_tokens`), bit for bit, without numpy."""
        return self._terms(num_kv_tokens, 0, num_seqs, 0)


@dataclass(frozen=True)
class PiecewiseTokenCost(CostModel):
    """max(linear_floor_s, linear_base_s + linear_s_per_token * batched tokens)
    + d0 + d1*kv + d3*num_seqs + d4*prefill_attn_tokens (seconds).

    The max() term is the token-linear layers: flat while reading the weights dominates
    (small batches), then linear in the batched tokens (prefill and decode tokens alike).
    """

    kind: ClassVar[str] = "piecewise-token"
    linear_floor_s: float
    linear_base_s: float
    linear_s_per_token: float
    d0_s: float = 0.0
    d1_s_per_token: float = 0.0
    d3_s_per_seq: float = 0.0
    d4_s_per_attn_token: float = 0.0

    def __post_init__(self) -> None:
        names = [f.name for f in fields(self)]
        self._validate(nonneg=[n for n in names if n != "linear_base_s"], finite=["linear_base_s"])

    def _linear(self, num_tokens: int) -> float:
        return max(self.linear_floor_s, self.linear_base_s + self.linear_s_per_token * num_tokens)

    def _terms(self, linear: float, kv: Any, seqs: Any, attn: Any) -> Any:
        return (linear + self.d0_s + self.d1_s_per_token * kv + self.d3_s_per_seq * seqs
                + self.d4_s_per_attn_token * attn)

    def step_time(self, shape: BatchShape) -> float:
        # _linear and _terms inlined, the same operations in the same order (so still bit for
        # bit decode_times' values): this runs once per simulated step.
        linear = self.linear_base_s + self.linear_s_per_token * (shape.num_prefill_tokens + shape.num_decode_seqs)
        if not linear > self.linear_floor_s:  # max(floor, linear): floor on ties, as max() gives
            linear = self.linear_floor_s
        return float(linear + self.d0_s + self.d1_s_per_token * shape.num_kv_tokens + self.d3_s_per_seq * shape.num_seqs
                     + self.d4_s_per_attn_token * shape.prefill_attn_tokens)

    def decode_times(self, num_seqs: int, num_kv_tokens: int, num_steps: int) -> np.ndarray:
        kv = _decode_kv(num_seqs, num_kv_tokens, num_steps)
        return np.asarray(self._terms(self._linear(num_seqs), kv, num_seqs, 0), dtype=np.float64)

    def decode_time(self, num_seqs: int, num_kv_tokens: int) -> float:
        """One `decode_times` value (step with `num_kv_tokens`), bit for bit, without numpy."""
        return self._terms(self._linear(num_seqs), num_kv_tokens, num_seqs, 0)


_KINDS: dict[str, type[CostModel]] = {
    cls.kind: cls for cls in (UnitCost, AffineCost, AffinePrefillCost, PiecewiseTokenCost)
}


def register_kind(cls: type[CostModel]) -> type[CostModel]:
    """Let `from_config` rebuild models of `cls` (a class decorator for cost models
    defined outside this module, e.g. the table-driven ones)."""
    _KINDS[cls.kind] = cls
    return cls


def from_config(config: dict[str, Any]) -> CostModel:
    """Rebuild a model from `CostModel.config()`; unknown names or keys raise ValueError."""
    args = dict(config)
    kind = args.pop("name", None)
    if kind not in _KINDS:
        raise ValueError(f"cost model config: name must be one of {sorted(_KINDS)}, got {kind!r}")
    cls = _KINDS[kind]
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"cost model config: unknown keys for {kind!r}: {unknown}")
    return cls(**args)


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class FitResult:
    """`model` fitted by non-negative least squares; r2 = 1 - SSR/SST on the durations."""

    model: AffineCost | AffinePrefillCost
    r2: float
    rmse_s: float
    max_rel_err: float
    num_points: int


_FIT_COLUMNS = {
    "affine": ("d0_s", "d1_s_per_token"),
    "affine-prefill-tokens": ("d0_s", "d1_s_per_token", "d2_s_per_prefill_token"),
    "affine-prefill": ("d0_s", "d1_s_per_token", "d2_s_per_prefill_token", "d3_s_per_seq",
                       "d4_s_per_attn_token"),
}


def _shape_features(shape: BatchShape) -> tuple[float, ...]:
    return (1.0, shape.num_kv_tokens, shape.num_prefill_tokens, shape.num_seqs, shape.prefill_attn_tokens)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a handful of columns: the optimum is the
    unconstrained least-squares solution on its support, so try every support."""
    best_x, best_ssr = np.zeros(a.shape[1]), float(b @ b)
    for size in range(1, a.shape[1] + 1):
        for support in itertools.combinations(range(a.shape[1]), size):
            sol, *_ = np.linalg.lstsq(a[:, support], b, rcond=None)
            if np.any(sol < 0):
                continue
            x = np.zeros(a.shape[1])
            x[list(support)] = sol
            ssr = float(np.sum((a @ x - b) ** 2))
            if ssr < best_ssr - 1e-12 * max(best_ssr, 1e-300):
                best_x, best_ssr = x, ssr
    return best_x


def fit_affine(shapes: Sequence[BatchShape], durations_s: Sequence[float], model: str = "affine") -> FitResult:
    """Calibrate an `AffineCost` (model="affine") or `AffinePrefillCost` ("affine-prefill", or
    "affine-prefill-tokens": d0, d1 and d2 only) from measured steps by non-negative least
    squares. Returns the model with its fit quality."""
    if model not in _FIT_COLUMNS:
        raise ValueError(f"fit_affine: model must be one of {sorted(_FIT_COLUMNS)}, got {model!r}")
    names = _FIT_COLUMNS[model]
    y = np.asarray(durations_s, dtype=np.float64)
    if len(shapes) != len(y):
        raise ValueError(f"fit_affine: {len(shapes)} shapes but {len(y)} durations_s")
    if len(y) < len(names):
        raise ValueError(f"fit_affine: need at least {len(names)} steps for {model!r}, got {len(y)}")
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("fit_affine: durations_s must be finite and > 0")
    x = np.array([_shape_features(s)[: len(names)] for s in shapes], dtype=np.float64)
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0  # an all-zero feature (say, no prefill steps) gets coefficient 0
    coef = _nnls(x / scale, y) / scale
    fitted = AffineCost(*coef) if model == "affine" else AffinePrefillCost(*coef)  # absent terms stay 0
    pred = np.array([fitted.step_time(s) for s in shapes])
    ssr = float(np.sum((pred - y) ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ssr / sst if sst > 0 else (1.0 if ssr == 0 else 0.0)
    return FitResult(fitted, r2, math.sqrt(ssr / len(y)), float(np.max(np.abs(pred - y) / y)), len(y))


def design_coefficients(cost_model: CostModel, prompt_lens: Sequence[int], output_lens: Sequence[int]) -> FitResult:
    """d0 + d1 * KV + d2 * prefill tokens fitted to `cost_model` on the batches a WAIT-family
    scheduler forms for this workload: decodes of 1..512 requests holding the types' KV, with
    0..2048 prefill tokens beside them. The threshold design needs these three numbers
    (docs/conventions.md#wait-cost, #wait-prefill); fitting them to the simulator's own model keeps the design honest
    about prefill compute, which the paper's (d0, d1) leave out."""
    kv_per_seq = sorted({int(p + o / 2) for p, o in zip(prompt_lens, output_lens)})
    shapes = []
    for seqs in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        for kv in kv_per_seq:
            for prefill in (0, 128, 256, 512, 1024, 2048):
                decodes = seqs
                num_seqs = decodes + (1 if prefill else 0)
                shapes.append(BatchShape(num_seqs, prefill, decodes, decodes * kv + prefill, prefill * prefill))
    return fit_affine(shapes, [cost_model.step_time(s) for s in shapes], model="affine-prefill-tokens")


# ---------------------------------------------------------------- presets

WAIT_PAPER_D0_S = 10.6e-3  # WAIT paper (arXiv 2504.11320) Table 2, per iteration (docs/conventions.md#wait-cost)
WAIT_PAPER_D1_S_PER_TOKEN = 4.0e-7  # 4.0e-4 ms per KV token


def wait_paper_d2(saturation_rate_per_s: float = 24.0, prompt_len: int = 512, decode_iters: int = 20) -> float:
    """d2 such that the single-type workload (prompt, decode_iters) saturates at the given
    rate in the fluid model: lambda* = 1 / (d1 * S + d2 * prompt), S = (l'+1)(l + l'/2)."""
    kv_mass = (decode_iters + 1) * (prompt_len + decode_iters / 2)
    d2 = (1.0 / saturation_rate_per_s - WAIT_PAPER_D1_S_PER_TOKEN * kv_mass) / prompt_len
    if d2 < 0:
        raise ValueError(f"saturation_rate_per_s={saturation_rate_per_s} is above the KV-only limit")
    return d2


@COST_MODELS.register("unit", "UnitCost: every step takes step_time_s (default 1 s), the theory papers' rounds")
def unit(step_time_s: float = 1.0) -> UnitCost:
    return UnitCost(step_time_s)


@COST_MODELS.register(
    "wait-paper",
    "AffineCost d0=10.6 ms, d1=4.0e-7 s/KV token: per-iteration values implied by the WAIT paper "
    "(arXiv 2504.11320, Table 2; Llama-2-7B on A100 via Vidur)",
)
def wait_paper() -> AffineCost:
    return AffineCost(WAIT_PAPER_D0_S, WAIT_PAPER_D1_S_PER_TOKEN)


@COST_MODELS.register(
    "wait-paper-prefill",
    "AffinePrefillCost: wait-paper d0, d1 plus d2 per prefill token so that p512d20 saturates at "
    "24 req/s in the fluid model (docs/cost_models.md); d2 = 7.28e-5 s/token",
)
def wait_paper_prefill(saturation_rate_per_s: float = 24.0) -> AffinePrefillCost:
    return AffinePrefillCost(WAIT_PAPER_D0_S, WAIT_PAPER_D1_S_PER_TOKEN, wait_paper_d2(saturation_rate_per_s))


def llama2_7b(device: str, **overrides: float) -> PiecewiseTokenCost:
    """The profiled preset for `device` ("a100" | "h100"); overrides go to
    `profiles.derive_llama2_7b` (bandwidth_efficiency, flops_efficiency, per_seq_s)."""
    return PiecewiseTokenCost(**profiles.derive_llama2_7b(device, **overrides).coefficients)


@COST_MODELS.register(
    "llama2-7b-a100",
    "PiecewiseTokenCost for Llama-2-7B fp16 on one A100-80GB: Vidur-profiled linear ops (TP=1, "
    "hinge fit) + roofline attention (70% of 2.0 TB/s, 50% of 312 TFLOP/s); default for real traces",
)
def llama2_7b_a100(**overrides: float) -> PiecewiseTokenCost:
    return llama2_7b("a100", **overrides)


@COST_MODELS.register(
    "llama2-7b-h100",
    "PiecewiseTokenCost for Llama-2-7B bf16 on one H100-80GB: Vidur-profiled linear ops (TP=1, "
    "hinge fit) + roofline attention (70% of 3.35 TB/s, 50% of 989 TFLOP/s)",
)
def llama2_7b_h100(**overrides: float) -> PiecewiseTokenCost:
    return llama2_7b("h100", **overrides)


@COST_MODELS.register(
    "llama2-70b-a100-tp2",
    "PiecewiseTokenCost for Llama-2-70B fp16 on two A100-80GB, tensor parallelism 2 (the MC-SF "
    "trace study's hardware; calibration input, not the paper's values): Vidur-profiled linear ops "
    "(TP=2, hinge fit) + per-GPU roofline attention (70% of 2.0 TB/s, 50% of 312 TFLOP/s); no all-reduce term",
)
def llama2_70b_a100_tp2(**overrides: float) -> PiecewiseTokenCost:
    """Overrides go to `profiles.derive_llama2_70b_tp2` (bandwidth_efficiency,
    flops_efficiency, per_seq_s)."""
    return PiecewiseTokenCost(**profiles.derive_llama2_70b_tp2(**overrides).coefficients)
