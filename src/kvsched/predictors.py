"""How schedulers learn output lengths: only through predictions.

A scheduler never reads `Request.output_len` directly. Predictions are attached to the
workload by a *prediction model* (`with_predictions`, or `--predictions` on the CLI),
and schedulers read them through a *predictor*:

- `oracle`: the true length (clairvoyant policies and upper-bound studies; the one
  named exception),
- `predicted`: the request's point prediction `predicted_output_len`,
- `interval-high` / `interval-low`: an end of `predicted_output_interval` (A_max plans
  with the upper end, A_min starts from the lower end).

Prediction models (docs/conventions.md#mcsf-noise), each driven by an explicit generator:

| spec                        | prediction                                                    |
|-----------------------------|---------------------------------------------------------------|
| `exact`                     | point = o                                                     |
| `relative:eps=E`            | point = round(o (1 + E U)), U ~ Uniform[-1, 1], >= 1          |
| `overestimate:alpha=A`      | point = max(o, floor(o (1 + (A-1) V))), V ~ Uniform[0, 1]     |
| `interval-ratio:alpha=A`    | u = ceil(o / (A + (1-A) V)), l = max(1, floor(A u))           |
| `interval-common:lo=L,hi=H` | [L, H] for every request (default: the workload's min and max)|

Point models also set the interval (o, o) when exact; interval models leave the point
unset. Clipping a planned length to what fits the memory (`M - s`) is the scheduler's
job, because only it knows the capacity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kvsched.request import Request


class Predictor(Protocol):
    name: str

    def output_len(self, request: Request) -> int:
        """Planned total number of output tokens of `request`."""
        ...


class OraclePredictor:
    """Exact output lengths (clairvoyant)."""

    name = "oracle"

    def output_len(self, request: Request) -> int:
        return request.output_len


class PointPredictor:
    """The request's own `predicted_output_len` (set by a prediction model)."""

    name = "predicted"

    def output_len(self, request: Request) -> int:
        if request.predicted_output_len is None:
            raise ValueError(
                f"request {request.request_id} has no predicted_output_len; attach predictions with "
                f"with_predictions(...) or --predictions (e.g. 'exact', 'relative:eps=0.5')"
            )
        return request.predicted_output_len


class _IntervalEnd:
    name = "interval"
    index = 0

    def output_len(self, request: Request) -> int:
        if request.predicted_output_interval is None:
            raise ValueError(
                f"request {request.request_id} has no predicted_output_interval; attach one with "
                f"with_predictions(requests, 'interval-ratio:alpha=A', rng) or --predictions interval-ratio:alpha=A"
            )
        return request.predicted_output_interval[self.index]


class IntervalHighPredictor(_IntervalEnd):
    """The upper end u of the interval prediction (A_max)."""

    name = "interval-high"
    index = 1


class IntervalLowPredictor(_IntervalEnd):
    """The lower end l of the interval prediction (A_min's starting bound)."""

    name = "interval-low"
    index = 0


PREDICTORS = {
    "oracle": OraclePredictor,
    "predicted": PointPredictor,
    "interval-high": IntervalHighPredictor,
    "interval-low": IntervalLowPredictor,
}


def make_predictor(name: str) -> Predictor:
    try:
        return PREDICTORS[name]()
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; known: {', '.join(PREDICTORS)}") from None


# --- prediction models ----------------------------------------------------------------

