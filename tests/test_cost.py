"""Cost models: hand-computed step times, decode fast path == step loop, fitting, presets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.backend import BatchShape
from kvsched.registry import COST_MODELS
from kvsched.sim import profiles
from kvsched.sim.cost import (
    AffineCost,
    AffinePrefillCost,
    CostModel,
    PiecewiseTokenCost,
    UnitCost,
    fit_affine,
    from_config,
    wait_paper_d2,
)

VIDUR_DIR = Path("/work/shared/data/profiles/vidur")
PRESETS = ("unit", "wait-paper", "wait-paper-prefill", "llama2-7b-a100", "llama2-7b-h100",
           "llama2-70b-a100-tp2")

DECODE = BatchShape(num_seqs=4, num_prefill_tokens=0, num_decode_seqs=4, num_kv_tokens=1000)
MIXED = BatchShape(num_seqs=3, num_prefill_tokens=100, num_decode_seqs=2, num_kv_tokens=2000,
                   prefill_attn_tokens=100 * 150)


def test_unit_cost():
    assert UnitCost().step_time(MIXED) == 1.0
    assert UnitCost(0.25).step_time(DECODE) == 0.25


def test_affine_cost():
    model = AffineCost(0.01, 1e-6)
    assert model.step_time(DECODE) == pytest.approx(0.01 + 1e-3)
    assert model.step_time(MIXED) == pytest.approx(0.01 + 2e-3)


def test_affine_prefill_cost():
    model = AffinePrefillCost(0.01, 1e-6, 1e-4, 1e-3, 1e-8)
    # 0.01 + 2000e-6 + 100e-4 + 3e-3 + 15000e-8
    assert model.step_time(MIXED) == pytest.approx(0.01 + 0.002 + 0.01 + 0.003 + 0.00015)
    assert model.step_time(DECODE) == pytest.approx(0.01 + 0.001 + 0.004)


def test_piecewise_token_cost():
    model = PiecewiseTokenCost(linear_floor_s=0.01, linear_base_s=0.005, linear_s_per_token=1e-4,
                               d0_s=0.001, d1_s_per_token=1e-6, d3_s_per_seq=1e-5, d4_s_per_attn_token=1e-8)
    # 4 batched tokens: floor 0.01 > 0.005 + 4e-4
    assert model.step_time(DECODE) == pytest.approx(0.01 + 0.001 + 1e-3 + 4e-5)
    # 102 batched tokens: 0.005 + 0.0102 = 0.0152 > floor
    assert model.step_time(MIXED) == pytest.approx(0.0152 + 0.001 + 2e-3 + 3e-5 + 15000e-8)


ALL_MODELS = [
    UnitCost(0.5),
    AffineCost(0.0106, 4e-7),
    AffinePrefillCost(0.0106, 4e-7, 7e-5, 1e-5, 2e-9),
    PiecewiseTokenCost(0.0095, 0.0047, 6.2e-5, 5e-4, 3.7e-7, 1e-5, 1.7e-9),
    PiecewiseTokenCost(0.0, -0.001, 1e-4, 0.0, 1e-6),
    *(COST_MODELS.create(name) for name in PRESETS),
]


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: type(m).__name__)
@settings(max_examples=60, deadline=None)
@given(num_seqs=st.integers(0, 600), num_kv_tokens=st.integers(0, 500_000), num_steps=st.integers(0, 50))
def test_decode_times_equals_step_loop(model, num_seqs, num_kv_tokens, num_steps):
    fast = model.decode_times(num_seqs, num_kv_tokens, num_steps)
    slow = CostModel.decode_times(model, num_seqs, num_kv_tokens, num_steps)
    assert isinstance(fast, np.ndarray) and fast.dtype == np.float64 and fast.shape == (num_steps,)
    np.testing.assert_array_equal(fast, slow)


def test_decode_times_rejects_negative():
    with pytest.raises(ValueError, match="num_steps"):
        AffineCost(1.0, 0.0).decode_times(1, 1, -1)


@pytest.mark.parametrize(
    "factory, field",
    [
        (lambda: UnitCost(0.0), "step_time_s"),
        (lambda: UnitCost(float("nan")), "step_time_s"),
        (lambda: AffineCost(-0.1, 1e-6), "d0_s"),
        (lambda: AffineCost(0.1, -1e-6), "d1_s_per_token"),
        (lambda: AffineCost(0.0, 0.0), "d0_s"),
        (lambda: AffinePrefillCost(0.01, 1e-6, d2_s_per_prefill_token=-1.0), "d2_s_per_prefill_token"),
        (lambda: AffinePrefillCost(0.01, 1e-6, d3_s_per_seq=math.inf), "d3_s_per_seq"),
        (lambda: AffinePrefillCost(0.01, 1e-6, d4_s_per_attn_token="1"), "d4_s_per_attn_token"),
        (lambda: PiecewiseTokenCost(-0.01, 0.0, 1e-4), "linear_floor_s"),
        (lambda: PiecewiseTokenCost(0.01, math.nan, 1e-4), "linear_base_s"),
        (lambda: PiecewiseTokenCost(0.01, 0.0, -1e-4), "linear_s_per_token"),
    ],
)
def test_invalid_args_name_the_field(factory, field):
    with pytest.raises(ValueError, match=field):
        factory()


def test_config_round_trip_and_json():
    for model in ALL_MODELS:
        config = model.config()
        assert config["name"] == type(model).kind
        assert from_config(json.loads(json.dumps(config))) == model
    with pytest.raises(ValueError, match="unknown keys"):
        from_config({"name": "affine", "d0_s": 1.0, "d1_s_per_token": 0.0, "d2": 1.0})
    with pytest.raises(ValueError, match="name"):
        from_config({"name": "nope"})


# ---------------------------------------------------------------- fitting


def _random_shapes(rng: np.random.Generator, n: int) -> list[BatchShape]:
    shapes = []
    for _ in range(n):
        seqs = int(rng.integers(1, 64))
        prefill_seqs = int(rng.integers(0, min(seqs, 4) + 1))
        prefill = int(rng.integers(1, 1024)) * prefill_seqs
        kv = int(rng.integers(seqs, 100_000)) + prefill
        attn = prefill * int(rng.integers(1, 2048)) if prefill else 0
        shapes.append(BatchShape(seqs, prefill, seqs - prefill_seqs, kv, attn))
    return shapes


def test_fit_affine_recovers_noiseless():
    shapes = _random_shapes(np.random.default_rng(0), 200)
    truth = AffineCost(0.0106, 4e-7)
    result = fit_affine(shapes, [truth.step_time(s) for s in shapes])
    assert result.model.d0_s == pytest.approx(0.0106, rel=1e-9)
    assert result.model.d1_s_per_token == pytest.approx(4e-7, rel=1e-9)
    assert result.r2 == pytest.approx(1.0) and result.rmse_s < 1e-12 and result.num_points == 200


def test_fit_affine_prefill_recovers_noiseless():
    shapes = _random_shapes(np.random.default_rng(1), 300)
    truth = AffinePrefillCost(0.01, 4e-7, 7e-5, 1e-5, 2e-9)
    result = fit_affine(shapes, [truth.step_time(s) for s in shapes], model="affine-prefill")
    assert isinstance(result.model, AffinePrefillCost)
    for name in ("d0_s", "d1_s_per_token", "d2_s_per_prefill_token", "d3_s_per_seq", "d4_s_per_attn_token"):
        assert getattr(result.model, name) == pytest.approx(getattr(truth, name), rel=1e-6)


def test_fit_affine_noisy_and_nonnegative():
    rng = np.random.default_rng(2)
    shapes = _random_shapes(rng, 2000)
    truth = AffineCost(0.0106, 4e-7)
    durations = [truth.step_time(s) * (1 + 0.02 * rng.standard_normal()) for s in shapes]
    result = fit_affine(shapes, durations)
    assert result.model.d0_s == pytest.approx(0.0106, rel=0.03)
    assert result.model.d1_s_per_token == pytest.approx(4e-7, rel=0.03)
    assert 0.9 < result.r2 < 1.0
    # No prefill term in the truth: the prefill fit must not go negative anywhere.
    prefill_fit = fit_affine(shapes, durations, model="affine-prefill").model
    assert all(v >= 0 for k, v in prefill_fit.config().items() if k != "name")


def test_fit_affine_clamps_negative_slope():
    shapes = [BatchShape(1, 0, 1, kv) for kv in (10, 20, 30, 40)]
    result = fit_affine(shapes, [0.05, 0.04, 0.03, 0.02])  # decreasing: unconstrained d1 < 0
    assert result.model.d1_s_per_token == 0.0
    assert result.model.d0_s == pytest.approx(0.035)


def test_fit_affine_errors():
    with pytest.raises(ValueError, match="model"):
        fit_affine([DECODE] * 3, [1.0] * 3, model="cubic")
    with pytest.raises(ValueError, match="durations_s"):
        fit_affine([DECODE] * 3, [1.0] * 2)


# ---------------------------------------------------------------- presets


def test_presets_registered_and_described():
    for name in PRESETS:
        assert name in COST_MODELS
        assert COST_MODELS.get(name).description
        assert isinstance(COST_MODELS.create(name), CostModel)


def test_wait_paper_presets():
    assert COST_MODELS.create("wait-paper") == AffineCost(0.0106, 4.0e-7)
    model = COST_MODELS.create("wait-paper-prefill")
    # d2 = (1/24 - 4e-7 * 21 * 522) / 512 = (0.0416667 - 0.0043848) / 512
    assert model.d2_s_per_prefill_token == pytest.approx(7.2816e-5, rel=1e-4)
    kv_mass = 21 * (512 + 10)
    assert 1 / (model.d1_s_per_token * kv_mass + model.d2_s_per_prefill_token * 512) == pytest.approx(24.0)
    assert wait_paper_d2(22.0) > wait_paper_d2(26.0) > 0
    assert COST_MODELS.create("unit", step_time_s=2.0) == UnitCost(2.0)


# Documented in docs/cost_models.md; the hinge fit of the shipped table must reproduce them.
EXPECTED_FITS = {
    "a100": {"floor_s": 9.4752e-3, "base_s": 4.7102e-3, "slope_s_per_token": 6.1704e-5},
    "h100": {"floor_s": 5.7970e-3, "base_s": 4.3431e-3, "slope_s_per_token": 1.9079e-5},
}


@pytest.mark.parametrize("device", ["a100", "h100"])
def test_llama_preset_fit_matches_documented(device):
    fit = profiles.fit_device(device)
    for name, value in EXPECTED_FITS[device].items():
        assert getattr(fit, name) == pytest.approx(value, rel=0.01), name
    assert fit.r2 > 0.99 and fit.mean_rel_err < 0.05 and fit.num_points == 259


@pytest.mark.skipif(not VIDUR_DIR.exists(), reason="shared Vidur profiles not present")
@pytest.mark.parametrize("device", ["a100", "h100"])
def test_shipped_table_recomputes_from_vidur(device):
    """The shipped table is exactly the summary of the original Vidur file."""
    rows = profiles.summarise_vidur_table(VIDUR_DIR / f"{device}_Llama-2-7b-hf_mlp.csv")
    num_tokens, step_s = profiles.load_linear_table(device)
    np.testing.assert_array_equal(num_tokens, [r["num_tokens"] for r in rows])
    expected = [(32 * r["layer_ms"] + r["emb_ms"]) * 1e-3 for r in rows]
    np.testing.assert_allclose(step_s, expected, rtol=1e-12)


def test_llama_a100_preset_coefficients_and_sanity():
    model = COST_MODELS.create("llama2-7b-a100")
    assert model.d1_s_per_token == pytest.approx(524_288 / (0.7 * 2.0e12))
    assert model.d4_s_per_attn_token == pytest.approx(0.5 * 4 * 32 * 4096 / (0.5 * 312e12))
    assert model.d0_s == pytest.approx(32000 * 4096 * 2 / 1.4e12 + 32 * 10e-6)
    assert model.d3_s_per_seq == 10e-6
    decode = model.step_time(BatchShape(32, 0, 32, 40_000))
    assert 0.015 < decode < 0.035  # vLLM Llama-2-7B A100 ITL at moderate batch: ~15-30 ms
    prefill = model.step_time(BatchShape(1, 2048, 0, 2048, 2048 * 2048))
    assert 0.100 < prefill < 0.200
    assert COST_MODELS.create("llama2-7b-a100", bandwidth_efficiency=0.35).d1_s_per_token == \
        pytest.approx(2 * model.d1_s_per_token)


def test_llama_h100_faster_than_a100():
    a100, h100 = COST_MODELS.create("llama2-7b-a100"), COST_MODELS.create("llama2-7b-h100")
    for shape in (DECODE, MIXED, BatchShape(32, 0, 32, 40_000), BatchShape(1, 2048, 0, 2048, 2048**2)):
        assert h100.step_time(shape) < a100.step_time(shape)


def test_fit_hinge_recovers_synthetic():
    n = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=float)
    truth = profiles.HingeFit(0.01, 0.004, 6e-5, 1.0, 0.0, 0.0, len(n))
    fit = profiles.fit_hinge(n, truth.predict(n))
    assert fit.floor_s == pytest.approx(0.01) and fit.base_s == pytest.approx(0.004)
    assert fit.slope_s_per_token == pytest.approx(6e-5) and fit.max_rel_err < 1e-9
    assert fit.knee_tokens == pytest.approx(100.0)


def _fit_hinge_reference(n, y):
    """fit_hinge as first written: every split's products computed on its own subset."""
    w = 1.0 / y
    best = None
    for k in np.unique(n)[:-2]:
        low = n <= k
        high = ~low
        floor = float(np.sum(y[low] * w[low] ** 2) / np.sum(w[low] ** 2))
        design = np.column_stack([np.ones(high.sum()), n[high]]) * w[high, None]
        (base, slope), *_ = np.linalg.lstsq(design, y[high] * w[high], rcond=None)
        sse = float(np.sum(((np.maximum(floor, base + slope * n) - y) * w) ** 2))
        if best is None or sse < best[0]:
            best = (sse, floor, float(base), float(slope))
    return best[1:]


