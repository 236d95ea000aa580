"""OnlineLoop: the loop driven one iteration at a time, as a server drives it.

Unit tests of `add` / `abort` / `step` / `pop_steps`, then every registered scheduler
driven through random server-like histories that the batch simulator never produces:
requests added while the loop runs, aborted while waiting, preempted or running (a
client disconnect), and ended early by the backend (`backend.stopped`: EOS before
max_tokens). Invariants: no scheduler error, every request ends exactly once in the
right state, KV never exceeds capacity and is empty once the loop drains, a stopped
request keeps exactly the tokens it had when it was stopped, and the loop never waits
forever while work remains."""

from __future__ import annotations

import math

import pytest
from conftest import create_scheduler
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kvsched.decision import Decision, Scheduler
from kvsched.kvcache import KVCache, blocks_for
from kvsched.loop import STEP_COLUMNS, OnlineLoop
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.schedulers.clearing import InfeasibleSchedule
from kvsched.schedulers.wait_common import WaitFamily
from kvsched.sim import SimBackend
from kvsched.sim.cost import AffinePrefillCost, UnitCost

COST = AffinePrefillCost(d0_s=0.01, d1_s_per_token=1e-4, d2_s_per_prefill_token=1e-3)
MAX_ITERATIONS = 5_000


class StoppingBackend:
    """A server-like backend over the cost-model simulator: one step per `execute` (no
    fast-forward), and requests end early where the test says so: a request whose
    `stop_at` is k is listed in `stopped` in the step that emits its k-th token."""

    max_repeat = 1

    def __init__(self, cost_model, stop_at: dict[int, int] | None = None) -> None:
        self.inner = SimBackend(cost_model, fast_forward=False)
        self.stop_at = dict(stop_at or {})
        self.stopped: set[int] = set()
        self.stopped_with: dict[int, int] = {}  # request id -> output tokens it ended with

    def execute(self, batch, shape) -> float:
        for r, n in batch:
            k = self.stop_at.get(r.request_id)
            emits = r.num_computed_tokens + n == r.prompt_len + r.num_output_tokens
            if k is not None and emits and r.num_output_tokens + 1 == k:
                self.stopped.add(r.request_id)
                self.stopped_with[r.request_id] = k
        return self.inner.execute(batch, shape)

    def decode_durations(self, shape, num_steps):
        return self.inner.decode_durations(shape, num_steps)


def _gates_on_arrivals(name: str) -> bool:
    """The WAIT family holds requests until enough of a type wait, and releases the rest
    only once told that no more will arrive (`arrivals_pending` False, A17)."""
    factory = SCHEDULERS.get(name).factory
    return isinstance(factory, type) and issubclass(factory, WaitFamily)


# --- unit tests ----------------------------------------------------------------------------


class Greedy(Scheduler):
    """Runs everything waiting or resident, whole remaining chunk each; records views."""

    def __init__(self) -> None:
        self.views = []

    def schedule(self, view):
        self.views.append(view)
        run = {rid: r.num_tokens - r.num_computed_tokens for rid, r in {**view.waiting, **view.resident}.items()}
        return Decision(run)


class Idler(Scheduler):
    def __init__(self, until=None) -> None:
        self.until = until

    def schedule(self, view):
        return Decision(idle_until=self.until)


def _loop(scheduler, capacity=100, block_size=1, backend=None):
    return OnlineLoop(scheduler, backend or SimBackend(UnitCost(), fast_forward=False), KVCache(capacity, block_size))


def test_add_step_and_finish():
    s = Greedy()
    loop = _loop(s)
    loop.now = 2.0
    r = Request(7, 5.0, 3, 2)  # an arrival time in the future is clamped to now
    loop.add(r)
    assert r.arrival_time == 2.0 and loop.has_work
    loop.step()
    assert loop.idle_until is None and loop.now == 3.0
    assert s.views[0].arrivals_pending and [q.request_id for q in s.views[0].arrived] == [7]
    loop.step()
    assert r.status is RequestStatus.FINISHED and r.num_output_tokens == 2 and r.finish_time == 4.0
    assert not loop.has_work and loop.kv.num_used_tokens == 0
    loop.step()  # nothing to do: no scheduling call, wait for an arrival
    assert len(s.views) == 2 and loop.idle_until == math.inf


def test_add_keeps_an_earlier_arrival_time():
    loop = _loop(Greedy())
    loop.now = 5.0
    r = Request(0, 1.5, 2, 1)
    loop.add(r)
    assert r.arrival_time == 1.5


def test_duplicate_id_raises_while_in_the_system():
    loop = _loop(Greedy())
    loop.add(Request(1, 0.0, 3, 3))
    with pytest.raises(ValueError, match="already in the system"):
        loop.add(Request(1, 0.0, 2, 2))
    loop.step()  # now resident
    with pytest.raises(ValueError, match="already in the system"):
        loop.add(Request(1, 0.0, 2, 2))


