"""The one Request record shared by traces, schedulers, simulator, bounds and metrics.

Token accounting follows vLLM v1: a request has `num_tokens` (prompt plus the output
generated so far) and `num_computed_tokens` (tokens whose KV is cached). Each step
gives it some new tokens; when `num_computed_tokens` catches up with `num_tokens`,
the step emits one output token. Prefill, chunked prefill, decode and recompute
after preemption are the same mechanism, so no phase flag exists.

`output_len` is ground truth for the simulator. Clairvoyant schedulers read it as
their exact oracle. A non-clairvoyant scheduler (`Scheduler.clairvoyant = False`) sees
every request through a `BlindRequest`, which raises `OutputLengthHidden` on any read of
the true length; all it learns is "finished" or "still running after u tokens".
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # arrived, holds no KV (new, or preempted)
    RUNNING = "running"  # resident: holds KV blocks (it may be paused in a step)
    FINISHED = "finished"
    REJECTED = "rejected"  # can never fit in the KV capacity
    ABORTED = "aborted"  # withdrawn by its client (a server's disconnect); its KV was freed


@dataclass(slots=True, eq=False)
class Request:
    request_id: int
    arrival_time: float
    prompt_len: int
    output_len: int
    # Optional prediction of output_len: a point value, or an interval (low, high).
    predicted_output_len: int | None = None
    predicted_output_interval: tuple[int, int] | None = None
    # Prefix identities for automatic prefix caching, token-id free: one non-negative id per
    # `prefix_block_size` tokens, describing the first len(ids) x prefix_block_size tokens
    # of prompt + output (a multi-turn workload's ids may cover the output the next turn
    # repeats), already chained: two requests with the same id at index k hold the same
    # tokens up to the end of block k. None: the request shares nothing (only its own
    # re-admission after a preemption can hit).
    prefix_block_ids: tuple[int, ...] | None = None
    prefix_block_size: int = 0

    # Progress (mutated by the loop only).
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING

    # Lifecycle timestamps in seconds (None until they happen).
    admit_time: float | None = None  # KV first allocated in the current residency
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None

    # Evictions. A recompute preemption keeps the generated tokens (vLLM); a restart
    # (kill-and-restart) discards them, so the output is produced again from scratch.
    num_preemptions: int = 0  # recompute preemptions
    num_restarts: int = 0  # kill-and-restart evictions
    num_wasted_tokens: int = 0  # tokens computed again because of either kind
    num_discarded_tokens: int = 0  # output tokens thrown away by restarts
    wasted_kv_area: int = 0  # KV token x steps held by attempts that a restart killed
    # The current attempt (one residency): its first step, the output tokens it started
    # with (0 after a restart) and the KV token x steps it has held so far.
    attempt_start_step: int | None = None
    attempt_start_output: int = 0
    attempt_kv_area: int = 0
    # Ended attempts: (start step, output tokens generated, how it ended).
    attempts: list[tuple[int, int, str]] = field(default_factory=list)
    reject_reason: str | None = None
    # Prefix caching: prompt tokens found in the cache at the first admission (vLLM's
    # num_cached_tokens), and tokens found over every admission, re-admissions included.
    num_cached_tokens: int = 0
    num_reused_tokens: int = 0

    def __post_init__(self) -> None:
        if self.prompt_len < 1:
            raise ValueError(f"request {self.request_id}: prompt_len must be >= 1, got {self.prompt_len}")
        if self.output_len < 1:
            raise ValueError(f"request {self.request_id}: output_len must be >= 1, got {self.output_len}")
        if not self.arrival_time >= 0.0:  # also rejects NaN
            raise ValueError(f"request {self.request_id}: arrival_time must be >= 0, got {self.arrival_time}")
        if self.prefix_block_ids is not None and self.prefix_block_size < 1:
            raise ValueError(f"request {self.request_id}: prefix_block_ids need prefix_block_size >= 1")

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
    def num_attempt_tokens(self) -> int:
        """Output tokens generated by the current attempt (since admission)."""
        return self.num_output_tokens - self.attempt_start_output

    @property
    def num_evictions(self) -> int:
        """Residencies that ended without finishing (either preemption kind)."""
        return self.num_preemptions + self.num_restarts

    @property
    def is_decoding(self) -> bool:
        """True when the next step is a plain one-token decode."""
        return self.num_output_tokens > 0 and self.num_remaining_tokens == 1

    @property
    def is_finished(self) -> bool:
        """Gone from the system: finished, or aborted by its client."""
        return self.status is RequestStatus.FINISHED or self.status is RequestStatus.ABORTED

    def copy_fresh(self) -> Request:
        """A new request with the same identity and lengths and no progress."""
        return Request(
            self.request_id,
            self.arrival_time,
            self.prompt_len,
            self.output_len,
            self.predicted_output_len,
            self.predicted_output_interval,
            self.prefix_block_ids,
            self.prefix_block_size,
        )


class OutputLengthHidden(RuntimeError):
    """A non-clairvoyant scheduler tried to read a request's true output length."""


# Attributes that reveal the true output length (directly or through arithmetic).
_HIDDEN = frozenset({"output_len", "peak_kv_len", "copy_fresh"})


class BlindRequest:
    """A read-only window on a `Request` without its true output length.

    Everything else (prompt, progress counters, timestamps, predictions) reads through;
    `output_len` and anything derived from it raise `OutputLengthHidden`."""

    __slots__ = ("_request",)

    def __init__(self, request: Request) -> None:
        object.__setattr__(self, "_request", request)

    def __getattr__(self, name: str):
        if name == "_request" or name.startswith("__"):
            raise AttributeError(name)  # copy/pickle probing a half-built proxy
        if name in _HIDDEN:
            raise OutputLengthHidden(
                f"request {self._request.request_id}: a non-clairvoyant scheduler read {name!r}, "
                "which reveals the true output length"
            )
        return getattr(self._request, name)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"requests are read-only for schedulers (tried to set {name!r})")

    def __copy__(self) -> BlindRequest:
        return self  # a read-only view: copies would only hide the same request

    def __deepcopy__(self, memo) -> BlindRequest:
        return self

    def __repr__(self) -> str:
        r = self._request
        return f"BlindRequest(id={r.request_id}, prompt_len={r.prompt_len}, num_output_tokens={r.num_output_tokens})"


# The fields schedulers read every step, as C-level properties (the __getattr__ fallback
# costs a Python call per read).
for _name in ("request_id", "arrival_time", "prompt_len", "num_computed_tokens", "num_output_tokens", "status",
              "attempt_start_output", "predicted_output_len", "predicted_output_interval", "num_tokens",
              "num_attempt_tokens", "is_finished", "prefix_block_ids", "prefix_block_size"):
    setattr(BlindRequest, _name, property(operator.attrgetter(f"_request.{_name}")))
del _name
