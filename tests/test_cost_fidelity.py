"""The cost terms that bring the table models within reach of real vLLM (docs/fidelity.md):
the TP 2 all-reduce over the serving link, LLMServingSim's skew correction of decode
batches with mixed lengths, and the decode-length spread the loop hands the cost model."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.backend import BatchShape
from kvsched.kvcache import KVCache
from kvsched.loop import run
from kvsched.registry import COST_MODELS
from kvsched.request import Request
from kvsched.schedulers.vllm import VLLMScheduler
from kvsched.sim import tables
from kvsched.sim.backend import SimBackend

LLAMA = "llama3.1-8b-rtxpro6000"
QWEN_TP2 = "qwen3-32b-rtxpro6000-tp2"


def _alpha_row(name: str, key: tuple[str, ...]) -> float | None:
    """The alpha of one bucket, read straight from the shipped skew_fit.csv."""
    with tables.LLMSERVINGSIM_PRESETS[name].path("skew_fit").open(newline="") as f:
        for r in csv.DictReader(f):
            if (r["pc"], r["n_label"], r["skew_rate_label"], r["kv_big_label"], r["kp_label"]) == key:
                return float(r["alpha"])
    return None


def test_skew_correction_by_hand():
    """Eight decodes cached [3000 x 7, 500]: mean 2687.5, rate (2687.5-500)/(3000-500) = 0.875
    -> bucket pc=0 | n<=8 | sr>70% | kvB<=4k | kp=0 (alpha 0.2735); attention moves alpha of
    the way from the mean's to the longest's, in every layer."""
    impl = tables.load_table_set(LLAMA)
    plain = BatchShape(8, 0, 8, 7 * 3001 + 501)
    skewed = BatchShape(8, 0, 8, 7 * 3001 + 501, 0, 3000, 500)
    alpha = _alpha_row(LLAMA, ("0", "n<=8", "sr>70%", "kvB<=4k", "kp=0"))
    assert alpha == 0.2735
    at_mean, at_max = impl.attention(0, 0, 8, 2687.5), impl.attention(0, 0, 8, 3000)
    assert at_max > at_mean
    expected = impl.step_time(plain) + 1e-6 * 32 * alpha * (at_max - at_mean)
    assert impl.step_time(skewed) == pytest.approx(expected, rel=1e-12)


def test_skew_bucket_without_samples_uses_alpha_default():
    """A prefill chunk that is no profiled grid value has no bucket: the fit's pooled alpha."""
    impl = tables.load_table_set(LLAMA)
    pc, nd, kmax, kmin, mean = 1000, 8, 3000, 500, 1000
    kv = pc + nd * (mean + 1)
    plain = BatchShape(nd + 1, pc, nd, kv, pc * pc)
    skewed = BatchShape(nd + 1, pc, nd, kv, pc * pc, kmax, kmin)
    p, kp, n, kd = impl.coords(plain)
    assert (p, kp, n, kd) == (1000, 0.0, 8, 1000.0)
    delta = impl.attention(p, kp, n, kmax) - impl.attention(p, kp, n, kd)
    expected = impl.step_time(plain) + 1e-6 * 32 * 0.0543 * delta
    assert impl.step_time(skewed) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [
    BatchShape(4, 0, 4, 4 * 2001, 0, 2000, 2000),  # all decodes the same length
    BatchShape(1, 0, 1, 5001, 0, 5000, 5000),  # one decode
    BatchShape(4, 0, 4, 4 * 2001),  # spread unknown
    BatchShape(1, 512, 0, 512, 512 * 512),  # no decode
])
def test_no_skew_correction_without_a_spread(shape):
    impl = tables.load_table_set(LLAMA)
    plain = BatchShape(shape.num_seqs, shape.num_prefill_tokens, shape.num_decode_seqs, shape.num_kv_tokens,
                       shape.prefill_attn_tokens)
    assert impl.step_time(shape) == impl.step_time(plain)


def test_rtx4090_has_no_skew_fit():
    """LLMServingSim's RTX 4090 bundle has no skew fit in its meta: no correction, as upstream."""
    impl = tables.load_table_set("llama3.1-8b-rtx4090")
    assert impl.skew is None
    assert impl.step_time(BatchShape(4, 0, 4, 8004, 0, 5000, 1000)) == impl.step_time(BatchShape(4, 0, 4, 8004))


def test_tp2_all_reduce_by_hand():
    """Two all-reduces per layer of tokens x hidden x 2 B, each the measured 4 KB latency plus
    the bytes at 16 GB/s: 64 layers x 2 x (12.713 + 128 x 5120 x 2 / 16,000) us at 128 tokens."""
    impl = tables.load_table_set(QWEN_TP2)
    no_comm = impl.dense_us
    tokens = 128
    compute = tables._lerp1(no_comm, impl.dense_tokens.bracket(tokens))
    expected = compute + 64 * 2 * (12.713000178337097 + tokens * 5120 * 2 / 16e3)
    assert impl.dense(tokens) == pytest.approx(expected, rel=1e-12)
    assert tables.load_table_set(LLAMA).allreduce_us is None  # TP 1: no all-reduce


@pytest.mark.parametrize("name", [LLAMA, QWEN_TP2])
@settings(max_examples=60, deadline=None)
@given(num_seqs=st.integers(2, 300), mean=st.integers(1, 20_000), low=st.integers(0, 20_000),
       high=st.integers(0, 20_000), num_steps=st.integers(0, 40))
def test_decode_run_with_spread_equals_step_loop(name, num_seqs, mean, low, high, num_steps):
    """The fast path (a run of decode steps in numpy) gives the step loop's times bit for bit."""
    kmin, kmax = max(1, mean - low), mean + high
    model = COST_MODELS.create(name)
    first = BatchShape(num_seqs, 0, num_seqs, num_seqs * (mean + 1), 0, kmax, kmin)
    fast = model.decode_times_for(first, num_steps)
    slow = [model.step_time(BatchShape(num_seqs, 0, num_seqs, num_seqs * (mean + 1 + i), 0, kmax + i, kmin + i))
            for i in range(num_steps)]
    np.testing.assert_array_equal(fast, np.array(slow, dtype=np.float64))


class _Recording(SimBackend):
    def __init__(self, cost_model):
        super().__init__(cost_model, fast_forward=False)
        self.seen = []

    def execute(self, batch, shape):
        decodes = [r.num_computed_tokens for r, n in batch if n == 1 and r.num_output_tokens > 0]
        self.seen.append((shape, decodes))
        return super().execute(batch, shape)


def test_loop_hands_the_decode_length_spread_to_the_cost_model():
    reqs = [Request(i, 0.01 * i, 20 + 37 * i, 30 + 5 * i) for i in range(12)]
    backend = _Recording(COST_MODELS.create(LLAMA))
    run(reqs, VLLMScheduler(max_num_batched_tokens=64), backend, KVCache(100_000, 16))
    spread = 0
    for shape, decodes in backend.seen:
        assert shape.num_decode_seqs == len(decodes)
        assert (shape.max_decode_kv_len, shape.min_decode_kv_len) == ((max(decodes), min(decodes)) if decodes
                                                                        else (0, 0))
        spread += bool(decodes) and max(decodes) > min(decodes)
    assert spread > 10
