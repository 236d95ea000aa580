"""The one Request record shared by traces, schedulers, simulator, bounds and metrics.

Token accounting follows vLLM v1: a request has `num_tokens` (prompt plus the output
generated so far) and `num_computed_tokens` (tokens whose KV is cached). Each step
gives it some new tokens; when `num_computed_tokens` catches up with `num_tokens`,
the step emits one output token. Prefill, chunked prefill, decode and recompute
after preemption are the same mechanism, so no phase flag exists.

`output_len` is ground truth for the simulator. Schedulers must not read it except
through an explicit oracle or predictor (see the scheduler docs).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # arrived, holds no KV (new, or preempted)
    RUNNING = "running"  # resident: holds KV blocks (it may be paused in a step)
    FINISHED = "finished"
    REJECTED = "rejected"  # can never fit in the KV capacity


@dataclass(slots=True, eq=False)
class Request:
    request_id: int
    arrival_time: float
    prompt_len: int
    output_len: int
    # Optional prediction of output_len: a point value, or an interval (low, high).
    predicted_output_len: int | None = None
    predicted_output_interval: tuple[int, int] | None = None

    # Progress (mutated by the loop only).
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING

    # Lifecycle timestamps in seconds (None until they happen).
    admit_time: float | None = None  # KV first allocated in the current residency
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None

    num_preemptions: int = 0
    num_wasted_tokens: int = 0  # tokens computed again because of preemption
    reject_reason: str | None = None

    def __post_init__(self) -> None:
        if self.prompt_len < 1:
            raise ValueError(f"request {self.request_id}: prompt_len must be >= 1, got {self.prompt_len}")
        if self.output_len < 1:
            raise ValueError(f"request {self.request_id}: output_len must be >= 1, got {self.output_len}")
        if not self.arrival_time >= 0.0:  # also rejects NaN
            raise ValueError(f"request {self.request_id}: arrival_time must be >= 0, got {self.arrival_time}")

    @property
    def num_tokens(self) -> int:
        """Prompt plus output generated so far: what the KV must catch up with."""
        return self.prompt_len + self.num_output_tokens

    @property
    def num_remaining_tokens(self) -> int:
        """Tokens to compute before the next output token is emitted."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def peak_kv_len(self) -> int:
        """KV tokens held in the step that emits the last token (prompt + output - 1)."""
        return self.prompt_len + self.output_len - 1

    @property
    def is_decoding(self) -> bool:
        """True when the next step is a plain one-token decode."""
        return self.num_output_tokens > 0 and self.num_remaining_tokens == 1

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def copy_fresh(self) -> Request:
        """A new request with the same identity and lengths and no progress."""
        return Request(
            self.request_id,
            self.arrival_time,
            self.prompt_len,
            self.output_len,
            self.predicted_output_len,
            self.predicted_output_interval,
        )
