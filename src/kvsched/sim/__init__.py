"""The iteration-level simulator: cost models and the backend that uses them."""

# tables registers the table-driven COST_MODELS presets (llama3.1-8b-*, llama3-8b-a100).
from kvsched.sim import tables as tables
from kvsched.sim.backend import SimBackend
from kvsched.sim.simulate import (
    batch_requests,
    simulate,
    simulate_batch,
    simulate_theory,
)

__all__ = ["SimBackend", "batch_requests", "simulate", "simulate_batch", "simulate_theory"]
