"""kvsched schedulers as vLLM v1's `scheduler_cls` (issue 16; docs/vllm.md).

    vllm serve MODEL --scheduler-cls kvsched.vllm.plugin.KvschedScheduler
    # policy from the environment: KVSCHED_SCHEDULER, KVSCHED_OPTIONS (kvsched.vllm.config)

Each `schedule()` call:
1. translates vLLM's state into a kvsched `View` (one kvsched `Request` per vLLM
   request; the resident ones, their vLLM requests and block counts are dicts kept on
   events (admission, `_preempt_request`, `_free_request`) in vLLM's running order, and
   each step copies computed and output tokens from vLLM and sets blocks held to
   ceil((computed + lookahead) / block size), cross-checked against the KV manager in
   strict mode; free blocks from the block pool, block size);
2. asks the kvsched scheduler for its `Decision`;
3. applies it through vLLM itself: the decision's victims are preempted with vLLM's
   own preemption routine (vLLM frees their blocks), vLLM's waiting queue is swapped for
   one holding only the decided admissions in decided order, and every request's chunk is capped at the
   decided number of tokens through `_reserve_prefill_lookahead` (a per-request hook
   that vLLM's `schedule()` calls for every candidate, running or waiting; a cap of 0
   skips a running request and ends admission); then `super().schedule()` runs, so
   every allocation goes through vLLM's `KVCacheManager.allocate_slots` and vLLM fills
   the `SchedulerOutput`. The real queue is swapped back and loses the admitted ones;
4. verifies that vLLM scheduled exactly the decision (same requests, same token counts,
   no preemption of its own). A mismatch raises `DecisionMismatch` when strict
   (`KVSCHED_STRICT=1`, the harness), else is logged and counted
   (`num_mismatches`): vLLM's output is still consistent with its own KV accounting.

The decision is clipped to vLLM's limits first (in decision order: tokens to the step
budget `max_num_scheduled_tokens`, admissions to `max_num_seqs`, and without chunked
prefill a prompt over the budget waits), because the model runner is sized for them;
policies built on kvsched's vLLM mechanics get those limits as options and never need
clipping.

Checked against vllm 0.32.0 (`SUPPORTED_VLLM`); other versions log a warning, since
this relies on private methods (`_preempt_request`, `_reserve_prefill_lookahead`,
`_free_request`).
"""

from __future__ import annotations

import json
import logging
import time

import vllm
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus as VllmStatus

from kvsched.decision import View
from kvsched.request import Request as KRequest
from kvsched.request import RequestStatus
from kvsched.vllm.config import PluginConfigError, PolicyConfig

logger = logging.getLogger("kvsched.vllm")

SUPPORTED_VLLM = ("0.32.0",)
EXTRA_ARGS_KEY = "kvsched"


class DecisionMismatch(RuntimeError):
    """vLLM scheduled something other than the kvsched decision."""


def predictions_from(sampling_params) -> tuple[int, int | None, tuple[int, int] | None]:
    """(output-length bound, point prediction, interval prediction) of a vLLM request.

    `extra_args["kvsched"]` (an object, or the same as a JSON string: what `vllm_xargs`
    can carry over HTTP) may hold `predicted_output_len` (int) and/or
    `predicted_output_interval` ([lo, hi]); what is missing comes from `max_tokens`
    (point = max_tokens, interval = (1, max_tokens)), as kvsched's own server does.
    Invalid values raise ValueError naming the field."""
    max_tokens = max(1, int(sampling_params.max_tokens or 1))
    hint = (sampling_params.extra_args or {}).get(EXTRA_ARGS_KEY) or {}
    if isinstance(hint, str):  # over HTTP: vLLM's `vllm_xargs` values are str/int/float/list, not objects
        try:
            hint = json.loads(hint)
        except json.JSONDecodeError:
            raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] is not a JSON object: {hint!r}") from None
    if not isinstance(hint, dict):
        raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] must be an object, got {hint!r}")  # noqa: TRY004 -- bad input
    point = hint.get("predicted_output_len", max_tokens)
    if isinstance(point, bool) or not isinstance(point, int) or point < 1:
        raise ValueError(f"extra_args['kvsched']['predicted_output_len'] must be an integer >= 1, got {point!r}")
    interval = hint.get("predicted_output_interval", (1, max_tokens))
    if (not isinstance(interval, (list, tuple)) or len(interval) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in interval)
            or not 1 <= interval[0] <= interval[1]):
        raise ValueError("extra_args['kvsched']['predicted_output_interval'] must be [lo, hi] with "
                         f"1 <= lo <= hi, got {interval!r}")
    return max_tokens, point, (int(interval[0]), int(interval[1]))


