"""Lower bounds for a finished simulation run: how far is this schedule from the best?

`run_bound` compares a run's total end-to-end latency (completed requests only) with the
strongest bound that is cheap for any workload, the volume bound in seconds
(`volume_bound_seconds`), and names it. It is valid when

- every round lasts at least `round_time_s` (theory mode: 1; a cost model: the time of
  its smallest possible step, one sequence decoding, assuming step time never decreases
  as the batch grows, which holds for every shipped cost model), and
- memory is counted the way the run counted it: the papers' ledger (prompt + j after the
  j-th token, one lookahead slot) or the engine's (prompt + j - 1, no lookahead slot),
  whose volume is that of a prompt one token shorter.
"""

from __future__ import annotations

import numpy as np

from kvsched.backend import BatchShape
from kvsched.bounds.volume import volume_bound_seconds
from kvsched.loop import Run
from kvsched.request import RequestStatus
from kvsched.request_table import RequestTable


def schedule_of(run: Run) -> tuple[int, dict[int, int] | None]:
    """A theory-mode run as the IP sees it: total latency of the completed requests and
    their start epochs (None when someone was preempted with its tokens kept: the schedule
    is then not non-preemptive and cannot warm-start the IP). A killed attempt can simply
    be dropped (it only adds memory), so a restarted request starts at its final attempt."""
    done = [r for r in run.requests if r.status is RequestStatus.FINISHED]
    tel = round(sum(r.finish_time - r.arrival_time for r in done))
    if any(r.num_preemptions for r in run.requests):
        return tel, None
    return tel, {r.request_id: int(r.admit_time) for r in done}


def min_round_time(cost_model) -> float:
    """The cost model's smallest possible step: one sequence decoding with one KV token."""
    return float(cost_model.step_time(BatchShape(1, 0, 1, 1, 0)))


def run_bound(run: Run, round_time_s: float, lookahead_tokens: int) -> dict:
    """Total latency of the completed requests, the volume bound on it, and their ratio."""
    reqs = run.requests
    if isinstance(reqs, RequestTable):  # the same values, read from the packed columns
        idx = reqs.indices(RequestStatus.FINISHED)
        finish = reqs.column("finish_time").tolist()
        done = [reqs.input(i) for i in idx]
        total = float(sum(finish[i] - r.arrival_time for i, r in zip(idx, done)))
    else:
        done = [r for r in reqs if r.status is RequestStatus.FINISHED]
        total = float(sum(r.finish_time - r.arrival_time for r in done))
    a = np.array([r.arrival_time for r in done], dtype=np.float64)
    s = np.array([r.prompt_len for r in done], dtype=np.int64)
    o = np.array([r.output_len for r in done], dtype=np.int64)
    # Engine ledger (no lookahead): prompt + j - 1 tokens after token j = the papers'
    # volume of a prompt one shorter. More lookahead only adds memory, so the bound holds.
    shift = 0 if lookahead_tokens >= 1 else 1
    bound = volume_bound_seconds(a, s - shift, o, run.num_blocks * run.block_size, round_time_s)
    return {
        "total_latency_s": total,
        "bound_name": "volume",
        "bound_total_latency_s": bound,
        "ratio_to_bound": total / bound if bound > 0 else float("nan"),
    }