@dataclass(frozen=True)
class PredictionModel:
    """Attaches predictions to a workload; `kind` and the fields come from the prediction spec string (`relative:eps=0.5`)."""

    kind: str
    eps: float = 0.0
    alpha: float = 1.0
    lo: int | None = None
    hi: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown prediction model {self.kind!r}; known: {', '.join(_KINDS)}")
        if not 0.0 <= self.eps:
            raise ValueError(f"relative error eps must be >= 0, got {self.eps}")
        if self.kind == "overestimate" and not self.alpha >= 1.0:
            raise ValueError(f"overestimate factor alpha must be >= 1, got {self.alpha}")
        if self.kind == "interval-ratio" and not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"interval ratio alpha = lo/hi must be in (0, 1], got {self.alpha}")
        for name in ("lo", "hi"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"interval-common needs {name} >= 1, got {name}={value}")
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise ValueError(f"interval-common needs lo <= hi, got lo={self.lo}, hi={self.hi}")

    @property
    def spec(self) -> str:
        params = {"relative": f"eps={self.eps:g}", "overestimate": f"alpha={self.alpha:g}",
                  "interval-ratio": f"alpha={self.alpha:g}"}.get(self.kind)
        if self.kind == "interval-common" and (self.lo is not None or self.hi is not None):
            params = ",".join(f"{k}={v}" for k, v in (("lo", self.lo), ("hi", self.hi)) if v is not None)
        return f"{self.kind}:{params}" if params else self.kind

    def apply(self, requests: Sequence[Request], rng: np.random.Generator) -> list[Request]:
        """Copies of `requests` carrying this model's predictions (inputs untouched)."""
        points, intervals = self._predict(requests, rng)
        # One constructor call per request (what copy_fresh + replace built, field for field):
        # this runs once per simulated request before the run starts.
        return [
            Request(r.request_id, r.arrival_time, r.prompt_len, r.output_len, p, iv, r.prefix_block_ids,
                    r.prefix_block_size)
            for r, p, iv in zip(requests, points, intervals)
        ]

    def assign(self, requests: Sequence[Request], rng: np.random.Generator) -> None:
        """Set this model's predictions on `requests` themselves: the same values (and draws)
        as `apply`, for requests that nobody else holds (a freshly built workload), without
        building every request a second time."""
        points, intervals = self._predict(requests, rng)
        for r, p, iv in zip(requests, points, intervals):
            r.predicted_output_len = p
            r.predicted_output_interval = iv

    def _predict(self, requests: Sequence[Request], rng: np.random.Generator) -> tuple[list, list]:
        """(point predictions, interval predictions) of `requests`, None where this model gives none."""
        o = np.array([r.output_len for r in requests], dtype=np.int64)
        n = len(o)
        point = interval = None
        if self.kind == "exact":
            point = o
            interval = (o, o)
        elif self.kind == "relative":
            u = rng.uniform(-1.0, 1.0, n)
            point = np.maximum(1, np.floor(o * (1.0 + self.eps * u) + 0.5).astype(np.int64))
        elif self.kind == "overestimate":
            v = rng.uniform(0.0, 1.0, n)
            point = np.maximum(o, np.floor(o * (1.0 + (self.alpha - 1.0) * v)).astype(np.int64))
        elif self.kind == "interval-ratio":
            v = rng.uniform(0.0, 1.0, n)
            hi = np.ceil(o / (self.alpha + (1.0 - self.alpha) * v)).astype(np.int64)
            # floor(alpha * hi) <= o holds mathematically; guard float round-off anyway.
            lo = np.minimum(o, np.maximum(1, np.floor(self.alpha * hi).astype(np.int64)))
            interval = (lo, np.maximum(hi, o))
        else:  # interval-common
            lo_v = int(o.min()) if self.lo is None and n else self.lo
            hi_v = int(o.max()) if self.hi is None and n else self.hi
            for r in requests:
                if not lo_v <= r.output_len <= hi_v:
                    raise ValueError(
                        f"request {r.request_id}: output_len={r.output_len} is outside the common "
                        f"interval [{lo_v}, {hi_v}] of {self.spec}"
                    )
            interval = (np.full(n, lo_v), np.full(n, hi_v))
        points = [None] * n if point is None else list(map(int, point.tolist()))
        intervals = [None] * n if interval is None else list(zip(map(int, interval[0].tolist()),
                                                               map(int, interval[1].tolist())))
        return points, intervals


_KINDS = ("exact", "relative", "overestimate", "interval-ratio", "interval-common")
_PARAMS = {"exact": (), "relative": ("eps",), "overestimate": ("alpha",), "interval-ratio": ("alpha",),
           "interval-common": ("lo", "hi")}


def parse_predictions(spec: str) -> PredictionModel:
    """`exact`, `relative:eps=0.5` (or `relative:0.5`), `overestimate:alpha=2`,
    `interval-ratio:alpha=0.5`, `interval-common:lo=10,hi=500`."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip()
    if kind not in _KINDS:
        raise ValueError(f"unknown prediction model {kind!r} in {spec!r}; known: {', '.join(_KINDS)}")
    allowed = _PARAMS[kind]
    kwargs: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            if len(allowed) != 1:
                takes = "no parameters" if not allowed else "named parameters (" + ", ".join(
                    f"{a}=..." for a in allowed) + ")"
                raise ValueError(f"{spec!r}: {kind} takes {takes}")
            key, value = allowed[0], part
        key = key.strip()
        if key not in allowed:
            takes = ", ".join(allowed) or "no parameters"
            raise ValueError(f"{spec!r}: {kind} does not take {key!r} (it takes {takes})")
        if key in kwargs:
            raise ValueError(f"{spec!r}: parameter {key!r} given twice")
        try:
            kwargs[key] = int(value) if key in ("lo", "hi") else float(value)
        except ValueError:
            raise ValueError(f"{spec!r}: parameter {key}={value!r} is not a number") from None
        if not math.isfinite(kwargs[key]):
            raise ValueError(f"{spec!r}: parameter {key} must be finite")
    return PredictionModel(kind, **kwargs)


def with_predictions(requests: Sequence[Request], model: PredictionModel | str,
                     rng: np.random.Generator) -> list[Request]:
    """Copies of `requests` with predictions from `model` (a PredictionModel or spec string)."""
    if isinstance(model, str):
        model = parse_predictions(model)
    return model.apply(requests, rng)
