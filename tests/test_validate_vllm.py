"""`kvsched validate-vllm`: a real vLLM run replayed in the simulator, vLLM | kvsched | error %."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from kvsched.cli import main
from kvsched.validation import METRICS, RUNS, load_run, metrics, real_latencies

LLAMA = "rtxpro6000-llama-3.1-8b"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize("name", list(RUNS))
def test_metrics_of_the_real_run_equal_llmservingsims_vllm_column(name):
    real = load_run(name)
    assert real.llmservingsim is not None and len(real.input_tokens) == 300
    lat = real_latencies(real)
    ours = metrics(lat["ttft"], lat["tpot"], lat["e2e"])
    for key, _ in METRICS:  # the summary prints one decimal (ms)
        assert round(ours[key], 1) == pytest.approx(real.llmservingsim[key][0], abs=0.051), key


def test_settings_follow_the_meta():
    from kvsched.validation import settings

    s = settings(load_run("rtxpro6000-qwen3-32b"))
    assert (s.cost_model, s.tp, s.max_num_seqs, s.max_num_batched_tokens, s.prefix_caching) == \
        ("qwen3-32b-rtxpro6000-tp2", 2, 128, 2048, True)
    assert s.capacity_tokens % 16 == 0 and s.capacity_tokens > 100_000
    assert settings(load_run(LLAMA), capacity=1600, cost_model="llama3.1-8b-rtx4090").capacity_tokens == 1600


def test_command_prints_the_table_on_a_shipped_run(capsys, tmp_path):
    code, out, _ = run(capsys, "validate-vllm", LLAMA, "--output", str(tmp_path / "o"))
    assert code == 0
    for label in ("TTFT Mean", "TPOT P99", "Latency P90", "Makespan", "mean |error|", "E2E MAPE", "LLMServingSim"):
        assert label in out, label
    for name in ("comparison.csv", "requests.csv", "summary.json", "e2e_scatter.png"):
        assert (tmp_path / "o" / name).stat().st_size > 0, name
    per_request = pd.read_csv(tmp_path / "o" / "requests.csv")
    assert len(per_request) == 300 and {"vllm_e2e_s", "kvsched_e2e_s"} <= set(per_request.columns)


def test_json_is_pure_json_with_the_11_metrics(capsys):
    code, out, _ = run(capsys, "validate-vllm", LLAMA, "--json", "--no-prefix-caching")
    assert code == 0
    doc = json.loads(out)
    assert [k for k in doc["metrics"] if k != "makespan"] == [k for k, _ in METRICS]
    assert doc["prefix_caching"] is False and doc["scheduler"]["reserve_full_sequence"] is True
    assert math.isfinite(doc["mean_abs_error_pct"]) and math.isfinite(doc["e2e_mape_pct"])
    assert doc["llmservingsim_mean_abs_error_pct"] == pytest.approx(2.49, abs=0.01)


def test_a_path_and_meta_are_accepted(capsys, tmp_path):
    from kvsched.validation import DATA

    csv = tmp_path / "my_run.csv"
    pd.read_csv(DATA / f"{RUNS[LLAMA]}_requests.csv").head(30).to_csv(csv, index=False)
    code, out, _ = run(capsys, "validate-vllm", str(csv), "--meta", str(DATA / f"{RUNS[LLAMA]}_meta.json"),
                       "--gpu", "rtxpro6000", "--json")
    assert code == 0 and json.loads(out)["num_requests"] == 30
    assert json.loads(out)["llmservingsim_mean_abs_error_pct"] is None


def test_bench_output_is_accepted(capsys, tmp_path):
    from kvsched import loadgen

    real = load_run(LLAMA)
    t0 = real.queued_s.min()
    records = []
    for i in range(40):
        rec = loadgen.RequestRecord(i, float(real.arrival_s[i]), int(real.input_tokens[i]), int(real.output_tokens[i]))
        rec.send_time = float(real.queued_s[i] - t0)
        rec.first_token_time = float(real.first_token_s[i] - t0)
        rec.end_time = float(real.last_token_s[i] - t0)
        rec.num_prompt_tokens, rec.num_output_tokens, rec.success = rec.prompt_len, rec.output_len, True
        records.append(rec)
    result = loadgen.BenchResult(records, loadgen.summarize_records(records), "meta-llama/Llama-3.1-8B",
                                 "2026-12-06T00:00:00Z")
    out_dir = tmp_path / "bench"
    loadgen.save_benchmark(out_dir, result, loadgen.BenchConfig(), {"trace": "test"}, format="csv")
    code, out, _ = run(capsys, "validate-vllm", str(out_dir), "--gpu", "rtxpro6000", "--max-num-seqs", "128",
                       "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["num_requests"] == 40 and doc["cost_model"] == "llama3.1-8b-rtxpro6000"
    assert doc["scheduler"]["max_num_seqs"] == 128
    # the vLLM side is the bench file's own numbers
    lat = (records[0].end_time - records[0].send_time) * 1e3
    assert doc["metrics"]["e2e_mean"]["vllm"] > 0 and lat > 0


@pytest.mark.parametrize("make, expect", [
    (lambda p: p / "missing.csv", "neither a shipped run"),
    (lambda p: (p / "bad.csv").write_text("a,b\n1,2\n") and p / "bad.csv", "lacks column"),
    (lambda p: p / "empty_dir", "holds no requests"),
])
def test_bad_file_is_a_one_line_error(capsys, tmp_path, make, expect):
    (tmp_path / "empty_dir").mkdir()
    code, out, err = run(capsys, "validate-vllm", str(make(tmp_path)), "--meta", str(tmp_path / "m.json"))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvsched: error: ") and expect in lines[0], err


def test_bad_meta_is_a_one_line_error(capsys, tmp_path):
    from kvsched.validation import DATA

    csv = tmp_path / "r.csv"
    csv.write_text((DATA / f"{RUNS[LLAMA]}_requests.csv").read_text())
    for meta, expect in ((tmp_path / "none.json", "does not exist"), (tmp_path / "bad.json", "is not JSON"),
                         (tmp_path / "odd.json", "unknown model")):
        if meta.name == "bad.json":
            meta.write_text("{")
        if meta.name == "odd.json":
            meta.write_text('{"model": "acme/unknown-7b"}')
        code, out, err = run(capsys, "validate-vllm", str(csv), "--meta", str(meta))
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1 and expect in lines[0], err
    code, out, err = run(capsys, "validate-vllm", str(csv))  # no meta beside the file
    assert code == 2 and "no meta file" in err


@pytest.mark.parametrize(("name", "bound"), [(LLAMA, 1.5), ("rtxpro6000-qwen3-32b", 1.0)])
def test_mean_error_on_the_shipped_runs_stays_at_the_measured_level(name, bound):
    """docs/fidelity.md: 1.44 % and 0.91 % (LLMServingSim: 2.49 % and 1.08 %). A cost-model or
    scheduler change that loses the TP 2 all-reduce, the skew correction or the x1.5 attention
    sweep fails here (each alone moves a run above its bound)."""
    from kvsched.validation import compare, settings

    run_ = load_run(name)
    summary = compare(run_, settings(run_))["summary"]
    assert summary["num_preemptions"] == 0
    assert summary["mean_abs_error_pct"] < bound
    assert summary["mean_abs_error_pct"] < summary["llmservingsim_mean_abs_error_pct"]
