"""Table-driven cost models (kvsched.sim.tables) against the real shipped tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.backend import BatchShape
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.sim import profiles, simulate, tables
from kvsched.sim.cost import CostModel, from_config
from kvsched.sim.tables import TableCost

PROFILES_DIR = Path("/work/shared/data/profiles")
PRESETS = ("llama3.1-8b-rtx4090", "llama3.1-8b-rtxpro6000", "llama3-8b-a100")
LLMSERVINGSIM = {"llama3.1-8b-rtx4090": tables.RTX4090, "llama3.1-8b-rtxpro6000": tables.RTXPRO6000}
L = 32  # decoder layers of Llama-3.1-8B / Llama-3-8B


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _by(path: Path, key: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in _rows(path):
        out.setdefault(r["layer"], {})[int(r[key])] = float(r["time_us"])
    return out


def _dense_us(prof: tables.LLMServingSimProfile, tokens: int) -> float:
    """Independent reading of dense.csv: layernorm twice per layer, the rest once, x32 layers,
    embedding and final_layernorm once."""
    d = _by(prof.path("dense"), "tokens")
    per_layer = 2 * d["layernorm"][tokens] + sum(
        d[op][tokens] for op in ("qkv_proj", "rotary_emb", "o_proj", "gate_up_proj", "act_fn", "down_proj"))
    return L * per_layer + d["embedding"][tokens] + d["final_layernorm"][tokens]


def _per_seq_us(prof: tables.LLMServingSimProfile, seqs: int) -> float:
    p = _by(prof.path("per_sequence"), "sequences")
    return p["lm_head"][seqs] + p["sampler"][seqs]


def _grid_shape(pc: int, kp: int, nd: int, kd: int) -> BatchShape:
    """The BatchShape that maps exactly to attention grid point (pc, kp, nd, kd): one prefill
    chunk of pc tokens after kp cached ones, nd decodes with kd cached tokens each."""
    seqs = nd + (1 if pc else 0)
    return BatchShape(seqs, pc, nd, (kp + pc if pc else 0) + nd * (kd + 1), pc * (kp + pc))


# ---------------------------------------------------------------- registry and config


def test_presets_listed_and_round_trip():
    for name in PRESETS:
        assert name in COST_MODELS
        assert COST_MODELS.get(name).description
        model = COST_MODELS.create(name)
        assert isinstance(model, TableCost) and isinstance(model, CostModel)
        config = json.loads(json.dumps(model.config()))
        assert config == {"name": "table", "tables": name}
        assert from_config(config) == model
        assert model.step_time(BatchShape(1, 0, 1, 1)) > 0


def test_unknown_table_set_is_a_clear_error():
    with pytest.raises(ValueError, match="TableCost.tables must be one of"):
        TableCost("llama3.1-8b-h100")


@pytest.mark.parametrize("name", PRESETS)
def test_invalid_shapes_are_rejected(name):
    model = COST_MODELS.create(name)
    with pytest.raises(ValueError, match="num_kv_tokens must be >= 0"):
        model.step_time(BatchShape(1, 0, 1, -5))
    with pytest.raises(ValueError, match="num_decode_seqs > num_seqs"):
        model.step_time(BatchShape(2, 0, 3, 100))
    with pytest.raises(ValueError, match="num_steps"):
        model.decode_times(1, 1, -1)


# ---------------------------------------------------------------- exact at grid points


@pytest.mark.parametrize("name", sorted(LLMSERVINGSIM))
def test_dense_and_per_sequence_exact_at_grid_points(name):
    prof = LLMSERVINGSIM[name]
    impl = tables.load_table_set(name)
    for tokens in (1, 2, 7, 16, 36, 128, 272, 512, 1008, 1024, 2000, 2048):
        assert impl.dense(tokens) == pytest.approx(_dense_us(prof, tokens), rel=1e-12)
    for seqs in (1, 5, 16, 20, 64, 208, 256):
        assert impl.per_sequence(seqs) == pytest.approx(_per_seq_us(prof, seqs), rel=1e-12)
    # Linear between neighbouring points (2000 and 2016 are both profiled).
    assert impl.dense(2008) == pytest.approx((_dense_us(prof, 2000) + _dense_us(prof, 2016)) / 2, rel=1e-12)


@pytest.mark.parametrize("name", sorted(LLMSERVINGSIM))
def test_attention_exact_at_every_shipped_row(name):
    """Every row of the shipped attention grid is returned exactly, through the BatchShape
    mapping too (kv_decode >= 16: a decode with no cached token is not a profiled shape)."""
    prof = LLMSERVINGSIM[name]
    impl = tables.load_table_set(name)
    rows = _rows(prof.path("attention"))
    doubling = [r for r in rows if int(r["prefill_chunk"]) in tables.PREFILL_CHUNKS
                and int(r["kv_prefill"]) in tables.KV_POINTS and int(r["kv_decode"]) in tables.KV_POINTS]
    # mixed: 8 chunks x 12 kv_prefill x 8 n_decode x 11 kv_decode; 8 x 12 prefill-only; 9 x 11 decode-only
    assert len(doubling) == 8 * 12 * 8 * 11 + 8 * 12 + 9 * 11 == 8643
    # The RTX PRO 6000 profile adds a second sweep at x1.5 spacing (chunks 24..1384, KV 768..13122).
    assert len(rows) == {"llama3.1-8b-rtx4090": 8643, "llama3.1-8b-rtxpro6000": 19364}[name]
    for r in rows:
        pc, kp, nd, kd = (int(r[c]) for c in ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode"))
        assert impl.attention(pc, kp, nd, kd) == float(r["time_us"])
        if pc % 512 == 0 and kp in (0, 1024, 16384) and kd in (0, 16, 1024, 16384):
            assert impl.coords(_grid_shape(pc, kp, nd, kd)) == (pc, kp, nd, kd)


def _attention_us(prof) -> dict[tuple[int, int, int, int], float]:
    """The attention grid as shipped: (prefill_chunk, kv_prefill, n_decode, kv_decode) -> µs."""
    return {tuple(int(r[c]) for c in ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode")): float(r["time_us"])
            for r in _rows(prof.path("attention"))}


@pytest.mark.parametrize("name", sorted(LLMSERVINGSIM))
def test_step_time_at_grid_point_is_the_sum_of_the_tables(name):
    prof = LLMSERVINGSIM[name]
    attn = _attention_us(prof)
    model = COST_MODELS.create(name)
    for pc, kp, nd, kd in [(0, 0, 32, 1024), (0, 0, 128, 4096), (512, 0, 0, 0), (2048, 0, 0, 0),
                           (16, 4096, 4, 2048), (32, 512, 8, 256), (0, 0, 64, 256)]:
        expected_us = _dense_us(prof, pc + nd) + L * attn[(pc, kp, nd, kd)] + _per_seq_us(prof, nd + (1 if pc else 0))
        assert model.step_time(_grid_shape(pc, kp, nd, kd)) == pytest.approx(expected_us * 1e-6, rel=1e-12)


@pytest.mark.parametrize("name", sorted(LLMSERVINGSIM))
def test_attention_interpolates_linearly_and_extrapolates(name):
    prof = LLMSERVINGSIM[name]
    attn = _attention_us(prof)
    impl = tables.load_table_set(name)
    # Midway between two kv_decode points, and between two n_decode points.
    assert impl.attention(0, 0, 32, 384) == pytest.approx((attn[0, 0, 32, 256] + attn[0, 0, 32, 512]) / 2)
    assert impl.attention(0, 0, 48, 1024) == pytest.approx((attn[0, 0, 32, 1024] + attn[0, 0, 64, 1024]) / 2)
    # Off the x1.5 sweep (chunk 1024 is on the doubling sweep only): between doubling points.
    assert impl.attention(1024, 0, 8, 768) == pytest.approx((attn[1024, 0, 8, 512] + attn[1024, 0, 8, 1024]) / 2)
    if name == "llama3.1-8b-rtx4090":  # doubling grid only: bilinear in (prefill_chunk, kv_prefill)
        corners = [attn[pc, kp, 8, 256] for pc in (256, 512) for kp in (1024, 2048)]
        assert impl.attention(384, 1536, 8, 256) == pytest.approx(sum(corners) / 4)
    else:  # between two points of the x1.5 sweep
        assert impl.attention(1384, 0, 128, 960) == pytest.approx(
            (attn[1384, 0, 128, 768] + attn[1384, 0, 128, 1152]) / 2)
    # Beyond the last kv point: along the top-octave secant (8192 -> 16384).
    assert impl.attention(0, 0, 32, 32768) == pytest.approx(3 * attn[0, 0, 32, 16384] - 2 * attn[0, 0, 32, 8192])
    assert impl.attention(0, 0, 32, 24576) == pytest.approx(2 * attn[0, 0, 32, 16384] - attn[0, 0, 32, 8192])
    # n_decode = 256 beside a chunk is not profiled: linear in n_decode from 64 and 128.
    assert impl.attention(512, 0, 256, 1024) == pytest.approx(3 * attn[512, 0, 128, 1024] - 2 * attn[512, 0, 64, 1024])
    # A decode with fewer than 16 cached tokens costs like 16; a chunk of < 16 tokens like 16.
    assert impl.attention(0, 0, 4, 3) == attn[0, 0, 4, 16]
    assert impl.attention(5, 0, 0, 0) == attn[16, 0, 0, 0]
    # A chunk beyond 2048 tokens is split into 2048-token pieces with growing history.
    assert impl.attention(4096, 0, 2, 64) == pytest.approx(attn[2048, 0, 2, 64] + attn[2048, 2048, 0, 0])
    assert impl.attention(0, 0, 0, 0) == 0.0
    # Dense beyond 2048 tokens: along the 1024 -> 2048 secant.
    d1024, d2048 = _dense_us(prof, 1024), _dense_us(prof, 2048)
    assert impl.dense(4096) == pytest.approx(3 * d2048 - 2 * d1024)
    assert impl.dense(3072) == pytest.approx(2 * d2048 - d1024)


def test_mapping_of_several_prefill_requests():
    impl = tables.load_table_set("llama3.1-8b-rtx4090")
    # Two 512-token chunks, each after 1000 cached tokens, beside 4 decodes with 300 cached each.
    shape = BatchShape(6, 1024, 4, 2 * 1512 + 4 * 301, 2 * 512 * 1512)
    pc, kp, nd, kd = impl.coords(shape)
    # One 1024-token chunk doing the same causal work: 1024 * (kp + 512) = 2 * 512 * (1000 + 256).
    assert (pc, nd) == (1024, 4)
    assert 1024 * (kp + 512) == pytest.approx(2 * 512 * (1000 + 256))
    assert kd == pytest.approx(300)
    # Two fresh 512-token prompts: clamped to one fresh 1024-token chunk (kv_prefill = 0).
    assert impl.coords(BatchShape(2, 1024, 0, 1024, 2 * 512 * 512))[1] == 0.0


# ---------------------------------------------------------------- A100: Vidur + roofline


def test_a100_linear_ops_exact_at_table_points_and_roofline():
    impl = tables.load_table_set("llama3-8b-a100")
    rows = [r for r in _rows(tables.LLAMA3_8B_TP1.path) if r["device"] == "a100"]
    assert len(rows) > 400
    for r in rows[::25]:
        expected = (L * float(r["layer_ms"]) + float(r["emb_ms"])) * 1e-3
        assert impl.linear(int(r["num_tokens"])) == pytest.approx(expected, rel=1e-12)
    # Llama-3-8B: 8 KV heads x 128, 32 layers, fp16: 131,072 B per token at 70 % of 2.0 TB/s.
    assert impl.d1_s_per_token == pytest.approx(131_072 / 1.4e12)
    assert impl.d0_s == pytest.approx(128_256 * 4096 * 2 / 1.4e12 + 32 * 10e-6)
    assert impl.d3_s_per_seq == pytest.approx(10e-6)
    assert impl.d4_s_per_attn_token == pytest.approx(0.5 * 4 * 32 * 4096 / (0.5 * 312e12))
    model = COST_MODELS.create("llama3-8b-a100")
    shape = BatchShape(33, 512, 32, 40_000, 512 * 1000)
    assert model.step_time(shape) == pytest.approx(
        impl.linear(544) + impl.d0_s + impl.d1_s_per_token * 40_000 + impl.d3_s_per_seq * 33
        + impl.d4_s_per_attn_token * 512_000)


# ---------------------------------------------------------------- shape of the curves


@pytest.mark.parametrize("name", PRESETS)
def test_monotone_on_the_profiled_grids(name):
    """The tables are noisy point to point (GEMM tile steps, timing noise), so monotonicity is
    checked on the doubling grids, where the data are monotone."""
    model = COST_MODELS.create(name)
    batches = [model.step_time(BatchShape(b, 0, b, b * 1024)) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)]
    assert np.all(np.diff(batches) > 0)
    kv = [model.step_time(BatchShape(32, 0, 32, 32 * k)) for k in (16 << i for i in range(13))]
    assert np.all(np.diff(kv) > 0)
    prefill = [model.step_time(BatchShape(1, p, 0, p, p * p)) for p in (16 << i for i in range(11))]
    assert np.all(np.diff(prefill) > 0)
    history = [model.step_time(BatchShape(1, 512, 0, c + 512, 512 * (c + 512))) for c in (0, *(128 << i for i in range(9)))]
    assert np.all(np.diff(history) > 0)


@pytest.mark.parametrize("name", PRESETS)
def test_prefill_costs_more_than_decode(name):
    model = COST_MODELS.create(name)
    for p in (64, 256, 512, 1024, 2048, 4096):
        # A fresh p-token prompt vs one decode step of a sequence holding p tokens.
        assert model.step_time(BatchShape(1, p, 0, p, p * p)) > model.step_time(BatchShape(1, 0, 1, p))
        # A p-token chunk after 4k cached tokens vs a decode of one sequence holding as much.
        c = 4096
        assert model.step_time(BatchShape(1, p, 0, c + p, p * (c + p))) > model.step_time(BatchShape(1, 0, 1, c + p))
    # Adding a prefill chunk to a decode batch costs more than the decode batch alone.
    decode = BatchShape(32, 0, 32, 32 * 1024)
    mixed = BatchShape(33, 512, 32, 32 * 1024 + 512, 512 * 512)
    assert model.step_time(mixed) > model.step_time(decode)


def test_example_step_times_plausible():
    """Sanity against the hardware: a batch-1 decode reads ~16 GB of weights."""
    rtx = tables.example_step_times("llama3.1-8b-rtx4090")  # ~1.0 TB/s
    pro = tables.example_step_times("llama3.1-8b-rtxpro6000")  # ~1.8 TB/s
    a100 = tables.example_step_times("llama3-8b-a100")  # 2.0 TB/s
    assert 14 < rtx["decode 1 x 1k"] < 20
    assert 8 < pro["decode 1 x 1k"] < rtx["decode 1 x 1k"]
    assert 8 < a100["decode 1 x 1k"] < 14
    for t in (rtx, pro, a100):
        assert t["decode 1 x 1k"] < t["decode 32 x 1k"] < t["decode 128 x 1k"] < t["prefill 2048"]
        assert t["prefill 512"] < t["prefill 2048"]


# ---------------------------------------------------------------- fast path == step loop


@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=80, deadline=None)
@given(num_seqs=st.integers(0, 600), num_kv_tokens=st.integers(0, 600_000), num_steps=st.integers(0, 60))
def test_decode_times_equals_step_loop(name, num_seqs, num_kv_tokens, num_steps):
    model = COST_MODELS.create(name)
    fast = model.decode_times(num_seqs, num_kv_tokens, num_steps)
    slow = CostModel.decode_times(model, num_seqs, num_kv_tokens, num_steps)
    assert isinstance(fast, np.ndarray) and fast.dtype == np.float64 and fast.shape == (num_steps,)
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("name", PRESETS)
def test_simulate_small_workload(name):
    """The presets drive `simulate`; fast-forwarded decodes give the schedule of step-by-step."""
    rng = np.random.default_rng(7)
    arrivals = np.cumsum(rng.exponential(0.05, 40))
    reqs = [Request(i, float(t), int(rng.integers(16, 1500)), int(rng.integers(1, 120)))
            for i, t in enumerate(arrivals)]
    runs = [simulate(reqs, SCHEDULERS.create("vllm"), COST_MODELS.create(name), capacity_tokens=20_000,
                     block_size=16, fast_forward=ff) for ff in (True, False)]
    for run in runs:
        assert all(r.status is RequestStatus.FINISHED for r in run.requests)
        assert run.end_time > arrivals[-1]
    fast, slow = runs
    assert [r.finish_time for r in fast.requests] == pytest.approx([r.finish_time for r in slow.requests], rel=1e-12)


# ---------------------------------------------------------------- shipped data


@pytest.mark.skipif(not PROFILES_DIR.exists(), reason="shared profiles not present")
def test_shipped_tables_regenerate_identically(tmp_path):
    """`tables.write_tables(shared profiles)` rewrites every shipped file byte for byte."""
    written = tables.write_tables(PROFILES_DIR, tmp_path)
    assert len(written) == 29  # 22 LLMServingSim tables, 6 skew fits, 1 Vidur table
    for path in written:
        assert path.read_bytes() == (tables.DATA_DIR / path.name).read_bytes(), path.name
    # Dense, per-sequence and attention tables are unmodified copies.
    src = PROFILES_DIR / "llmservingsim"
    for prof in tables.LLMSERVINGSIM_PROFILES.values():
        for kind in ("dense", "per_sequence", "attention"):
            assert prof.path(kind).read_bytes() == prof.source(src, kind).read_bytes()
    skewed = [p for p in tables.LLMSERVINGSIM_PRESETS.values() if p.skew_alpha_default is not None]
    assert len(skewed) == 6 and tables.RTX4090.skew_alpha_default is None
    for prof in skewed:
        assert prof.path("skew_fit").read_bytes() == prof.source(src, "skew_fit").read_bytes()


def test_vidur_llama3_table_is_a_linear_ops_table():
    num_tokens, seconds = profiles.load_linear_table("a100", table=tables.LLAMA3_8B_TP1)
    assert num_tokens[0] == 1 and num_tokens[-1] == 32768
    assert np.all(np.diff(num_tokens) > 0) and np.all(seconds > 0)
