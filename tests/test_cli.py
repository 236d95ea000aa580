"""The `kvsched` console script, run for real in a subprocess (no mocks).

Every test goes through the installed entry point, so argument parsing, plugin
registration, error reporting (one line, exit code 2, no traceback) and the files
written with --output are checked exactly as a user sees them. Workloads are kept
small (--num-requests, short synthetic specs) so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest

SYNTH = "synthetic:n=200,rate=5,prompt=100,output=20"
SMALL = ["--trace", "azure-conv", "--num-requests", "60"]
JSON_KEYS = (
    "num_requests", "num_completed", "num_rejected", "ttft_mean", "ttft_p99", "e2e_mean", "e2e_p99",
    "throughput_tokens_per_s", "num_preemptions", "peak_kv_tokens", "capacity_tokens", "sim_wall_time_s",
)
RUN_FILES = ("requests.parquet", "steps.parquet", "summary.json", "config.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



def kvsched(exe: str, *args: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    """Run the console script; with ok=True insist on exit 0 and show stderr otherwise."""
    proc = subprocess.run([exe, *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=120)
    if ok:
        assert proc.returncode == 0, f"kvsched {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def one_json(stdout: str):
    """stdout must be exactly one JSON document (nothing before or after it)."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one line of JSON on stdout, got {len(lines)}:\n{stdout}"
    return json.loads(lines[0], parse_constant=_no_constants)


def _no_constants(name: str):
    raise AssertionError(f"non-standard JSON constant {name} in output")


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, one line `kvsched: error: ...` on stderr naming every fragment, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{proc.stderr}"
    (line,) = lines
    assert line.startswith("kvsched: error: "), line
    for frag in fragments:
        assert frag in line, f"{frag!r} not in {line!r}"
    return line


def assert_sane_summary(s: dict, n: int) -> None:
    for key in JSON_KEYS:
        assert key in s, f"summary lacks {key}"
    assert s["num_requests"] == n
    assert s["num_completed"] + s["num_rejected"] == n
    assert 0 <= s["peak_kv_tokens"] <= s["capacity_tokens"]
    assert s["num_preemptions"] >= 0
    assert s["sim_wall_time_s"] >= 0
    if s["num_completed"]:
        for key in ("ttft_mean", "ttft_p99", "e2e_mean", "e2e_p99", "throughput_tokens_per_s"):
            assert isinstance(s[key], float) and math.isfinite(s[key]), key
        # Every request's TTFT is at most its e2e latency, so means and order statistics follow.
        assert 0 < s["ttft_mean"] <= s["e2e_mean"]
        assert 0 < s["ttft_p99"] <= s["e2e_p99"]
        assert s["throughput_tokens_per_s"] > 0


def write_csv(path: Path, rows: list[tuple]) -> Path:
    lines = ["arrival_time,prompt_len,output_len"] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- simulate ------------------------------------------------------------------------------


def test_simulate_json_on_real_trace(exe):
    proc = kvsched(exe, "simulate", "--trace", "azure-conv", "--scheduler", "vllm", "--json",
                   "--num-requests", "300", "--no-progress")
    s = one_json(proc.stdout)
    assert s["scheduler"] == "vllm"
    assert_sane_summary(s, 300)
    assert s["num_completed"] + s["num_rejected"] == s["num_requests"] == 300
    assert s["capacity_tokens"] == 137_000 // 16 * 16  # default capacity, whole 16-token blocks
    # The first keys are the documented headline keys, in order.
    assert tuple(s)[1: 1 + len(JSON_KEYS)] == JSON_KEYS
    assert "Traceback" not in proc.stderr


def test_simulate_user_csv(exe, tmp_path):
    csv = write_csv(tmp_path / "mine.csv", [(0.0, 100, 10), (0.25, 50, 5), (1.0, 300, 20), (1.5, 8, 1)])
    s = one_json(kvsched(exe, "simulate", "--trace", csv, "--json", "--no-progress").stdout)
    assert_sane_summary(s, 4)
    assert s["num_completed"] == 4 and s["num_rejected"] == 0
    assert s["num_completed_output_tokens"] == 10 + 5 + 20 + 1


def test_simulate_malformed_csv_names_file_line_and_column(exe, tmp_path):
    csv = write_csv(tmp_path / "bad.csv", [(0.0, 100, 10), (0.5, -3, 4), (1.0, 5, 5)])
    proc = kvsched(exe, "simulate", "--trace", csv, "--json", "--no-progress", ok=False)
    line = assert_user_error(proc, "bad.csv", "line 3", "prompt_len", "-3")
    assert str(csv) in line