def test_too_large_request_is_rejected_with_a_reason():
    s = Greedy()
    loop = _loop(s, capacity=16, block_size=4)
    r = Request(3, 0.0, 10, 8)  # peak 17 tokens > 16
    loop.add(r)
    assert r.status is RequestStatus.REJECTED
    assert "request 3" in r.reject_reason and "capacity is 16" in r.reject_reason
    assert not loop.has_work
    loop.step()
    assert s.views == []  # the scheduler never sees it


def test_abort_unknown_or_finished_returns_none():
    loop = _loop(Greedy())
    assert loop.abort(42) is None
    r = Request(0, 0.0, 2, 1)
    loop.add(r)
    loop.step()
    assert r.status is RequestStatus.FINISHED
    assert loop.abort(0) is None and r.status is RequestStatus.FINISHED


def test_abort_waiting_and_resident():
    s = Greedy()
    loop = _loop(s, capacity=50)
    a, b, c = Request(0, 0.0, 4, 5), Request(1, 0.0, 4, 5), Request(2, 0.0, 4, 5)
    for r in (a, b):
        loop.add(r)
    loop.step()  # a and b resident
    used = loop.kv.num_used_tokens
    assert used == 8
    loop.add(c)
    loop.now = 7.5
    assert loop.abort(2) is c  # waiting: never ran
    assert c.status is RequestStatus.ABORTED and c.is_finished and c.finish_time == 7.5
    assert loop.abort(0) is a  # resident: KV freed at once
    assert a.status is RequestStatus.ABORTED and loop.kv.num_blocks_of(0) == 0
    assert loop.kv.num_used_tokens == 4 and a.attempts[-1][2] == "abort"
    assert loop.abort(0) is None  # gone already
    loop.step()
    view = s.views[-1]
    # c arrived and left before the scheduler saw it: it is told about neither.
    assert [r.request_id for r in view.finished] == [0] and not view.arrived
    assert set(view.resident) == {1} and not view.waiting


def test_abort_everything_leaves_no_work():
    loop = _loop(Greedy())
    loop.add(Request(0, 0.0, 3, 4))
    loop.step()
    loop.abort(0)
    assert not loop.has_work and loop.kv.num_used_tokens == 0 and loop.kv.num_free_blocks == loop.kv.num_blocks


def test_stopped_request_ends_after_this_steps_token():
    backend = StoppingBackend(UnitCost(), stop_at={0: 2})
    loop = OnlineLoop(Greedy(), backend, KVCache(100, 1))
    r = Request(0, 0.0, 3, 10)  # output_len is max_tokens
    loop.add(r)
    loop.step()  # prefill: token 1
    assert r.num_output_tokens == 1 and r.status is RequestStatus.RUNNING
    loop.step()  # token 2, stopped
    assert r.status is RequestStatus.FINISHED and r.num_output_tokens == r.output_len == 2
    assert not backend.stopped and loop.kv.num_used_tokens == 0


class PromisingGreedy(Greedy):
    """Greedy that promises to repeat its decision (what lets the batch loop fast-forward)."""

    def schedule(self, view):
        return Decision(super().schedule(view).run, repeat=1 << 30)


def test_online_loop_never_fast_forwards():
    """A decode run is one step per call even when the backend and the scheduler would
    allow more: a stop, an add or an abort can come between any two steps."""
    loop = OnlineLoop(PromisingGreedy(), SimBackend(UnitCost(), fast_forward=True), KVCache(100, 1))
    r = Request(0, 0.0, 3, 10)
    loop.add(r)
    for expected in range(1, 5):
        loop.step()
        assert r.num_output_tokens == expected
    assert loop.pop_steps()["num_steps"] == [1, 1, 1, 1]


def test_an_id_is_reusable_only_after_the_scheduler_heard_it_left():
    s = Greedy()
    loop = _loop(s)
    loop.add(Request(0, 0.0, 3, 4))
    loop.step()
    loop.abort(0)
    with pytest.raises(ValueError, match="already in the system"):
        loop.add(Request(0, 0.0, 3, 4))  # the abort is still to be reported
    loop.add(Request(1, 0.0, 3, 4))
    loop.step()
    assert [r.request_id for r in s.views[-1].finished] == [0]
    loop.add(Request(0, 0.0, 2, 2))


def test_idle_until_reports_what_the_scheduler_waits_for():
    loop = _loop(Idler())
    loop.add(Request(0, 0.0, 2, 2))
    loop.step()
    assert loop.idle_until == math.inf  # until something arrives
    loop = _loop(Idler(until=3.0))
    loop.add(Request(0, 0.0, 2, 2))
    loop.step()
    assert loop.idle_until == 3.0 and loop.now == 0.0  # the caller advances the clock
    loop.now = 3.0
    loop.step()
    assert loop.idle_until == math.inf  # a time already reached is no reason to wait


