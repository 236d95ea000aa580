"""Hand-computed scenarios, one per rule of docs/schedulers.md (the baselines).

All use unit-time steps and token-exact KV (block_size 1) so every number can be
followed by hand; the expected decisions are derived in the comments.
"""

import pytest
from conftest import Recorder, reqs

from kvsched.registry import SCHEDULERS
from kvsched.sim import simulate
from kvsched.sim.cost import UnitCost


def _sim(name, workload, capacity=100, block_size=1, **opts):
    rec = Recorder(SCHEDULERS.create(name, **opts))
    run = simulate(workload, rec, UnitCost(), capacity_tokens=capacity, block_size=block_size, max_steps=10_000)
    by_id = {r.request_id: r for r in run.requests}
    calls = [(now, dict(d.run), d.preempt) for now, d in rec.decisions]
    return by_id, calls


def test_vllm_tail_victim_admission_freeze_and_recompute():
    # A, B: prompt 4, output 5 at t=0; C: prompt 1, output 1 at t=1.5; capacity 10 tokens.
    by_id, calls = _sim("vllm", reqs((0, 4, 5), (0, 4, 5), (1.5, 1, 1)), capacity=10)
    assert calls == [
        (0.0, {0: 4, 1: 4}, ()),  # both prefill: 8 tokens
        (1.0, {0: 1, 1: 1}, ()),  # decode: 10 tokens, memory full
        (2.0, {0: 1}, (1,)),  # A needs a slot: the tail (B) is preempted; C fits but admission is frozen
        (3.0, {0: 1}, ()),  # B (head of queue) needs 6 > 3 free, so C waits behind it; runs until A ends
        (5.0, {1: 6, 2: 1}, ()),  # B recomputes prompt + its 2 outputs and emits token 3; C runs
        (6.0, {1: 1}, ()),
    ]
    a, b, c = by_id[0], by_id[1], by_id[2]
    assert (a.first_token_time, a.finish_time, a.num_preemptions) == (1.0, 5.0, 0)
    assert (b.first_token_time, b.finish_time, b.num_preemptions, b.num_wasted_tokens) == (1.0, 8.0, 1, 5)
    assert (c.first_token_time, c.finish_time) == (6.0, 6.0)


def test_vllm_budget_shared_by_prefill_chunks_and_decodes():
    # budget 6: A takes 4, B gets a 2-token chunk; next step A's decode and B's last 3 tokens.
    by_id, calls = _sim("vllm", reqs((0, 4, 3), (0, 5, 2)), max_num_batched_tokens=6)
    assert [c[1] for c in calls] == [{0: 4, 1: 2}, {0: 1, 1: 3}, {0: 1, 1: 1}]
    assert by_id[1].first_token_time == 2.0  # the chunk emitted nothing, the catch-up step did


def test_vllm_without_chunked_prefill_a_long_prompt_stops_admission():
    _, calls = _sim("vllm", reqs((0, 4, 3), (0, 5, 2)), max_num_batched_tokens=6, enable_chunked_prefill=False)
    assert [c[1] for c in calls][:2] == [{0: 4}, {0: 1, 1: 5}]


def test_vllm_max_num_seqs_limits_running_requests():
    by_id, calls = _sim("vllm", reqs((0, 2, 2), (0, 2, 2)), max_num_seqs=1)
    assert calls[0][1] == {0: 2}
    assert by_id[1].first_scheduled_time == by_id[0].finish_time


def test_vllm_victim_rule_tail_for_fcfs_latest_arrival_for_priority():
    # Running list in admission order; the tail (id 2) arrived before id 1, e.g. after a
    # readmission. FCFS preempts the tail, PRIORITY the latest arrival.
    early, late, readmitted = reqs((0.0, 1, 1), (5.0, 1, 1), (1.0, 1, 1))
    fcfs = SCHEDULERS.create("vllm")
    assert fcfs._pick_victim([early, late, readmitted]) is readmitted
    prio = SCHEDULERS.create("vllm", policy="priority")
    assert prio._pick_victim([early, late, readmitted]) is late


