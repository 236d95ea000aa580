"""Prefill/decode disaggregation: the hand-over of a prefilled request to a decode replica.

Splitwise (Patel et al., ISCA 2024) and DistServe (Zhong et al., OSDI 2024) run prompts and
token generation on separate pools. Here a prefill replica serves each request as a
one-output-token request (its prefill emits the first token, which is the request's TTFT);
its KV is then copied to a decode replica over a link of `kv_link_gbps` gigabits per second:

    transfer time = prompt_len x kv_bytes_per_token x 8 / (kv_link_gbps x 1e9)

and the request arrives at the decode pool when the copy is done, holding `prompt_len`
computed tokens and one output token. The decode replica's own scheduler admits it under
the decode replica's KV budget (`decode_capacity_tokens`, default the prefill replicas'),
like any waiting request: its first step allocates the KV of prompt + 1 tokens and decodes.
A decode replica that preempts it recomputes prompt and output itself (vLLM recompute).
The copy starts when the prefill step ends and the prefill replica frees its KV at once
(no layer-wise overlap, no hold until the copy completes: both are refinements). A request
whose output is one token never reaches the decode pool.

KV bytes per token (all layers, K and V, every KV head: the whole replica's KV, not one
tensor-parallel rank's) come from the model behind the cost model (`kv_bytes_per_token`),
or are given explicitly for a cost model that names no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvsched.request import Request, RequestStatus


@dataclass(frozen=True)
class Disaggregation:
    """P prefill replicas, D decode replicas, the link between them."""

    num_prefill: int
    num_decode: int
    kv_link_gbps: float
    kv_bytes_per_token: int
    decode_capacity_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.num_prefill < 1 or self.num_decode < 1:
            raise ValueError(f"disaggregation needs >= 1 prefill and >= 1 decode replica, got "
                             f"{self.num_prefill} and {self.num_decode}")
        if not (self.kv_link_gbps > 0 and math.isfinite(self.kv_link_gbps)):
            raise ValueError(f"kv_link_gbps must be a finite number > 0, got {self.kv_link_gbps}")
        if self.kv_bytes_per_token < 1:
            raise ValueError(f"kv_bytes_per_token must be >= 1, got {self.kv_bytes_per_token}")
        if self.decode_capacity_tokens is not None and self.decode_capacity_tokens < 1:
            raise ValueError(f"decode_capacity_tokens must be >= 1, got {self.decode_capacity_tokens}")

    def transfer_time(self, prompt_len: int) -> float:
        """Seconds to copy a prompt's KV to a decode replica."""
        return prompt_len * self.kv_bytes_per_token * 8 / (self.kv_link_gbps * 1e9)


def kv_bytes_per_token(cost_model_name: str) -> int | None:
    """KV bytes one token holds over a whole replica for a cost model preset that names its
    model (fp16/bf16), or None."""
    from kvsched.sim import profiles, tables

    if cost_model_name in tables.DEPLOYMENTS:
        model, _, _ = tables.DEPLOYMENTS[cost_model_name]
        return model.kv_bytes_per_token(1)
    by_prefix = {"llama2-7b": profiles.LLAMA2_7B, "llama2-70b": profiles.LLAMA2_70B, "llama3-8b": tables.LLAMA3_8B}
    for prefix, spec in by_prefix.items():
        if cost_model_name.startswith(prefix):
            return spec.kv_bytes_per_token
    return None


def prefill_part(r: Request) -> Request:
    """What a prefill replica serves: the prompt and the first output token."""
    return Request(r.request_id, r.arrival_time, r.prompt_len, 1, r.predicted_output_len,
                   r.predicted_output_interval, r.prefix_block_ids, r.prefix_block_size)


class Prefilled(Request):
    """A request whose prompt was computed elsewhere and whose first token was emitted.
    The loop copies every request when it arrives (`copy_fresh`); the copy of this one keeps
    that progress."""

    __slots__ = ()

    def copy_fresh(self) -> Prefilled:
        d = Prefilled(self.request_id, self.arrival_time, self.prompt_len, self.output_len, self.predicted_output_len,
                      self.predicted_output_interval)
        d.num_computed_tokens = self.prompt_len
        d.num_output_tokens = 1
        return d


def decode_part(r: Request, arrival_time: float) -> Request:
    """What a decode replica receives at `arrival_time`: the prompt's KV computed and the
    first output token emitted; output_len - 1 tokens left to generate."""
    return Prefilled(r.request_id, arrival_time, r.prompt_len, r.output_len, r.predicted_output_len,
                     r.predicted_output_interval).copy_fresh()


def merged_record(original: Request, pre: Request, dec: Request | None) -> Request:
    """The request as a user saw it: arrival and first token from the prefill replica,
    finish from the decode replica, evictions and waste summed over both."""
    m = original.copy_fresh()
    m.first_scheduled_time = pre.first_scheduled_time
    m.first_token_time = pre.first_token_time
    m.num_cached_tokens = pre.num_cached_tokens
    parts = [pre] if dec is None else [pre, dec]
    for name in ("num_preemptions", "num_restarts", "num_wasted_tokens", "num_discarded_tokens",
                 "wasted_kv_area", "num_reused_tokens"):
        setattr(m, name, sum(getattr(p, name) for p in parts))
    m.attempts = [a for p in parts for a in p.attempts]
    last = parts[-1]
    if pre.status is RequestStatus.REJECTED:
        m.status, m.reject_reason = RequestStatus.REJECTED, f"prefill: {pre.reject_reason}"
    elif dec is not None and dec.status is RequestStatus.REJECTED:
        m.status, m.reject_reason = RequestStatus.REJECTED, f"decode: {dec.reject_reason}"
    else:
        m.status = last.status
        m.finish_time = last.finish_time
        m.admit_time = last.admit_time
        m.num_output_tokens = original.output_len if last.status is RequestStatus.FINISHED else 0
        m.num_computed_tokens = last.num_computed_tokens
    return m
