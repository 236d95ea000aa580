"""The iteration-level simulator: cost models and the backend that uses them."""

from kvsched.sim.backend import SimBackend
from kvsched.sim.simulate import (
    batch_requests,
    simulate,
    simulate_batch,
    simulate_theory,
)

__all__ = ["SimBackend", "batch_requests", "simulate", "simulate_batch", "simulate_theory"]