def test_pop_steps_hands_rows_out_once():
    loop = _loop(Greedy())
    loop.add(Request(0, 0.0, 3, 3))
    loop.step()
    loop.step()
    rows = loop.pop_steps()
    assert set(rows) == set(STEP_COLUMNS)
    assert rows["step"] == [0, 1] and rows["num_finished"] == [0, 0]
    assert loop.pop_steps() == {c: [] for c in STEP_COLUMNS}
    loop.step()
    assert loop.pop_steps()["num_finished"] == [1]


def test_wait_family_holds_a_lone_request_until_no_more_arrive():
    """Online, arrivals are always pending, so WAIT's gate holds a type with fewer than
    n_j waiting requests indefinitely; clearing `accepting` is the drain signal (A17)."""
    workload = [Request(0, 0.0, 4, 3), Request(1, 0.0, 4, 6)]
    loop = OnlineLoop(create_scheduler("wait", workload, thresholds="2,2"), SimBackend(COST, fast_forward=False),
                      KVCache(200, 1))
    loop.add(workload[0])
    loop.step()
    assert loop.idle_until == math.inf and workload[0].first_scheduled_time is None
    loop.accepting = False
    while loop.has_work:
        loop.step()
        assert loop.idle_until is None
    assert workload[0].status is RequestStatus.FINISHED


# --- every scheduler through random server histories ----------------------------------------

# abort modes: when (if ever) the client disconnects
ABORT_MODES = ("never", "on_add", "at_iteration", "when_waiting", "when_preempted", "when_running")

request_specs = st.tuples(
    st.floats(0.0, 0.15, allow_nan=False),  # gap before this request is added (s)
    st.integers(1, 40),  # prompt
    st.integers(1, 30),  # max_tokens (output_len bound)
    st.one_of(st.none(), st.integers(1, 29)),  # stop at this token (EOS), if before max_tokens
    st.sampled_from(ABORT_MODES),
    st.integers(0, 40),  # abort parameter: iteration, or tokens before a running abort
    st.floats(0.2, 1.5, allow_nan=False),  # prediction / max_tokens
)
histories = st.lists(request_specs, min_size=1, max_size=14)
systems = st.tuples(st.integers(16, 120), st.sampled_from([1, 4, 16]))  # tight: preemptions happen


def _workload(specs):
    out, t = [], 0.0
    for i, (gap, prompt, max_tokens, _stop, _mode, _param, ratio) in enumerate(specs):
        t += gap
        # Predictions of the true length, which a stop may cut short: under and over.
        pred = max(1, round(max_tokens * ratio))
        interval = (max(1, round(max_tokens * ratio / 3)), max(1, round(max_tokens * ratio * 1.5)))
        out.append(Request(i, t, prompt, max_tokens, pred, interval))
    return out


