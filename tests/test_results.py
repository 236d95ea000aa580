"""Run directories: save/load round trips, byte-identical reruns, config and strict JSON.

The determinism tests run the real console script in separate processes, so anything
that varies between interpreters (hash seeds, wall-clock times, dict order) would show.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import reqs

from kvsched.metrics import requests_frame, steps_frame, summarize
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.results import load_json, load_table, save_run
from kvsched.sim import simulate
from kvsched.sim.cost import UnitCost, from_config

SPEC = "synthetic:n=120,rate=8,prompt=uniform(20,400),output=geometric(30)"
FILES = {"parquet": ("requests.parquet", "steps.parquet", "summary.json", "config.json"),
         "csv": ("requests.csv", "steps.csv", "summary.json", "config.json")}


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _run():
    # Capacity 100, block 1: request 1 (2000 + 3 - 1 tokens) is rejected, request 2 has one output token
    # (TPOT undefined), so the tables hold NaN times and a non-empty reject_reason.
    return simulate(reqs((0.0, 4, 3), (0.5, 2000, 3), (1.0, 3, 1), (1.2, 30, 12)), SCHEDULERS.create("vllm"),
                    UnitCost(), capacity_tokens=100, block_size=1)


# --- round trips ------------------------------------------------------------------------------


def test_save_then_load_parquet_round_trip(tmp_path):
    run = _run()
    config = {"seed": 3, "note": "hand-made", "capacity_tokens": 100}
    summary = save_run(run, tmp_path / "out", config)
    d = tmp_path / "out"
    assert sorted(p.name for p in d.iterdir()) == sorted(FILES["parquet"])
    pd.testing.assert_frame_equal(load_table(d, "requests"), requests_frame(run))
    pd.testing.assert_frame_equal(load_table(d, "steps"), steps_frame(run))
    assert load_json(d, "config") == config
    expected = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summarize(run).items()}
    assert load_json(d, "summary") == expected
    # save_run returns the in-memory summary (plain numbers, NaN where undefined).
    assert summary.keys() == expected.keys()
    assert all(summary[k] == v or (v is None and math.isnan(summary[k])) for k, v in expected.items())
    assert summary["num_rejected"] == 1 and summary["num_completed"] == 3


def test_save_then_load_csv_round_trip(tmp_path):
    run = _run()
    save_run(run, tmp_path, {"seed": 0}, format="csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES["csv"])
    pd.testing.assert_frame_equal(load_table(tmp_path, "steps"), steps_frame(run))
    loaded, expected = load_table(tmp_path, "requests"), requests_frame(run)
    # Floats survive CSV exactly (pandas writes the shortest round-tripping repr); NaN stays NaN.
    cols = [c for c in expected.columns if c != "reject_reason"]
    pd.testing.assert_frame_equal(loaded[cols], expected[cols])


def test_csv_round_trip_keeps_empty_reject_reason(tmp_path):
    run = _run()
    save_run(run, tmp_path, {}, format="csv")
    assert load_table(tmp_path, "requests")["reject_reason"].tolist() == requests_frame(run)["reject_reason"].tolist()


def test_empty_steps_table_round_trips(tmp_path):
    # Every request rejected: no steps at all, but the steps file still has every column.
    run = simulate(reqs((0.0, 500, 10)), SCHEDULERS.create("vllm"), UnitCost(), capacity_tokens=100, block_size=1)
    for fmt in ("parquet", "csv"):
        save_run(run, tmp_path / fmt, {}, format=fmt)
        steps = load_table(tmp_path / fmt, "steps")
        assert len(steps) == 0 and list(steps.columns) == list(steps_frame(run).columns)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="table must be one of"):
        load_table(tmp_path, "summary")
    with pytest.raises(FileNotFoundError, match="no requests.parquet or requests.csv"):
        load_table(tmp_path, "requests")
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        load_json(tmp_path, "config")
    with pytest.raises(ValueError, match="format must be 'parquet' or 'csv'"):
        save_run(_run(), tmp_path / "x", {}, format="feather")
    assert not (tmp_path / "x").exists()


# --- strict JSON --------------------------------------------------------------------------------


def test_summary_json_is_strict_json_with_null_for_nan(tmp_path):
    # All rejected: every latency statistic and the throughput are NaN in memory.
    run = simulate(reqs((0.0, 500, 10), (1.0, 300, 3)), SCHEDULERS.create("vllm"), UnitCost(),
                   capacity_tokens=100, block_size=1)
    assert math.isnan(summarize(run)["ttft_mean"])
    save_run(run, tmp_path, {"weird": float("nan"), "nested": [float("inf"), {"x": float("-inf")}]})
    for name in ("summary", "config"):
        text = (tmp_path / f"{name}.json").read_text()
        assert "NaN" not in text and "Infinity" not in text
        _strict_json(text)
    summary = _strict_json((tmp_path / "summary.json").read_text())
    for key in ("ttft_mean", "ttft_p99", "e2e_mean", "e2e_p50", "tpot_mean", "tpot_p90"):
        assert summary[key] is None, key
    assert summary["num_rejected"] == 2 and summary["num_completed"] == 0
    assert _strict_json((tmp_path / "config.json").read_text()) == {"weird": None, "nested": [None, {"x": None}]}


# --- the CLI's run directories -----------------------------------------------------------------



def _cli_run(exe: str, out: Path, *extra: str) -> None:
    proc = subprocess.run([exe, "simulate", "--trace", SPEC, "--no-progress", "--json", "--output", str(out),
                           *extra], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_same_seed_gives_byte_identical_files(exe, tmp_path, fmt):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _cli_run(exe, a, "--seed", "11", "--format", fmt)
    _cli_run(exe, b, "--seed", "11", "--format", fmt)
    _cli_run(exe, c, "--seed", "12", "--format", fmt)
    for d in (a, b, c):
        assert sorted(p.name for p in d.iterdir()) == sorted(FILES[fmt])
    for name in FILES[fmt]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between identical runs"
    # Another seed draws other arrivals and lengths: the tables and the recorded seed differ.
    for name in FILES[fmt]:
        assert (a / name).read_bytes() != (c / name).read_bytes(), f"{name} does not depend on the seed"
    ra, rc = load_table(a, "requests"), load_table(c, "requests")
    assert not ra["arrival_time"].equals(rc["arrival_time"]) and not ra["prompt_len"].equals(rc["prompt_len"])


def test_config_json_records_everything_needed_to_reproduce(exe, tmp_path):
    _cli_run(exe, tmp_path, "--seed", "42", "--scheduler", "sarathi", "-o", "chunk_size=256",
             "-o", "batch_size_cap=32", "--cost-model", "wait-paper", "--capacity", "50000", "--block-size", "8")
    cfg = _strict_json((tmp_path / "config.json").read_text())
    assert cfg["workload"] == {"trace": SPEC, "rate": None, "target_rate": None, "rate_scale": 1.0,
                               "num_requests": None, "sample": False, "seed": 42, "length_scale": 1.0,
                               "max_prompt_len": None, "max_output_len": None, "predictions": "exact"}
    assert cfg["scheduler"] == {"name": "sarathi", "chunk_size": 256, "batch_size_cap": 32,
                                "watermark_fraction": 0.01}
    assert cfg["cost_model"] == COST_MODELS.create("wait-paper").config()
    assert from_config(cfg["cost_model"]) == COST_MODELS.create("wait-paper")
    assert cfg["capacity_tokens"] == 50000 and cfg["block_size"] == 8 and cfg["fast_forward"] is True
    import kvsched

    assert cfg["kvsched_version"] == kvsched.__version__
    summary = _strict_json((tmp_path / "summary.json").read_text())
    assert summary["capacity_tokens"] == 50000 and summary["block_size"] == 8
    assert summary["num_requests"] == 120