def test_simulate_synthetic_spec(exe):
    s = one_json(kvsched(exe, "simulate", "--trace", SYNTH, "--json", "--no-progress").stdout)
    assert_sane_summary(s, 200)
    assert s["num_completed"] == 200
    assert s["num_completed_output_tokens"] == 200 * 20
    # 200 requests of 100 + 20 tokens at 5 req/s barely overlap: far below capacity.
    assert s["peak_kv_tokens"] < 20 * (100 + 20)


def test_unknown_scheduler_is_a_clean_error(exe):
    proc = kvsched(exe, "simulate", *SMALL, "--scheduler", "nope", "--no-progress", ok=False)
    assert_user_error(proc, "unknown scheduler 'nope'", "vllm")


def test_unknown_scheduler_option_is_a_clean_error(exe):
    proc = kvsched(exe, "simulate", *SMALL, "-o", "nope=1", "--no-progress", ok=False)
    assert_user_error(proc, "vllm", "nope")


@pytest.mark.parametrize("opt, fragment", [("max_num_seqs=0", "max_num_seqs must be >= 1"),
                                           ("no-equals-sign", "key=value")])
def test_bad_scheduler_option_values_are_clean_errors(exe, opt, fragment):
    proc = kvsched(exe, "simulate", *SMALL, "-o", opt, "--no-progress", ok=False)
    assert_user_error(proc, fragment)


def test_unknown_trace_is_a_clean_error(exe, tmp_path):
    proc = kvsched(exe, "simulate", "--trace", "no-such-trace", "--no-progress", cwd=tmp_path, ok=False)
    assert_user_error(proc, "unknown trace 'no-such-trace'", "azure-conv")


def test_simulate_option_is_applied(exe, tmp_path):
    out = tmp_path / "run"
    kvsched(exe, "simulate", *SMALL, "-o", "max_num_seqs=2", "-o", "max-num-batched-tokens=512",
            "--no-progress", "--output", out)
    sched = json.loads((out / "config.json").read_text())["scheduler"]
    assert sched["name"] == "vllm"
    assert sched["max_num_seqs"] == 2 and sched["max_num_batched_tokens"] == 512  # '-' in keys -> '_'
    steps = pd.read_parquet(out / "steps.parquet")
    assert steps["num_seqs"].max() == 2
    assert (steps["num_prefill_tokens"] + steps["num_decode_seqs"]).max() <= 512


def test_request_that_cannot_fit_is_rejected_and_the_rest_complete(exe, tmp_path):
    csv = write_csv(tmp_path / "big.csv", [(0.0, 100, 5), (0.1, 200_000, 4), (0.2, 50, 3), (0.3, 20, 2)])
    out = tmp_path / "run"
    proc = kvsched(exe, "simulate", "--trace", csv, "--json", "--no-progress", "--output", out)
    s = one_json(proc.stdout)
    assert s["num_rejected"] == 1 and s["num_completed"] == 3 and s["num_requests"] == 4
    assert s["num_completed_output_tokens"] == 5 + 3 + 2  # the rejected request's 4 tokens do not count
    reqs = pd.read_parquet(out / "requests.parquet")
    rejected = reqs[reqs["status"] == "rejected"]
    assert rejected["request_id"].tolist() == [1]
    assert "200000" in rejected["reject_reason"].iloc[0]
    assert (reqs.loc[reqs["status"] != "rejected", "status"] == "finished").all()
    assert reqs.loc[reqs["status"] == "rejected", "e2e_latency"].isna().all()


# --- compare -------------------------------------------------------------------------------


def test_compare_json_lists_one_summary_per_scheduler(exe):
    proc = kvsched(exe, "compare", *SMALL, "--schedulers", "vllm,sarathi", "--json", "--no-progress")
    out = one_json(proc.stdout)
    assert isinstance(out, list) and [s["scheduler"] for s in out] == ["vllm", "sarathi"]
    for s in out:
        assert_sane_summary(s, 60)
    # Same workload for both.
    assert out[0]["num_completed_output_tokens"] == out[1]["num_completed_output_tokens"]


def test_compare_per_scheduler_options(exe, tmp_path):
    base = one_json(kvsched(exe, "compare", *SMALL, "--schedulers", "vllm,sarathi", "--json",
                            "--no-progress").stdout)
    out_dir = tmp_path / "cmp"
    tuned = one_json(kvsched(exe, "compare", *SMALL, "--schedulers", "vllm,sarathi", "-o", "vllm:max_num_seqs=4",
                             "-o", "sarathi:chunk_size=64", "--json", "--no-progress", "--output", out_dir).stdout)
    assert sorted(p.name for p in out_dir.iterdir()) == ["sarathi", "vllm"]
    vllm_cfg = json.loads((out_dir / "vllm" / "config.json").read_text())["scheduler"]
    sarathi_cfg = json.loads((out_dir / "sarathi" / "config.json").read_text())["scheduler"]
    assert vllm_cfg["max_num_seqs"] == 4 and "chunk_size" not in vllm_cfg
    assert sarathi_cfg["chunk_size"] == 64 and "max_num_seqs" not in sarathi_cfg
    assert pd.read_parquet(out_dir / "vllm" / "steps.parquet")["num_seqs"].max() <= 4
    # Four sequences at a time instead of 256 queue the azure-conv requests up.
    assert tuned[0]["ttft_mean"] > base[0]["ttft_mean"]
    for run in ("vllm", "sarathi"):
        assert all((out_dir / run / f).is_file() for f in RUN_FILES)