def _drive(name, specs, capacity, block_size, **opts):
    workload = _workload(specs)
    scheduler = create_scheduler(name, [r.copy_fresh() for r in workload], **opts)
    stop_at = {r.request_id: s[3] for r, s in zip(workload, specs) if s[3] is not None and s[3] < r.output_len}
    backend = StoppingBackend(COST, stop_at)
    kv = KVCache(capacity, block_size)
    loop = OnlineLoop(scheduler, backend, kv, check_oracle=True)
    num_blocks = kv.num_blocks
    modes = {r.request_id: (s[4], s[5]) for r, s in zip(workload, specs)}
    pending = list(workload)  # in add order
    added: dict[int, Request] = {}
    aborted: set[int] = set()

    def abort(rid):
        r = added[rid]
        was = r.status
        got = loop.abort(rid)
        if was in (RequestStatus.WAITING, RequestStatus.RUNNING):
            assert got is r and r.status is RequestStatus.ABORTED
            if was is RequestStatus.RUNNING:
                event("abort running")
            else:
                event("abort preempted" if r.num_evictions else "abort waiting (never ran)")
            assert kv.num_blocks_of(rid) == 0
            aborted.add(rid)
        else:
            assert got is None and r.status is was

    for iteration in range(MAX_ITERATIONS):
        while pending and pending[0].arrival_time <= loop.now:
            r = pending.pop(0)
            loop.add(r)
            added[r.request_id] = r
            if modes[r.request_id][0] == "on_add":
                abort(r.request_id)
        if not pending and _gates_on_arrivals(name):
            # The WAIT family holds requests back while more may arrive (a type waits for
            # n_j of its kind) and drains only once told that none will (A17): a server
            # with nothing more to add says so. Before this, arrivals_pending is True.
            loop.accepting = False
        # Client disconnects, decided between steps as a server would see them.
        for rid, r in list(added.items()):
            if rid in aborted or r.status not in (RequestStatus.WAITING, RequestStatus.RUNNING):
                continue
            mode, param = modes[rid]
            if (
                (mode == "at_iteration" and iteration >= param)
                or (mode == "when_waiting" and r.status is RequestStatus.WAITING and iteration >= param % 4)
                or (mode == "when_preempted" and r.status is RequestStatus.WAITING and r.num_evictions)
                or (mode == "when_running" and r.status is RequestStatus.RUNNING
                    and r.num_output_tokens >= param % 8)
            ):
                abort(rid)
        if not loop.has_work:
            if not pending:
                break
            loop.now = max(loop.now, pending[0].arrival_time)
            continue
        try:
            loop.step()
        except InfeasibleSchedule:
            # Only a policy whose own rule declares overflows infeasible may (alpha-protection greedy).
            assert getattr(scheduler, "may_declare_infeasible", False)
            return None
        kv.check()
        rows = loop.pop_steps()
        assert max(rows["kv_used_blocks"], default=0) <= num_blocks
        assert all(u <= b * block_size for u, b in zip(rows["kv_used_tokens"], rows["kv_used_blocks"]))
        assert kv.num_free_blocks >= 0
        assert set(kv.block_counts) == set(loop.resident)
        if loop.idle_until is not None:
            next_add = pending[0].arrival_time if pending else math.inf
            until = min(loop.idle_until, next_add)
            if until == math.inf:
                pytest.fail(f"{name}: livelock: idles forever with {len(loop.waiting)} waiting and "
                            f"{len(loop.resident)} resident requests and nothing left to add")
            assert until > loop.now or until == next_add
            loop.now = max(loop.now, until)
    else:
        pytest.fail(f"{name}: no progress after {MAX_ITERATIONS} iterations: {len(loop.waiting)} waiting, "
                    f"{len(loop.resident)} resident, {len(pending)} to add")

    assert not pending and not loop.waiting and not loop.resident
    assert kv.num_used_tokens == 0 and kv.num_free_blocks == num_blocks
    for r in workload:
        rid = r.request_id
        if rid in aborted:
            assert r.status is RequestStatus.ABORTED and kv.num_blocks_of(rid) == 0
            assert r.finish_time is not None
            continue
        if blocks_for(r.prompt_len + r.output_len - 1, block_size) > num_blocks:
            assert r.status is RequestStatus.REJECTED and r.reject_reason, (name, r)
            continue
        assert r.status is RequestStatus.FINISHED, (name, r)
        if r.num_evictions:
            event("evicted and finished")
        if rid in backend.stopped_with:
            event("stopped early")
            assert r.num_output_tokens == r.output_len == backend.stopped_with[rid], (name, r)
        else:
            assert rid not in stop_at or stop_at[rid] > r.num_output_tokens
            assert r.num_output_tokens == r.output_len, (name, r)
        assert r.arrival_time <= r.first_token_time <= r.finish_time
    return loop


@pytest.mark.parametrize("name", SCHEDULERS.names())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=histories, system=systems)
def test_every_scheduler_survives_a_server_history(name, specs, system):
    _drive(name, specs, *system)


# Options that change how a scheduler queues, evicts or gates (other code paths for aborts).
VARIANTS = [
    ("vllm", {"policy": "priority"}),
    ("vllm", {"preemption": "restart"}),
    ("vllm", {"long_prefill_token_threshold": 8, "max_num_batched_tokens": 24}),
    ("sjf", {"predictor": "predicted"}),
    ("fcfs-static", {"predictor": "predicted"}),
    ("mcsf", {"preemption": "recompute"}),
    ("mcsf", {"skip_infeasible": True, "clearing": "bernoulli", "beta": 0.5}),
    ("a-min", {"refine": "double"}),
    ("beta-clearing", {"clearing": "bernoulli", "beta": 0.3}),
    ("gsa", {"resume": True}),
    ("gba", {"stagger": False}),
    ("wait", {"wait_gate": False}),
    ("wait", {"rates": "online", "min_samples": 2, "check_every_s": 0.05, "window_s": 1.0}),
    ("nested-wait", {"wait_gate": False}),
    ("nested-wait", {"rates": "online", "min_samples": 2, "check_every_s": 0.05, "window_s": 1.0}),
    ("wait-cp", {"rates": "online", "min_samples": 2, "check_every_s": 0.05, "window_s": 1.0}),
]


@pytest.mark.parametrize("name, opts", VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=histories, system=systems)
def test_scheduler_variants_survive_a_server_history(name, opts, specs, system):
    _drive(name, specs, *system, **opts)
