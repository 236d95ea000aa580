"""The deployment presets (GPU, model, TP) of kvsched.sim.tables and the vLLM-style KV capacity
of kvsched.sim.capacity."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvsched.backend import BatchShape
from kvsched.cli import DEFAULT_CAPACITY_TOKENS, _resolve_capacity, build_parser
from kvsched.registry import COST_MODELS
from kvsched.sim import capacity, tables
from kvsched.sim.tables import TableCost

NEW = ("llama3.1-8b-rtxpro6000-tp2", "qwen3-32b-rtxpro6000", "qwen3-32b-rtxpro6000-tp2",
       "qwen3-30b-a3b-rtxpro6000", "qwen3-30b-a3b-rtxpro6000-tp2")
TP_PAIRS = (("llama3.1-8b-rtxpro6000", "llama3.1-8b-rtxpro6000-tp2"),
            ("qwen3-32b-rtxpro6000", "qwen3-32b-rtxpro6000-tp2"),
            ("qwen3-30b-a3b-rtxpro6000", "qwen3-30b-a3b-rtxpro6000-tp2"))
SHAPES = (BatchShape(1, 0, 1, 1024), BatchShape(32, 0, 32, 32 * 1024), BatchShape(128, 0, 128, 128 * 1024),
          BatchShape(1, 512, 0, 512, 512 * 512), BatchShape(1, 2048, 0, 2048, 2048 * 2048),
          BatchShape(33, 256, 32, 256 + 32 * 1025, 256 * 256))


def test_new_presets_registered_and_listed():
    out = subprocess.run([sys.executable, "-m", "kvsched.cli", "cost-models"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, COLUMNS="300")).stdout
    for name in NEW:
        assert name in COST_MODELS and name in tables.DEPLOYMENTS
        assert name in out
        model = COST_MODELS.create(name)
        assert isinstance(model, TableCost) and model.config() == {"name": "table", "tables": name}


@pytest.mark.parametrize("name", NEW)
def test_step_times_positive_and_grow_with_batch_tokens(name):
    model = COST_MODELS.create(name)
    assert all(model.step_time(s) > 0 for s in SHAPES)
    decodes = [model.step_time(BatchShape(n, 0, n, n * 1024)) for n in (1, 8, 64, 256)]
    prefills = [model.step_time(BatchShape(1, p, 0, p, p * p)) for p in (16, 256, 1024, 2048, 4096)]
    assert decodes == sorted(decodes) and prefills == sorted(prefills)


@pytest.mark.parametrize(("tp1", "tp2"), TP_PAIRS)
def test_tp2_decodes_faster_than_tp1(tp1, tp2):
    """Decode steps read half the weights per GPU at TP 2: faster despite the all-reduces."""
    a, b = COST_MODELS.create(tp1), COST_MODELS.create(tp2)
    for s in SHAPES[:3]:
        assert b.step_time(s) < a.step_time(s), s


def test_tp2_prefill_pays_the_pcie_all_reduce():
    """A 2,048-token step all-reduces 2 x layers x 2,048 x hidden x 2 B over a 16 GB/s link:
    Llama-3.1-8B (32 x 2 x 16.8 MB, 67 ms) prefills slower at TP 2 than at TP 1 on PCIe, the
    compute-heavier Qwen3-32B (64 x 2 x 21 MB, 168 ms against 366 ms of TP 1 compute) barely faster."""
    prefill = SHAPES[4]
    llama1, llama2 = (COST_MODELS.create(n) for n in TP_PAIRS[0])
    qwen1, qwen2 = (COST_MODELS.create(n) for n in TP_PAIRS[1])
    assert llama2.step_time(prefill) > llama1.step_time(prefill)
    assert 0.9 * qwen1.step_time(prefill) < qwen2.step_time(prefill) < qwen1.step_time(prefill)
    impl = tables.load_table_set("llama3.1-8b-rtxpro6000-tp2")
    nbytes = 2048 * 4096 * 2
    assert impl.allreduce(nbytes) == pytest.approx(impl.allreduce_us[0] + nbytes / 16e3)
    assert impl.allreduce_us[0] == pytest.approx(12.713, abs=1e-3)  # the measured 4 KB all-reduce


def test_moe_differs_from_dense():
    impl = tables.load_table_set("qwen3-30b-a3b-rtxpro6000")
    assert impl.moe_us is not None and tables.load_table_set("qwen3-32b-rtxpro6000").moe_us is None
    moe, dense = COST_MODELS.create("qwen3-30b-a3b-rtxpro6000"), COST_MODELS.create("qwen3-32b-rtxpro6000")
    assert all(moe.step_time(s) != dense.step_time(s) for s in SHAPES)
    # One token activates 8 experts; a batch of 256 nearly all 128: the MoE part grows steeply.
    assert tables.expected_activated_experts(1, 128, 8) == 8
    assert 127 < tables.expected_activated_experts(256, 128, 8) <= 128
    assert impl.dense(64) - impl.dense(1) > 10 * (impl.dense(2048) - impl.dense(1024)) / 16


def test_moe_table_is_interpolated_at_the_expected_activated_experts():
    impl = tables.load_table_set("qwen3-30b-a3b-rtxpro6000")
    rows = {(int(r["tokens"]), int(r["activated_experts"])): float(r["time_us"])
            for r in tables._read_rows(tables.RTXPRO6000_QWEN3_30B_A3B[1].path("moe"))}
    assert impl.moe_us[impl.moe_tokens.xs.index(1.0)] == rows[1, 8]
    assert impl.moe_us[impl.moe_tokens.xs.index(2048.0)] == pytest.approx(rows[2048, 128])
    tp2 = tables.load_table_set("qwen3-30b-a3b-rtxpro6000-tp2")
    assert tp2.moe_us == pytest.approx([v / 2 for v in impl.moe_us])


def test_kv_bytes_per_token_and_weights_from_model_configs():
    assert capacity.LLAMA31_8B.kv_bytes_per_token(1) == 2 * 32 * 8 * 128 * 2
    assert capacity.QWEN3_32B.kv_bytes_per_token(2) == 2 * 64 * 4 * 128 * 2
    assert capacity.QWEN3_30B_A3B.kv_bytes_per_token(2) == 2 * 48 * 2 * 128 * 2
    # Parameter counts of the model cards: 8.0B, 32.8B, 30.5B.
    assert capacity.LLAMA31_8B.num_params() == pytest.approx(8.03e9, rel=0.005)
    assert capacity.QWEN3_32B.num_params() == pytest.approx(32.8e9, rel=0.005)
    assert capacity.QWEN3_30B_A3B.num_params() == pytest.approx(30.5e9, rel=0.005)


def test_derived_capacity_llama_tp1_rtxpro6000():
    """No recorded KV size exists for the ground-truth vLLM run (its meta has kv_cache: null),
    so this checks the derivation by hand: 0.9 x 94.97 GiB - 14.96 GiB weights - 0.45 GiB
    activations - 1 GiB non-torch = 69.07 GiB / 128 KiB per token = 565,8xx tokens."""
    c = capacity.derive_kv_capacity(capacity.LLAMA31_8B, capacity.RTXPRO6000_GPU, 1)
    assert c.weight_bytes == 8_030_261_248 * 2
    assert c.tokens % 16 == 0
    assert c.tokens == pytest.approx(565_800, rel=0.001)
    assert c.kv_bytes_per_token * c.tokens <= c.kv_bytes < c.kv_bytes_per_token * (c.tokens + 16)


def test_capacities_grow_with_tp_and_shrink_with_model_size():
    caps = {n: tables.default_capacity(n) for n in NEW}
    assert caps["qwen3-32b-rtxpro6000-tp2"] > 4 * caps["qwen3-32b-rtxpro6000"]  # weights halve, KV/token halves
    assert caps["qwen3-30b-a3b-rtxpro6000-tp2"] > caps["qwen3-30b-a3b-rtxpro6000"]
    assert tables.default_capacity("llama3.1-8b-rtxpro6000") is None  # older presets: CLI default
    with pytest.raises(ValueError, match="does not fit"):
        capacity.derive_kv_capacity(capacity.QWEN3_32B, capacity.GPU("small", 40 << 30), 1)


@pytest.mark.parametrize(("argv", "expected"), [
    (["simulate", "--trace", "azure-conv", "--cost-model", "qwen3-32b-rtxpro6000-tp2"], "derived"),
    (["simulate", "--trace", "azure-conv", "--cost-model", "qwen3-32b-rtxpro6000-tp2", "--capacity", "5000"], 5000),
    (["simulate", "--trace", "azure-conv"], DEFAULT_CAPACITY_TOKENS),
    (["simulate", "--trace", "azure-conv", "--cost-model", "llama3.1-8b-rtxpro6000"], DEFAULT_CAPACITY_TOKENS),
])
def test_cli_capacity_default_follows_the_cost_model(argv, expected):
    args = build_parser().parse_args(argv)
    _resolve_capacity(args)
    if expected == "derived":
        expected = tables.default_capacity("qwen3-32b-rtxpro6000-tp2")
    assert args.capacity == expected
