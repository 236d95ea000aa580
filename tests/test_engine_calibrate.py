"""Calibration and the engine-vs-simulator comparison, on a tiny random Llama (fast, no
checkpoint): the pipeline is exercised end to end with real forward passes."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kvsched.engine.calibrate import FIDELITY_KEYS, calibrate, profile_steps, validate
from kvsched.engine.model import Llama, LlamaConfig, init_random_
from kvsched.request import Request
from kvsched.sim.cost import AffinePrefillCost, fit_affine


@pytest.fixture(scope="module")
def tiny():
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, max_position_embeddings=512)
    return init_random_(Llama(config), seed=3)


def test_profile_covers_prefill_decode_mixed_and_multi_prompt_steps(tiny):
    points = profile_steps(tiny, block_size=8, repeats=1)
    shapes = [s for s, _ in points]
    assert all(d > 0 for _, d in points)
    assert any(s.num_prefill_tokens and not s.num_decode_seqs and s.num_seqs == 1 for s in shapes)
    assert any(s.num_decode_seqs and not s.num_prefill_tokens for s in shapes)
    assert any(s.num_decode_seqs and s.num_prefill_tokens for s in shapes)
    assert any(s.num_seqs > 1 and s.num_prefill_tokens == s.num_kv_tokens for s in shapes)


def test_calibration_fits_every_profiled_step(tiny):
    # Only what holds on any machine under any load: the measured times themselves are noise
    # on a busy CPU, so how well they fit is checked on exact times below.
    fit, points = calibrate(tiny, block_size=8, repeats=1, with_run=False)
    assert isinstance(fit.model, AffinePrefillCost) and fit.num_points == len(points)
    coefficients = [v for k, v in fit.model.config().items() if k != "name"]
    assert all(math.isfinite(v) and v >= 0 for v in coefficients)
    assert math.isfinite(fit.r2) and fit.r2 <= 1.0


def test_fit_recovers_a_known_cost_model_on_the_profiled_shapes(tiny):
    # The batch shapes calibration really profiles, timed by a known model instead of the
    # clock: the fit must give that model back.
    shapes = [s for s, _ in profile_steps(tiny, block_size=8, repeats=1)]
    truth = AffinePrefillCost(d0_s=4e-3, d1_s_per_token=2e-7, d2_s_per_prefill_token=3e-5, d3_s_per_seq=1e-4,
                              d4_s_per_attn_token=1e-9)
    fit = fit_affine(shapes, [truth.step_time(s) for s in shapes], model="affine-prefill")
    assert fit.r2 == pytest.approx(1.0, abs=1e-9) and fit.max_rel_err < 1e-6
    for name, value in truth.config().items():
        if name != "name":
            assert fit.model.config()[name] == pytest.approx(value, rel=1e-4), name


def test_validate_runs_the_same_workload_on_both_sides(tiny):
    # All at time 0, so what the engine schedules does not depend on how long its steps take;
    # each request outgrows its 2 blocks.
    reqs = [Request(i, 0.0, 14 + i, 6) for i in range(6)]
    cost = calibrate(tiny, block_size=8, repeats=1, with_run=False)[0].model
    fid = validate(reqs, "vllm", cost, model=tiny, capacity_tokens=48, block_size=8)
    assert set(FIDELITY_KEYS) <= set(fid.engine) and set(FIDELITY_KEYS) <= set(fid.simulator)
    assert fid.engine["num_preemptions"] > 0  # 48 tokens hold only a few of the six requests
    assert all(fid.engine[k] > 0 and fid.simulator[k] > 0 for k in FIDELITY_KEYS)
    assert set(fid.errors()) >= set(FIDELITY_KEYS)