def test_sarathi_decodes_first_then_chunks_within_chunk_size():
    # chunk 4: A (prompt 6) gets 4, then 2 + B's first 2; then A decodes while B finishes its prompt.
    by_id, calls = _sim("sarathi", reqs((0, 6, 3), (0, 3, 2)), chunk_size=4, watermark_fraction=0.0)
    assert [c[1] for c in calls] == [{0: 4}, {0: 2, 1: 2}, {0: 1, 1: 1}, {0: 1, 1: 1}]
    assert (by_id[0].first_token_time, by_id[1].first_token_time) == (2.0, 3.0)
    assert by_id[0].finish_time == by_id[1].finish_time == 4.0


def test_sarathi_admission_needs_whole_prompt_above_watermark():
    # 100 blocks, watermark 10: A holds 50 (prompt) and will grow; B's prompt of 45
    # would leave 5 < 10 free, so B waits until A is gone.
    by_id, _ = _sim("sarathi", reqs((0, 50, 3), (0, 45, 2)), capacity=100, chunk_size=512, watermark_fraction=0.1)
    assert by_id[1].first_scheduled_time == by_id[0].finish_time


def test_vidur_watermark_is_waived_for_an_empty_system():
    by_id, _ = _sim("sarathi", reqs((0, 95, 2)), capacity=100, watermark_fraction=0.1)
    assert by_id[0].finish_time == 2.0


def test_vidur_vllm_prefill_first_pauses_decodes():
    by_id, calls = _sim("vidur-vllm", reqs((0, 3, 3), (1.5, 2, 2)), watermark_fraction=0.0)
    assert [c[1] for c in calls] == [{0: 3}, {0: 1}, {1: 2}, {0: 1, 1: 1}]
    assert by_id[0].finish_time == by_id[1].finish_time == 4.0


def test_vidur_vllm_tokens_in_batch_counted_as_len_times_max():
    _, calls = _sim("vidur-vllm", reqs((0, 3, 1), (0, 3, 1), (0, 3, 1)), max_tokens_in_batch=7,
                    watermark_fraction=0.0)
    assert [c[1] for c in calls] == [{0: 3, 1: 3}, {2: 3}]


def test_vidur_vllm_restarts_latest_arrival_on_block_shortage():
    by_id, calls = _sim("vidur-vllm", reqs((0, 4, 5), (0.5, 4, 5)), capacity=10, watermark_fraction=0.0)
    preempted = [p for _, _, pre in calls for p in pre]
    assert preempted and set(preempted) == {1}
    assert by_id[1].num_preemptions >= 1 and by_id[0].num_preemptions == 0


def test_fcfs_static_reserves_peak_and_never_preempts():
    # A's peak is 4 + 5 - 1 = 8; B's is 3: 11 > 10, so B starts only after A ends.
    by_id, calls = _sim("fcfs-static", reqs((0, 4, 5), (0, 2, 2)), capacity=10)
    assert all(not pre for _, _, pre in calls)
    assert by_id[1].first_scheduled_time == by_id[0].finish_time
    # vLLM on the same workload admits both at once and has to preempt.
    vllm_by_id, _ = _sim("vllm", reqs((0, 4, 5), (0, 2, 2)), capacity=10)
    assert vllm_by_id[1].first_scheduled_time == 0.0


@pytest.mark.parametrize("name", ["sjf", "srpt"])
def test_sjf_serves_shortest_predicted_output_first(name):
    by_id, _ = _sim(name, reqs((0, 2, 5), (0, 2, 1), (0, 2, 3)), max_num_seqs=1)
    order = sorted(by_id.values(), key=lambda r: r.finish_time)
    assert [r.request_id for r in order] == [1, 2, 0]


def test_sjf_with_predictions_uses_them_not_the_truth():
    workload = reqs((0, 2, 5), (0, 2, 1))
    workload[0].predicted_output_len = 1  # wrong on purpose: predicted short
    workload[1].predicted_output_len = 9
    by_id, _ = _sim("sjf", workload, max_num_seqs=1, predictor="predicted")
    assert by_id[0].finish_time < by_id[1].finish_time


def test_unknown_scheduler_option_is_an_error():
    with pytest.raises(TypeError):
        SCHEDULERS.create("vllm", nope=1)
    with pytest.raises(ValueError, match="max_num_seqs"):
        SCHEDULERS.create("vllm", max_num_seqs=0)
