"""SimBackend: executes a step by asking a cost model how long it takes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsched.backend import BatchShape
from kvsched.request import Request


class SimBackend:
    """Step durations from a cost model (`kvsched.sim.cost`).

    fast_forward: let the loop execute runs of identical decode steps at once when the
    scheduler promises them (Decision.repeat). Off, every step is simulated one by one;
    tests use this to check that both give the same schedule.
    """

    def __init__(self, cost_model, *, fast_forward: bool = True) -> None:
        self.cost_model = cost_model
        self.max_repeat = 1 << 30 if fast_forward else 1
        from kvsched.sim import cost

        # One pure-decode step's duration as a Python float, equal bit for bit to the values
        # `decode_durations` gives (the loop sums a short run with it instead of numpy); only
        # for the stock models whose `decode_time` is that (a subclass may change either).
        stock = type(cost_model) in (cost.UnitCost, cost.AffineCost, cost.AffinePrefillCost, cost.PiecewiseTokenCost)
        own = type(self).decode_durations is SimBackend.decode_durations
        self.decode_time = cost_model.decode_time if stock and own else None

    @property
    def supports_pool(self) -> bool:
        """The decode pool may run members without listing them in `execute`'s batch: this
        `execute` reads only the shape. A subclass that overrides it may read the batch, so
        it gets every request in it."""
        return type(self).execute is SimBackend.execute

    def execute(self, batch: Sequence[tuple[Request, int]], shape: BatchShape) -> float:
        return self.cost_model.step_time(shape)

    def decode_durations(self, shape: BatchShape, num_steps: int) -> np.ndarray:
        return self.cost_model.decode_times_for(shape, num_steps)