@pytest.mark.parametrize("table", sorted(profiles.LINEAR_TABLES))
def test_fit_hinge_is_bit_identical_to_the_per_split_reference(table):
    # fit_hinge computes the per-point products once; the coefficients every cost model is
    # derived from must not move by one bit, on the shipped tables and on shuffled noisy ones.
    rng = np.random.default_rng(5)
    for device in sorted(profiles.LINEAR_TABLES[table].devices):
        n, y = profiles.load_linear_table(device, table=profiles.LINEAR_TABLES[table])
        perm = rng.permutation(len(n))
        for nn, yy in ((n, y), (n[perm], y[perm] * rng.uniform(0.9, 1.1, len(n)))):
            fit = profiles.fit_hinge(nn, yy)
            assert (fit.floor_s, fit.base_s, fit.slope_s_per_token) == _fit_hinge_reference(nn, yy)


@pytest.mark.parametrize("table", sorted(profiles.LINEAR_TABLES))
def test_stored_hinge_fits_equal_fresh_fits(table):
    # fit_table reads the shipped fits (no numpy.linalg at start-up); they must be the fits of
    # the shipped tables, bit for bit (regenerate: python -c "from kvsched.sim import profiles;
    # profiles.write_fit_cache()").
    t = profiles.LINEAR_TABLES[table]
    for device in t.devices:
        stored = profiles._cached_fit(t, device)
        assert stored is not None and stored == profiles._fresh_fit(t, device)
        assert profiles.fit_table(table, device) == stored


