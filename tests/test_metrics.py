"""Metrics on scenarios small enough to compute by hand.

All scenarios use UnitCost (every step lasts 1 s), block_size 1 (token-exact KV) and
the real vLLM scheduler with its defaults (token budget 2048, so every prompt here
is prefilled in one step). Conventions (kvsched.metrics): a step that emits a token
emits it at the step's end; TTFT = first token - arrival; e2e = last token - arrival;
TPOT = (e2e - TTFT) / (output_len - 1); throughput = output tokens of *completed*
requests / makespan (first arrival to the end of the last step); KV statistics are
weighted by step duration. numpy's default (linear) percentiles:
p_q of sorted x[0..n-1] = x[i] + f * (x[i+1] - x[i]) with i + f = q/100 * (n - 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import reqs
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvsched.loop import STEP_COLUMNS
from kvsched.metrics import PERCENTILES, percentiles, requests_frame, steps_frame, summarize
from kvsched.registry import SCHEDULERS
from kvsched.sim import simulate
from kvsched.sim.cost import UnitCost

FAST_FORWARD = pytest.mark.parametrize("fast_forward", [False, True], ids=["stepwise", "fast-forward"])


def _sim(requests, capacity, *, fast_forward=False, block_size=1, step_time_s=1.0):
    return simulate(requests, SCHEDULERS.create("vllm"), UnitCost(step_time_s), capacity_tokens=capacity,
                    block_size=block_size, fast_forward=fast_forward)


# --- scenario 1: a rejected request, a late arrival, one-token output --------------------------
#
# capacity 10 tokens. Requests (arrival, prompt, output):
#   R0 (0.0, 4, 3)   R1 (0.0, 2, 1)   R2 (0.5, 20, 5)   R3 (1.5, 3, 2)
# R2 needs 20 + 5 - 1 = 24 > 10 KV tokens at its last step: rejected when it is admitted.
#   step 0, t 0->1: prefill R0 (4) and R1 (2); KV 4 + 2 = 6. Both emit token 1 at t=1;
#                   R1 (output 1) finishes at 1 and frees its 2 tokens.
#   t=1: R2 arrives (0.5 <= 1) and is rejected.
#   step 1, t 1->2: R0 decodes: KV 5. R0 token 2 at t=2.
#   t=2: R3 arrives (1.5 <= 2).
#   step 2, t 2->3: R0 decodes (KV 6) and R3 prefills 3: KV 9. R0 token 3 -> finishes at 3;
#                   R3 token 1 at 3.
#   step 3, t 3->4: R3 decodes: KV 3 + 1 = 4. R3 token 2 -> finishes at 4.
# Per request:      TTFT            e2e              TPOT
#   R0              1 - 0   = 1     3 - 0   = 3      (3 - 1) / 2 = 1
#   R1              1 - 0   = 1     1 - 0   = 1      undefined (one output token)
#   R3              3 - 1.5 = 1.5   4 - 1.5 = 2.5    (2.5 - 1.5) / 1 = 1
# TTFT sorted [1, 1, 1.5]: mean 3.5/3; p50 = 1; p90: i+f = 1.8 -> 1 + 0.8*0.5 = 1.4; p99: 1 + 0.98*0.5 = 1.49
# e2e sorted [1, 2.5, 3]:  mean 6.5/3; p50 = 2.5; p90 = 2.5 + 0.8*0.5 = 2.9;      p99 = 2.5 + 0.98*0.5 = 2.99
# Throughput: completed output tokens 3 + 1 + 2 = 6 (R2's 5 do not count) over makespan 4 -> 1.5 tok/s;
#             3 completed requests / 4 s = 0.75 req/s.
# KV per step [6, 5, 9, 4], each 1 s: peak 9, time-weighted mean 24 / 4 = 6.
SCENARIO_1 = ((0.0, 4, 3), (0.0, 2, 1), (0.5, 20, 5), (1.5, 3, 2))


@FAST_FORWARD
def test_scenario_1_per_request_metrics(fast_forward):
    df = requests_frame(_sim(reqs(*SCENARIO_1), 10, fast_forward=fast_forward))
    assert df["request_id"].tolist() == [0, 1, 2, 3]
    assert df["status"].tolist() == ["finished", "finished", "rejected", "finished"]
    np.testing.assert_array_equal(df["first_token_time"], [1.0, 1.0, np.nan, 3.0])
    np.testing.assert_array_equal(df["finish_time"], [3.0, 1.0, np.nan, 4.0])
    np.testing.assert_array_equal(df["ttft"], [1.0, 1.0, np.nan, 1.5])
    np.testing.assert_array_equal(df["e2e_latency"], [3.0, 1.0, np.nan, 2.5])
    np.testing.assert_array_equal(df["tpot"], [1.0, np.nan, np.nan, 1.0])
    assert df["reject_reason"].tolist()[0] == "" and "24 KV tokens" in df["reject_reason"][2]
    assert "capacity is 10 tokens" in df["reject_reason"][2]


@FAST_FORWARD
def test_scenario_1_summary(fast_forward):
    s = summarize(_sim(reqs(*SCENARIO_1), 10, fast_forward=fast_forward))
    expected = {
        "num_requests": 4, "num_completed": 3, "num_rejected": 1,
        "ttft_mean": 3.5 / 3, "ttft_p50": 1.0, "ttft_p90": 1.4, "ttft_p99": 1.49,
        "e2e_mean": 6.5 / 3, "e2e_p50": 2.5, "e2e_p90": 2.9, "e2e_p99": 2.99,
        "tpot_mean": 1.0, "tpot_p50": 1.0, "tpot_p90": 1.0, "tpot_p99": 1.0,
        "num_completed_output_tokens": 6,
        "throughput_tokens_per_s": 6 / 4,  # not (6 + 5) / 4: the rejected request's tokens never count
        "throughput_requests_per_s": 3 / 4,
        "num_preemptions": 0, "num_restarts": 0, "num_preempted_requests": 0, "num_wasted_tokens": 0,
        "num_discarded_tokens": 0, "num_recomputed_prompt_tokens": 0, "wasted_kv_area": 0,
        "prefix_hit_rate": 0.0, "num_cached_tokens": 0, "num_reused_tokens": 0, "num_prefill_tokens_computed": 9,
        "peak_kv_tokens": 9, "peak_kv_blocks": 9, "mean_kv_tokens": 6.0,
        "capacity_tokens": 10, "block_size": 1, "num_steps": 4, "makespan_s": 4.0, "busy_time_s": 4.0,
    }
    assert set(s) == set(expected)
    for key, value in expected.items():
        assert s[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        assert type(s[key]) is type(value), f"{key}: {type(s[key]).__name__}"  # plain int/float for JSON


def test_scenario_1_steps_frame():
    run = _sim(reqs(*SCENARIO_1), 10)
    steps = steps_frame(run)
    assert tuple(steps.columns) == STEP_COLUMNS
    assert steps["kv_used_tokens"].tolist() == [6, 5, 9, 4]
    assert steps["start_time"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert steps["num_prefill_tokens"].tolist() == [6, 0, 3, 0]
    assert steps["num_finished"].tolist() == [1, 0, 1, 1]


# --- scenario 2: a preemption -------------------------------------------------------------------
#
# capacity 6 tokens. R0 (0, 3, 3) peaks at 5 tokens, R1 (0, 2, 3) at 4: both fit alone.
#   step 0, t 0->1: prefill R0 (3) and R1 (2): KV 5. Both emit token 1 at t=1.
#   step 1, t 1->2: R0 decodes to 4 tokens (1 free block left, now 0). R1 needs a block too:
#                   vLLM preempts the tail of the running list, R1 itself (2 tokens wasted).
#                   KV 4. R0 token 2 at 2.
#   step 2, t 2->3: R0 decodes: KV 5; R1 must recompute 3 tokens (prompt 2 + 1 output),
#                   only 1 free: not admitted. R0 token 3 -> finishes at 3.
#   step 3, t 3->4: R1 recomputes 3 tokens: KV 3, emits token 2 at 4.
#   step 4, t 4->5: R1 decodes: KV 4, token 3 -> finishes at 5.
# R0: TTFT 1, e2e 3, TPOT (3-1)/2 = 1.   R1: TTFT 1 (its first token came before the
# preemption), e2e 5, TPOT (5-1)/2 = 2. TPOT sorted [1, 2]: mean 1.5, p90 = 1 + 0.9 = 1.9.
# e2e [3, 5]: mean 4, p50 4, p99 3 + 0.99*2 = 4.98.
# KV [5, 4, 5, 3, 4]: peak 5, mean 21/5 = 4.2. Throughput 6 tokens / 5 s = 1.2.


@FAST_FORWARD
def test_scenario_2_preemption(fast_forward):
    run = _sim(reqs((0.0, 3, 3), (0.0, 2, 3)), 6, fast_forward=fast_forward)
    df = requests_frame(run)
    np.testing.assert_array_equal(df["ttft"], [1.0, 1.0])
    np.testing.assert_array_equal(df["e2e_latency"], [3.0, 5.0])
    np.testing.assert_array_equal(df["tpot"], [1.0, 2.0])
    assert df["num_preemptions"].tolist() == [0, 1]
    assert df["num_wasted_tokens"].tolist() == [0, 2]
    assert run.steps["kv_used_tokens"] == [5, 4, 5, 3, 4]
    assert run.steps["num_preempted"] == [0, 1, 0, 0, 0]
    s = summarize(run, df)
    assert s["num_preemptions"] == 1 and s["num_preempted_requests"] == 1 and s["num_wasted_tokens"] == 2
    assert s["tpot_mean"] == pytest.approx(1.5) and s["tpot_p90"] == pytest.approx(1.9)
    assert s["e2e_mean"] == pytest.approx(4.0) and s["e2e_p99"] == pytest.approx(4.98)
    assert s["peak_kv_tokens"] == 5 and s["mean_kv_tokens"] == pytest.approx(4.2)
    assert s["throughput_tokens_per_s"] == pytest.approx(1.2) and s["makespan_s"] == 5.0


# --- scenario 3: idle time counts in the makespan, not in KV statistics -------------------------
#
# R0 (0, 2, 2), R1 (10, 5, 1), capacity 100, steps of 0.5 s:
#   step 0, t 0->0.5: prefill R0: KV 2, token 1.   step 1, t 0.5->1: decode: KV 3, finished at 1.
#   idle until t=10.   step 2, t 10->10.5: prefill R1: KV 5, token 1 -> finished at 10.5.
# makespan 10.5 s, busy 1.5 s. Throughput (2 + 1) / 10.5. Mean KV over busy time
# (2 + 3 + 5) * 0.5 / 1.5 = 10/3 (idle time is not averaged in). TTFT [0.5, 0.5], e2e [1, 0.5].


def test_scenario_3_idle_gap():
    s = summarize(_sim(reqs((0.0, 2, 2), (10.0, 5, 1)), 100, step_time_s=0.5))
    assert s["makespan_s"] == 10.5 and s["busy_time_s"] == 1.5
    assert s["throughput_tokens_per_s"] == pytest.approx(3 / 10.5)
    assert s["throughput_requests_per_s"] == pytest.approx(2 / 10.5)
    assert s["mean_kv_tokens"] == pytest.approx(10 / 3)
    assert s["peak_kv_tokens"] == 5
    assert s["ttft_mean"] == 0.5 and s["e2e_mean"] == 0.75
    assert s["tpot_mean"] == 0.5  # only R0 has more than one token: (1 - 0.5) / 1


# --- scenario 4: blocks ------------------------------------------------------------------------
#
# capacity 10 tokens in blocks of 4 -> 2 blocks = 8 usable tokens. R0 (0, 5, 2) peaks at 6 tokens.
#   step 0: prefill 5 tokens -> 2 blocks.   step 1: decode to 6 tokens -> still 2 blocks.
# peak 6 tokens / 2 blocks; mean (5 + 6) / 2 = 5.5 tokens; capacity reported as 8 tokens.


def test_scenario_4_block_granularity():
    run = _sim(reqs((0.0, 5, 2)), 10, block_size=4)
    assert run.steps["kv_used_blocks"] == [2, 2]
    s = summarize(run)
    assert s["capacity_tokens"] == 8 and s["block_size"] == 4
    assert s["peak_kv_tokens"] == 6 and s["peak_kv_blocks"] == 2
    assert s["mean_kv_tokens"] == pytest.approx(5.5)


# --- degenerate runs ------------------------------------------------------------------------------


def test_every_request_rejected():
    # Nothing runs: no steps, latency statistics undefined (NaN), counters zero.
    s = summarize(_sim(reqs((0.0, 50, 60)), 100))
    assert s["num_requests"] == 1 and s["num_rejected"] == 1 and s["num_completed"] == 0
    assert s["num_steps"] == 0 and s["peak_kv_tokens"] == 0 and s["mean_kv_tokens"] == 0.0
    assert s["num_completed_output_tokens"] == 0
    for key in ("ttft_mean", "ttft_p99", "e2e_mean", "tpot_p50", "throughput_tokens_per_s"):
        assert math.isnan(s[key]), key


def test_tpot_undefined_when_every_output_is_one_token():
    # R0 (0, 4, 1), R1 (0, 6, 1): one prefill step, both finish at 1; TPOT has no samples.
    s = summarize(_sim(reqs((0.0, 4, 1), (0.0, 6, 1)), 100))
    assert s["ttft_mean"] == s["e2e_mean"] == 1.0
    assert math.isnan(s["tpot_mean"]) and math.isnan(s["tpot_p99"])
    assert s["throughput_tokens_per_s"] == 2.0 and s["peak_kv_tokens"] == 10


# --- regressions: fast-forward-independent KV mean, makespan from the first arrival ------------


@pytest.mark.parametrize("fast_forward", [
    False,
    True,
], ids=["stepwise", "fast-forward"])
def test_time_weighted_mean_kv_does_not_depend_on_fast_forward(fast_forward):
    # One request (0, 10, 11): prefill step KV 10, then 10 decode steps holding 11, 12, ..., 20.
    # Eleven 1-s steps with KV 10..20: peak 20, time-weighted mean (10 + 20) / 2 = 15.
    # Fast-forward records the 10 decodes as one 10-s row whose kv_used_tokens is the last
    # step's 20, and summarize weights that by 10 s: (10 + 20*10) / 11 = 19.09.
    run = _sim(reqs((0.0, 10, 11)), 100, fast_forward=fast_forward)
    s = summarize(run)
    assert s["peak_kv_tokens"] == 20 and s["num_steps"] == 11 and s["busy_time_s"] == 11.0
    assert s["mean_kv_tokens"] == pytest.approx(15.0)


def test_makespan_starts_at_first_arrival():
    # R0 (5, 2, 2): steps 5->6 and 6->7. Makespan 7 - 5 = 2 s; throughput 2 tokens / 2 s = 1.
    s = summarize(_sim(reqs((5.0, 2, 2)), 100))
    assert s["makespan_s"] == 2.0
    assert s["throughput_tokens_per_s"] == 1.0


def test_rejected_late_arrival_does_not_stretch_makespan():
    # R0 (0, 2, 2) runs 0->1->2. R1 (100, 1000, 3) can never fit in 100 tokens: rejected at t=100.
    # The last step ends at 2: makespan 2, throughput 2 tokens / 2 s = 1 (not 2 / 100).
    s = summarize(_sim(reqs((0.0, 2, 2), (100.0, 1000, 3)), 100))
    assert s["num_rejected"] == 1
    assert s["makespan_s"] == 2.0
    assert s["throughput_tokens_per_s"] == 1.0


# --- load statistics: rates and the stability ratio ---------------------------------------------
#
# Eight requests (prompt 2, output 1) arrive at t = 0, 1, ..., 7 into a cache of 2 tokens, so they
# run one at a time and each finishes 1 s after it arrives: offered rate (8 - 1) / 7 = 1 req/s,
# completion rate 8 / (8 - 0) = 1 req/s, every latency 1 s, stability ratio 1. Squeezed into
# arrivals 0.25 s apart the queue grows: request k finishes at k + 1, latency 1 + 0.75 k, so the
# last quarter's mean (1 + 0.75 * 6.5) over the second quarter's (1 + 0.75 * 2.5) is 5.875 / 2.875.
def test_load_stats_by_hand():
    from kvsched.metrics import load_stats

    steady = load_stats(_sim(reqs(*[(float(k), 2, 1) for k in range(8)]), 2))
    assert steady == pytest.approx({"offered_rate_per_s": 1.0, "completion_rate_per_s": 1.0, "stability_ratio": 1.0})
    growing = load_stats(_sim(reqs(*[(0.25 * k, 2, 1) for k in range(8)]), 2))
    assert growing["offered_rate_per_s"] == pytest.approx(4.0)
    assert growing["completion_rate_per_s"] == pytest.approx(1.0)
    assert growing["stability_ratio"] == pytest.approx(5.875 / 2.875)


def test_summary_reads_a_step_table_as_its_mapping_of_lists():
    # summarize reads a StepTable's typed arrays directly; a run whose steps are the same
    # columns as plain lists (a saved or concatenated run) must give the same numbers, bit for
    # bit (the KV mean is a left-to-right float sum either way). Preemptions and fast-forward
    # rows make every steps column non-trivial.
    from dataclasses import replace

    run = _sim(reqs(*((0.1 * i, 3 + i % 5, 2 + i % 7) for i in range(40))), 30, fast_forward=True,
               step_time_s=0.37)
    assert hasattr(run.steps, "array") and len(run.steps["duration"]) > 1
    as_lists = replace(run, steps={c: run.steps[c] for c in STEP_COLUMNS})
    assert summarize(run) == summarize(as_lists)
    assert summarize(run)["num_preemptions"] > 0


_FLOATS = st.floats(allow_nan=False, allow_infinity=True, width=64)


@settings(max_examples=400, deadline=None)
@example([0.0] * 8 + [-0.0], [94.0]).via("ties of 0.0 and -0.0: where the partition puts them")
@example([0.0, -0.0, 0.0, -0.0, 5.0], [0.0, 50.0])
@given(st.lists(st.one_of(_FLOATS, st.sampled_from([0.0, -0.0, 1.0, 1e-300, 2.5])), min_size=1, max_size=60),
       st.lists(st.one_of(st.floats(0, 100), st.sampled_from(PERCENTILES)), min_size=1, max_size=5))
def test_percentiles_equal_numpys_bit_for_bit(values, q):
    # The summary's percentiles (metrics.percentiles, which imports no numpy.ma) are numpy's.
    values = np.array(values, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN in both
        expected = np.percentile(values, q)
        got = percentiles(values, q)
        assert got.tobytes() == expected.tobytes()
        assert percentiles(values).tobytes() == np.percentile(values, PERCENTILES).tobytes()


def test_percentiles_of_latencies_equal_numpys():
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 10, 101, 19_366):
        values = rng.lognormal(0.0, 2.0, n)
        assert percentiles(values).tobytes() == np.percentile(values, PERCENTILES).tobytes()
