"""How schedulers learn output lengths: only through an explicit predictor.

A scheduler never reads `Request.output_len` directly. `OraclePredictor` is the
explicit, named exception (clairvoyant policies and upper-bound studies);
`PointPredictor` reads a prediction attached to the request by the workload.
"""

from __future__ import annotations

from typing import Protocol

from kvsched.request import Request


class Predictor(Protocol):
    name: str

    def output_len(self, request: Request) -> int:
        """Predicted total number of output tokens of `request`."""
        ...


class OraclePredictor:
    """Exact output lengths (clairvoyant)."""

    name = "oracle"

    def output_len(self, request: Request) -> int:
        return request.output_len


class PointPredictor:
    """The request's own `predicted_output_len` (set by the workload or a noise model)."""

    name = "predicted"

    def output_len(self, request: Request) -> int:
        if request.predicted_output_len is None:
            raise ValueError(f"request {request.request_id} has no predicted_output_len")
        return request.predicted_output_len


PREDICTORS = {"oracle": OraclePredictor, "predicted": PointPredictor}


def make_predictor(name: str) -> Predictor:
    try:
        return PREDICTORS[name]()
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; known: {', '.join(PREDICTORS)}") from None
