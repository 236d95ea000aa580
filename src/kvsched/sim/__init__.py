"""The iteration-level simulator: cost models and the backend that uses them."""

from kvsched.sim.backend import SimBackend
from kvsched.sim.simulate import simulate, simulate_theory

__all__ = ["SimBackend", "simulate", "simulate_theory"]
