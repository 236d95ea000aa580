"""The interface between the loop and what executes a step (simulator or engine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kvsched.request import Request


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What a cost model needs to know about one step.

    num_seqs:            requests computing tokens in the step.
    num_prefill_tokens:  new tokens of requests that are not plain one-token decodes
                         (prefill chunks and recompute after preemption).
    num_decode_seqs:     requests doing a one-token decode.
    num_kv_tokens:       KV tokens the batch holds after the step (sum over the batch
                         of computed + new): the WAIT paper's per-iteration charge.
    prefill_attn_tokens: sum over prefill requests of new * (computed + new), the
                         quadratic attention work of prefill chunks.
    max_decode_kv_len, min_decode_kv_len: the longest and shortest cached KV (tokens
                         before the step) among the one-token decodes; 0 when unknown or
                         no decode. Cost models that correct for mixed decode lengths read
                         them (`kvsched.sim.tables`, LLMServingSim's skew fit); the rest ignore them.
    """

    num_seqs: int
    num_prefill_tokens: int
    num_decode_seqs: int
    num_kv_tokens: int
    prefill_attn_tokens: int = 0
    max_decode_kv_len: int = 0
    min_decode_kv_len: int = 0

    @property
    def num_batched_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs


@dataclass(frozen=True, slots=True)
class StepResult:
    """Durations of the executed steps in seconds (one entry per step)."""

    durations: Sequence[float]


class Backend(Protocol):
    """Executes steps. `max_repeat` > 1 lets the loop fast-forward pure-decode runs."""

    max_repeat: int

    def execute(self, batch: Sequence[tuple[Request, int]], shape: BatchShape) -> float:
        """Run one step and return its duration in seconds."""
        ...

    def decode_durations(self, shape: BatchShape, num_steps: int) -> Sequence[float]:
        """Durations of `num_steps` consecutive pure-decode steps starting at `shape`
        (each step every sequence gains one KV token)."""
        ...