class KvschedMixin:
    """The policy adapter; combined with vLLM's Scheduler or AsyncScheduler below."""

    def __init__(self, *args, kvsched_config: PolicyConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if vllm.__version__ not in SUPPORTED_VLLM:
            logger.warning("kvsched plugin: checked against vllm %s, running %s", SUPPORTED_VLLM, vllm.__version__)
        self.kvsched_config = kvsched_config if kvsched_config is not None else PolicyConfig.from_env()
        self._ks_refuse_unsupported()
        sc = self.scheduler_config
        knobs = {
            "max_num_batched_tokens": self.max_num_scheduled_tokens,
            "max_num_seqs": self.max_num_running_reqs,
            "enable_chunked_prefill": bool(sc.enable_chunked_prefill),
            "long_prefill_token_threshold": int(sc.long_prefill_token_threshold or 0),
            "policy": "fcfs",
            "reserve_full_sequence": bool(self.scheduler_reserve_full_isl),
            "threshold_needs_two": True,
        }
        self.policy_scheduler = self.kvsched_config.build(knobs)
        self.kvsched_name = self.kvsched_config.scheduler
        # The policy's own admission rule replaces vLLM's full-sequence check unless the
        # policy models it (kvsched's vLLM family mirrors it as reserve_full_sequence).
        self._ks_full_isl = bool(getattr(self.policy_scheduler, "reserve_full_sequence", False))
        self._ks_ids: dict[str, int] = {}
        self._ks_reqs: dict[int, KRequest] = {}
        self._ks_vreqs: dict[int, object] = {}
        self._ks_waiting: dict[int, KRequest] = {}
        # Mirrors of vLLM's running list, kept on events (admission, preemption, free) and
        # in its order: kid -> kvsched request, kid -> vLLM request, kid -> blocks held.
        self._ks_resident: dict[int, KRequest] = {}
        self._ks_resident_v: dict[int, object] = {}
        self._ks_blocks: dict[int, int] = {}
        self._ks_arrived: list[KRequest] = []
        self._ks_finished: list[KRequest] = []
        self._ks_next_id = 0
        self._ks_step = 0
        self._ks_base: float | None = None
        # During super().schedule(): request id -> decided end (the admissions; every request
        # when the decision was clipped), and the decision's run (kid -> tokens), which the
        # hook reads for the resident requests when nothing was clipped (else None).
        self._ks_ends: dict[str, int] | None = None
        self._ks_run = None
        self._ks_granted: dict[str, int] = {}
        # vLLM's _reserve_prefill_lookahead is the identity (clamped at 0) without a window.
        self._ks_lookahead_window = getattr(self, "num_prefill_lookahead", 2) > 1
        self._ks_manager = self.kv_cache_manager.coordinator.single_type_managers[0]
        self.num_mismatches = 0
        self.last_decision = None
        # Open for the scheduler's life (closed in shutdown); line-buffered so a reader sees whole steps.
        self._ks_log = (open(self.kvsched_config.step_log, "a", buffering=1)  # noqa: SIM115
                        if self.kvsched_config.step_log else None)

    def _ks_refuse_unsupported(self) -> None:
        sc = self.scheduler_config
        reasons = []
        if self.policy != SchedulingPolicy.FCFS:
            reasons.append("--scheduling-policy must be fcfs (the kvsched policy does the ordering)")
        if getattr(sc, "watermark", 0.0):
            reasons.append("a KV watermark is not modelled by kvsched policies (use watermark=0)")
        if self.vllm_config.speculative_config is not None:
            reasons.append("speculative decoding is not supported")
        if len(self.kv_cache_config.kv_cache_groups) != 1:
            reasons.append("only models with one KV cache group (plain full attention) are supported")
        if getattr(sc, "long_prefill_token_threshold_adaptive", False):
            reasons.append("long_prefill_token_threshold_adaptive is not modelled")
        if self.connector is not None:
            reasons.append("KV connectors (disaggregated prefill, offloading) are not supported")
        if reasons:
            raise PluginConfigError("kvsched plugin cannot run with this vLLM configuration: " + "; ".join(reasons))

    # --- request bookkeeping ------------------------------------------------------------
    def add_request(self, request) -> None:
        known = request.request_id in self.requests
        super().add_request(request)
        if known or request.request_id not in self.requests:
            return
        try:
            bound, point, interval = predictions_from(request.sampling_params)
        except ValueError as exc:
            logger.warning("kvsched plugin: request %s: %s; using max_tokens", request.request_id, exc)
            bound = max(1, int(request.sampling_params.max_tokens or 1))
            point, interval = bound, (1, bound)
        if self._ks_base is None:
            self._ks_base = request.arrival_time
        kid = self._ks_next_id
        self._ks_next_id += 1
        r = KRequest(kid, max(0.0, request.arrival_time - self._ks_base), request.num_prompt_tokens, bound,
                     predicted_output_len=point, predicted_output_interval=interval)
        self._ks_ids[request.request_id] = kid
        self._ks_reqs[kid] = r
        self._ks_vreqs[kid] = request
        self._ks_waiting[kid] = r
        self._ks_arrived.append(r)

    def kvsched_request(self, request_id: str) -> KRequest:
        """The kvsched Request that mirrors vLLM request `request_id`."""
        return self._ks_reqs[self._ks_ids[request_id]]

    def _free_request(self, request, *args, **kwargs):
        kid = self._ks_ids.pop(request.request_id, None)
        if kid is not None:
            r = self._ks_reqs.pop(kid)
            self._ks_vreqs.pop(kid, None)
            self._ks_waiting.pop(kid, None)
            self._ks_resident.pop(kid, None)
            self._ks_resident_v.pop(kid, None)
            self._ks_blocks.pop(kid, None)
            aborted = request.status == VllmStatus.FINISHED_ABORTED
            r.status = RequestStatus.ABORTED if aborted else RequestStatus.FINISHED
            if r in self._ks_arrived:
                self._ks_arrived.remove(r)  # the policy never saw it
            else:
                self._ks_finished.append(r)
        return super()._free_request(request, *args, **kwargs)

    def _preempt_request(self, request, *args, **kwargs):
        # Every preemption (the decision's victims, vLLM's own after a mismatch, a prefix
        # cache reset) passes here: the request leaves the resident mirrors and waits.
        super()._preempt_request(request, *args, **kwargs)
        kid = self._ks_ids.get(request.request_id)
        if kid is not None:
            r = self._ks_reqs[kid]
            r.num_computed_tokens, r.status = 0, RequestStatus.WAITING
            self._ks_resident.pop(kid, None)
            self._ks_resident_v.pop(kid, None)
            self._ks_blocks.pop(kid, None)
            self._ks_waiting[kid] = r

    # --- the per-request hook inside vLLM's schedule() ------------------------------------
    def _reserve_prefill_lookahead(self, request, num_computed_tokens: int, num_new_tokens: int) -> int:
        if self._ks_lookahead_window:
            n = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        else:  # what vLLM's returns without a prefill lookahead window (no super() call per request)
            n = max(0, num_new_tokens)
        ends = self._ks_ends
        if ends is None:
            return n
        rid = request.request_id
        end = ends.get(rid)
        if end is None:
            run = self._ks_run
            if run is None:
                return 0  # not in the decision: a running request is skipped, admission stops
            # A resident request of an unclipped decision: its computed tokens have not
            # moved since the decision, so the decided end minus them is the decided count.
            allowed = run.get(self._ks_ids.get(rid))
            if allowed is None:
                return 0
        else:
            allowed = end - num_computed_tokens
            allowed = max(allowed, 1)  # a prefix-cache hit covered the decided chunk: vLLM computes >= 1 token
        self._ks_granted[rid] = allowed  # what the decision asks of vLLM here
        return min(allowed, n)

    # --- the step ---------------------------------------------------------------------------
    def _ks_view(self) -> View:
        # Progress of the resident requests (they all moved in a decode step), read from
        # vLLM; blocks held from arithmetic (allocate_slots covers computed + lookahead).
        # len(v._output_token_ids) is vLLM 0.32's Request.num_output_tokens without the
        # property call (strict mode checks it); this loop runs over every running request.
        resident, blocks = self._ks_resident, self._ks_blocks
        bs, la = self.block_size, self.num_lookahead_tokens
        for (kid, r), v in zip(resident.items(), self._ks_resident_v.values()):
            c = v.num_computed_tokens
            r.num_computed_tokens = c
            r.num_output_tokens = len(v._output_token_ids) + v.num_output_placeholders
            blocks[kid] = -(-(c + la) // bs)
        if self.kvsched_config.strict:
            self._ks_check_mirrors()
        arrived, finished = self._ks_arrived, self._ks_finished
        self._ks_arrived, self._ks_finished = [], []
        now = max(0.0, time.time() - self._ks_base) if self._ks_base is not None else 0.0
        return View(now=now, step=self._ks_step, waiting=self._ks_waiting, resident=resident,
                    arrived=arrived, finished=finished,
                    num_free_blocks=self.kv_cache_manager.block_pool.get_num_free_blocks(),
                    num_blocks=self.kv_cache_config.num_blocks - 1, block_size=self.block_size,
                    arrivals_pending=False, block_counts=blocks, lookahead_tokens=0)

    def _ks_check_mirrors(self) -> None:
        """Strict mode: the event-kept mirrors equal vLLM's state (running order, blocks,
        progress)."""
        ids, req_to_blocks = self._ks_ids, self._ks_manager.req_to_blocks
        running = [ids[v.request_id] for v in self.running]
        held = {ids[v.request_id]: len(req_to_blocks.get(v.request_id, ())) for v in self.running}
        progress = {ids[v.request_id]: (v.num_computed_tokens, v.num_output_tokens + v.num_output_placeholders)
                    for v in self.running}
        mirrored = {k: (r.num_computed_tokens, r.num_output_tokens) for k, r in self._ks_resident.items()}
        if (running != list(self._ks_resident) or running != list(self._ks_resident_v) or held != self._ks_blocks
                or progress != mirrored):
            raise DecisionMismatch(
                f"kvsched plugin step {self._ks_step}: resident mirror {list(self._ks_resident)} / blocks "
                f"{self._ks_blocks} / progress {mirrored} differ from vLLM's running {running} / blocks {held} / "
                f"progress {progress}")

    def schedule(self, throttle_prefills: bool = False):
        view = self._ks_view()
        decision = self.policy_scheduler.schedule(view)
        self.last_decision = decision
        vreqs = self._ks_vreqs
        victims = []
        for kid in (*decision.preempt, *decision.restart):  # restart: recompute (tokens are streamed)
            if kid not in self._ks_resident:
                # The policy's own books say it holds KV, but vLLM never admitted it (its
                # admission was clipped to vLLM's limits): there is nothing to free.
                self._ks_not_resident_victim(kid)
                continue
            v = vreqs[kid]
            self.running.remove(v)
            self._preempt_request(v, time.monotonic())  # also updates the mirrors
            victims.append(v.request_id)

        # Clip to vLLM's limits in decision order; build the decided ends and admissions.
        budget = self.max_num_scheduled_tokens
        seats = self.max_num_running_reqs - len(self.running)
        chunked = self.scheduler_config.enable_chunked_prefill
        run = decision.run
        ends: dict[str, int] = {}
        admit = []
        resident = self._ks_resident
        # To admit (a victim re-admitted included); none in a decode step (a subset test
        # builds no set).
        new = () if run.keys() <= resident.keys() else run.keys() - resident.keys()
        if len(new) <= seats and (not run or (min(run.values()) >= 1 and sum(run.values()) <= budget)):
            # Nothing to clip (the common case): the resident requests' counts are read from
            # run by the hook; only the admissions get ends.
            if new:
                for kid in run:
                    if kid in new:
                        v = vreqs[kid]
                        admit.append(v)
                        ends[v.request_id] = v.num_computed_tokens + run[kid]
            self._ks_run = run
            decided = run
        else:
            for kid, n in run.items():
                v = vreqs[kid]
                clipped = n > budget
                if clipped:
                    n = budget
                if n < 1:
                    continue
                if v.status != VllmStatus.RUNNING:
                    if seats < 1 or (clipped and not chunked):  # vLLM would not chunk it: it waits
                        continue
                    seats -= 1
                    admit.append(v)
                ends[v.request_id] = v.num_computed_tokens + n
                budget -= n
            self._ks_run = None
            decided = None

        # vLLM sees a waiting queue of the decided admissions only (a fresh queue swapped
        # in); the real queue is untouched meanwhile and gets the admitted ones removed.
        waiting = self.waiting
        queue = create_request_queue(self.policy)
        queue.extend(admit)
        self.waiting = queue
        sc = self.scheduler_config
        threshold, full_isl = sc.long_prefill_token_threshold, self.scheduler_reserve_full_isl
        self._ks_ends, self._ks_granted = ends, {}
        try:
            # Chunk sizes are the policy's (capped per request by the hook; clipped to vLLM's
            # limits above): vLLM's threshold and no-chunking check must not cut them again.
            sc.long_prefill_token_threshold = 0
            sc.enable_chunked_prefill = True
            self.scheduler_reserve_full_isl = self._ks_full_isl
            output = super().schedule(throttle_prefills)
        finally:
            sc.long_prefill_token_threshold, self.scheduler_reserve_full_isl = threshold, full_isl
            sc.enable_chunked_prefill = chunked
            self._ks_ends, self._ks_run = None, None
            self.waiting = waiting
            # Left in `queue`: unadmitted admissions (still in `waiting`) and any request
            # vLLM preempted itself (it goes first, in the order vLLM left it).
            if queue:
                admit_ids = {id(v) for v in admit}
                waiting.extendleft(reversed([x for x in queue if id(x) not in admit_ids]))
            self._ks_remove_admitted(waiting, admit)
        resident_v, ids, reqs = self._ks_resident_v, self._ks_ids, self._ks_reqs
        for v in admit:  # in vLLM's order of admission (it appends them to running)
            if v.status == VllmStatus.RUNNING:
                kid = ids[v.request_id]
                r = reqs[kid]
                r.status = RequestStatus.RUNNING
                self._ks_waiting.pop(kid, None)
                resident[kid] = r
                resident_v[kid] = v
        scheduled = output.num_scheduled_tokens
        preempted = set(output.preempted_req_ids or ())
        extra_victims = preempted.difference(victims)  # only after a mismatch: vLLM preempted on its own
        if (scheduled != self._ks_granted or len(scheduled) != (len(ends) if decided is None else len(decided))
                or extra_victims):
            if decided is not None:  # the decided request ids, for the message
                ends = {vreqs[kid].request_id: 0 for kid in decided if kid in vreqs}
            self._ks_mismatch(decision, ends, scheduled, extra_victims)
        if self._ks_log is not None:
            self._ks_log.write(json.dumps({
                "step": self._ks_step, "scheduled": scheduled, "preempted": sorted(preempted),
                "finished": sorted(output.finished_req_ids), "free_blocks":
                self.kv_cache_manager.block_pool.get_num_free_blocks()}) + "\n")
        self._ks_step += 1
        return output

    @staticmethod
    def _ks_remove_admitted(waiting, admit) -> None:
        """Drop the requests vLLM admitted from `waiting` (the real queue)."""
        admitted = [v for v in admit if v.status == VllmStatus.RUNNING]
        if not admitted:
            return
        if all(a is b for a, b in zip(waiting, admitted)):  # the head of the queue (FCFS-like policies)
            for _ in admitted:
                waiting.popleft()
            return
        keep = [x for x in waiting if x.status != VllmStatus.RUNNING]
        waiting.clear()
        waiting.extend(keep)

    def _ks_not_resident_victim(self, kid: int) -> None:
        self.num_mismatches += 1
        text = (f"kvsched plugin step {self._ks_step}: the {self.kvsched_name!r} decision preempts request "
                f"{self._ks_vreqs[kid].request_id}, which holds no KV in vLLM (an admission clipped to vLLM's "
                "limits); ignored")
        if self.kvsched_config.strict:
            raise DecisionMismatch(text)
        logger.warning(text)

    def _ks_mismatch(self, decision, ends, scheduled, extra_victims) -> None:
        self.num_mismatches += 1
        missing = sorted(set(ends).difference(scheduled))
        differ = {k: (self._ks_granted.get(k), n) for k, n in scheduled.items() if self._ks_granted.get(k) != n}
        text = (f"kvsched plugin step {self._ks_step}: vLLM did not schedule the {self.kvsched_name!r} decision: "
                f"not scheduled {missing}, (decided, scheduled) {differ}, preempted by vLLM {sorted(extra_victims)}; "
                f"free blocks {self.kv_cache_manager.block_pool.get_num_free_blocks()}")
        if self.kvsched_config.strict:
            raise DecisionMismatch(text)
        logger.warning(text)

    def shutdown(self) -> None:
        if self._ks_log is not None:
            self._ks_log.close()
            self._ks_log = None
        super().shutdown()


class KvschedScheduler(KvschedMixin, Scheduler):
    """A kvsched policy (KVSCHED_SCHEDULER / KVSCHED_OPTIONS) inside vLLM's Scheduler."""


class KvschedAsyncScheduler(KvschedMixin, AsyncScheduler):
    """The same over vLLM's AsyncScheduler (async scheduling keeps working)."""