def test_a_stored_fit_of_another_table_file_is_not_used(tmp_path):
    # A table edited after its fit was stored: the stamp differs, so the fit is made afresh.
    import dataclasses

    t = profiles.LLAMA2_7B_TP1
    edited = tmp_path / "table.csv"
    edited.write_text(t.path.read_text().replace("a100,1,", "a100,1,9", 1))
    other = dataclasses.replace(t, path=edited)
    assert profiles._cached_fit(t, "a100") is not None
    assert profiles._cached_fit(other, "a100") is None
    cache = tmp_path / "fits.json"
    profiles.write_fit_cache(cache)
    assert profiles._cached_fit(t, "h100", cache) == profiles._fresh_fit(t, "h100")


# ---------------------------------------------------------------- llama2-70b-a100-tp2

SPLITWISE_PERF = Path("/work/shared/data/profiles/splitwise_sim/perf_model.csv")
# Mutinifni/splitwise-sim data/perf_model.csv (MIT; Patel et al., Splitwise, ISCA'24), rows
# llama2-70b, a100-80gb, tensor_parallel 2, mean of the repeated measurements (ms):
SPLITWISE_DECODE_B32_MS = 72.21  # token_time, batch 32, prompt 512, 128 output tokens
SPLITWISE_PREFILL_2048_MS = 687.26  # prompt_time, batch 1, prompt 2048