def test_compare_option_without_scheduler_prefix_is_a_clean_error(exe):
    proc = kvsched(exe, "compare", *SMALL, "--schedulers", "vllm,sarathi", "-o", "max_num_seqs=4",
                   "--no-progress", ok=False)
    assert_user_error(proc, "SCHEDULER:key=value")


def test_compare_options_for_hyphenated_scheduler_names(exe, tmp_path):
    out_dir = tmp_path / "cmp"
    kvsched(exe, "compare", *SMALL, "--schedulers", "vllm,vidur-vllm", "-o", "vidur-vllm:batch_size_cap=4",
            "--no-progress", "--output", out_dir)
    cfg = json.loads((out_dir / "vidur-vllm" / "config.json").read_text())["scheduler"]
    assert cfg["batch_size_cap"] == 4


# --- listings and trace statistics -----------------------------------------------------------


@pytest.mark.parametrize("command, names", [
    ("schedulers", ["vllm", "sarathi", "vidur-vllm", "fcfs-static", "sjf"]),
    ("traces", ["azure-conv", "azure-code", "sharegpt-8k", "arxiv-summarization", "mooncake-conv"]),
    ("cost-models", ["unit", "wait-paper", "llama2-7b-a100", "llama2-7b-h100"]),
])
def test_listings_name_registered_entries(exe, command, names):
    proc = kvsched(exe, command)
    for name in names:
        assert name in proc.stdout, f"{name} missing from `kvsched {command}`:\n{proc.stdout}"


def test_trace_stats_json(exe):
    stats = one_json(kvsched(exe, "trace-stats", "--trace", "azure-conv", "--json").stdout)
    assert stats["num_requests"] == 19366
    assert stats["prompt_len_max"] >= stats["prompt_len_p99"] >= stats["prompt_len_p50"] >= 1


# --- output files and plots --------------------------------------------------------------------


def test_output_dir_parquet_and_csv(exe, tmp_path):
    pq_dir, csv_dir = tmp_path / "pq", tmp_path / "csv"
    s = one_json(kvsched(exe, "simulate", "--trace", SYNTH, "--json", "--no-progress", "--output", pq_dir).stdout)
    kvsched(exe, "simulate", "--trace", SYNTH, "--no-progress", "--output", csv_dir, "--format", "csv")
    assert sorted(p.name for p in pq_dir.iterdir()) == sorted(RUN_FILES)
    assert sorted(p.name for p in csv_dir.iterdir()) == ["config.json", "requests.csv", "steps.csv", "summary.json"]
    reqs = pd.read_parquet(pq_dir / "requests.parquet")
    assert len(reqs) == 200 and (reqs["status"] == "finished").all()
    summary = json.loads((pq_dir / "summary.json").read_text())
    assert summary["num_completed"] == s["num_completed"] == 200
    assert "sim_wall_time_s" not in summary  # files hold no wall-clock numbers
    pd.testing.assert_frame_equal(pd.read_csv(csv_dir / "steps.csv"), pd.read_parquet(pq_dir / "steps.parquet"))
    csv_reqs = pd.read_csv(csv_dir / "requests.csv")
    for col in ("request_id", "arrival_time", "prompt_len", "output_len", "ttft", "e2e_latency", "tpot"):
        pd.testing.assert_series_equal(csv_reqs[col], reqs[col])


def test_plot_writes_png(exe, tmp_path):
    runs = []
    for sched in ("vllm", "sarathi"):
        runs.append(tmp_path / sched)
        kvsched(exe, "simulate", *SMALL, "--scheduler", sched, "--no-progress", "--output", runs[-1])
    for kind in ("latency-cdf", "kv-usage"):
        png = tmp_path / "plots" / f"{kind}.png"
        proc = kvsched(exe, "plot", *runs, "--kind", kind, "--output", png)
        assert str(png) in proc.stdout
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 10_000  # axes, two curves and a legend, not an empty canvas


def test_plot_of_a_non_run_directory_is_a_clean_error(exe, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = kvsched(exe, "plot", tmp_path / "empty", "--output", tmp_path / "x.png", ok=False)
    assert_user_error(proc, "empty", "config.json", "kvsched run directory")
    assert not (tmp_path / "x.png").exists()