def test_llama70b_tp2_fit_matches_documented():
    fit = profiles.fit_table("llama2-70b-tp2", "a100")
    assert fit.floor_s == pytest.approx(4.7178e-2, rel=0.01)
    assert fit.base_s == pytest.approx(2.7867e-2, rel=0.01)
    assert fit.slope_s_per_token == pytest.approx(3.0632e-4, rel=0.01)
    assert fit.knee_tokens == pytest.approx(63, abs=2)
    assert fit.r2 > 0.99 and fit.mean_rel_err < 0.05 and fit.num_points == 259


def test_llama70b_tp2_coefficients():
    model = COST_MODELS.create("llama2-70b-a100-tp2")
    # KV per token per GPU: 2 (K, V) * 80 layers * 8/2 KV heads * 128 * 2 B = 163,840 B.
    assert profiles.LLAMA2_70B.kv_bytes_per_token_per_gpu(2) == 163_840
    assert model.d1_s_per_token == pytest.approx(163_840 / (0.7 * 2.0e12))
    assert model.d4_s_per_attn_token == pytest.approx(0.5 * 4 * 80 * (8192 // 2) / (0.5 * 312e12))
    assert model.d0_s == pytest.approx(32000 // 2 * 8192 * 2 / 1.4e12 + 80 * 10e-6)
    assert model.d3_s_per_seq == pytest.approx(10e-6 * 80 / 32)
    assert COST_MODELS.create("llama2-70b-a100-tp2", bandwidth_efficiency=0.35).d1_s_per_token == \
        pytest.approx(2 * model.d1_s_per_token)
    with pytest.raises(ValueError, match="device"):
        profiles.derive_llama2_70b_tp2("h100")
    with pytest.raises(ValueError, match="tp=3"):
        profiles.LLAMA2_70B.kv_bytes_per_token_per_gpu(3)


@settings(max_examples=200, deadline=None)
@given(seqs=st.integers(1, 256), prefill=st.integers(0, 8192), kv=st.integers(0, 200_000),
       attn=st.integers(0, 10**8), dim=st.sampled_from(["seqs", "prefill", "decode", "kv", "attn"]),
       step=st.integers(1, 5000))
def test_llama70b_tp2_monotone_in_each_dimension(seqs, prefill, kv, attn, dim, step):
    model = COST_MODELS.create("llama2-70b-a100-tp2")
    decode = seqs - 1 if prefill else seqs
    base = BatchShape(seqs, prefill, decode, kv + prefill + decode, attn if prefill else 0)
    bigger = {
        "seqs": BatchShape(seqs + step, prefill, decode, base.num_kv_tokens, base.prefill_attn_tokens),
        "prefill": BatchShape(seqs, prefill + step, decode, base.num_kv_tokens + step,
                              base.prefill_attn_tokens),
        "decode": BatchShape(seqs + step, prefill, decode + step, base.num_kv_tokens + step,
                             base.prefill_attn_tokens),
        "kv": BatchShape(seqs, prefill, decode, base.num_kv_tokens + step, base.prefill_attn_tokens),
        "attn": BatchShape(seqs, prefill, decode, base.num_kv_tokens, base.prefill_attn_tokens + step),
    }[dim]
    assert model.step_time(bigger) >= model.step_time(base)
    if dim in ("seqs", "decode", "kv", "attn"):  # terms with a positive coefficient everywhere
        assert model.step_time(bigger) > model.step_time(base)


def test_llama70b_tp2_sanity_against_splitwise():
    """Within a factor 2 of vLLM-era measurements on the same hardware (a sanity check, not a fit)."""
    model = COST_MODELS.create("llama2-70b-a100-tp2")
    decode = model.step_time(BatchShape(32, 0, 32, 10_000))
    assert SPLITWISE_DECODE_B32_MS / 2 < decode * 1e3 < 2 * SPLITWISE_DECODE_B32_MS
    prefill = model.step_time(BatchShape(1, 2048, 0, 2048, 2048 * 2048))
    assert SPLITWISE_PREFILL_2048_MS / 2 < prefill * 1e3 < 2 * SPLITWISE_PREFILL_2048_MS
    # Weight-read floor: a batch-1 decode step is at least the 45 ms of reading 69 GB per GPU.
    assert 0.045 < model.step_time(BatchShape(1, 0, 1, 1000)) < 0.055
    seven_b = COST_MODELS.create("llama2-7b-a100")
    for shape in (DECODE, MIXED, BatchShape(32, 0, 32, 10_000), BatchShape(1, 2048, 0, 2048, 2048**2)):
        assert model.step_time(shape) > seven_b.step_time(shape)


@pytest.mark.skipif(not SPLITWISE_PERF.exists(), reason="shared Splitwise perf model not present")
def test_splitwise_reference_values_match_shared_file():
    import pandas as pd

    df = pd.read_csv(SPLITWISE_PERF)
    df = df[(df.model == "llama2-70b") & (df.hardware == "a100-80gb") & (df.tensor_parallel == 2)]
    decode = df[(df.batch_size == 32) & (df.prompt_size == 512) & (df.token_size == 128)].token_time
    prefill = df[(df.batch_size == 1) & (df.prompt_size == 2048) & (df.token_size == 128)].prompt_time
    assert decode.mean() == pytest.approx(SPLITWISE_DECODE_B32_MS, abs=0.01)
    assert prefill.mean() == pytest.approx(SPLITWISE_PREFILL_2048_MS, abs=0.01)


@pytest.mark.skipif(not VIDUR_DIR.exists(), reason="shared Vidur profiles not present")
@pytest.mark.parametrize("table", sorted(profiles.LINEAR_TABLES))
def test_shipped_tables_regenerate_identically(table, tmp_path):
    """`python -m kvsched.sim.profiles VIDUR_DIR` rewrites each shipped table byte for byte."""
    spec = profiles.LINEAR_TABLES[table]
    out = tmp_path / spec.path.name
    profiles.write_linear_table(VIDUR_DIR, out, table=spec)
    assert out.read_bytes() == spec.path.read_bytes()


@given(st.integers(1, 512), st.integers(0, 2_000_000), st.integers(1, 40),
       st.sampled_from(["unit", "affine", "affine-prefill", "piecewise"]))
@settings(max_examples=200, deadline=None)
def test_decode_time_is_decode_times_bit_for_bit(num_seqs, num_kv_tokens, num_steps, kind):
    """The loop sums a short decode run with the scalar `decode_time` instead of numpy: each
    value must be the one `decode_times` gives, and the backend offers it only for these
    stock models."""
    from kvsched.sim import SimBackend

    model = {"unit": UnitCost(0.013), "affine": AffineCost(0.0071, 3.3e-7),
             "affine-prefill": AffinePrefillCost(0.0042, 2.1e-7, 1.7e-5, 1.1e-4, 3e-10),
             "piecewise": PiecewiseTokenCost(0.0061, 0.0013, 2.3e-5, 0.0021, 3.1e-7, 1.3e-5, 7e-10)}[kind]
    want = model.decode_times(num_seqs, num_kv_tokens, num_steps)
    got = [model.decode_time(num_seqs, num_kv_tokens + i * num_seqs) for i in range(num_steps)]
    assert got == want.tolist()
    assert SimBackend(model).decode_time is not None


def test_decode_time_only_for_the_stock_models():
    from kvsched.sim import SimBackend

    class Slower(PiecewiseTokenCost):
        def decode_times(self, num_seqs, num_kv_tokens, num_steps):
            return 2 * super().decode_times(num_seqs, num_kv_tokens, num_steps)

    class OwnDurations(SimBackend):
        def decode_durations(self, shape, num_steps):
            return super().decode_durations(shape, num_steps)

    assert SimBackend(Slower(0.0061, 0.0013, 2.3e-5)).decode_time is None
    assert OwnDurations(UnitCost()).decode_time is None
