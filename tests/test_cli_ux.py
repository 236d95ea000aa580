"""What a user sees from the CLI (issue 15 section 4), run for real in subprocesses:
one-line errors for a missing `engine` extra, progress and fit warnings of `calibrate`,
`serve` saying what it loads and when it is ready, rejected requests named, the same
scheduler under two option sets in `compare`, and tables that keep full names when piped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SYNTH = "synthetic:n=40,rate=5,prompt=100,output=20"
ENGINE_EXTRA_HINT = "pip install 'kvsched[engine]'"

# A sitecustomize that makes the named modules unimportable, as on an install without the
# `engine` extra: any import of them (or their submodules) raises ModuleNotFoundError.
BLOCKER = '''
import os, sys

_BLOCKED = set(os.environ["KVSCHED_TEST_BLOCK"].split(","))


class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Missing())
'''


def run_cli(exe: str, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def without(tmp_path: Path, *modules: str) -> dict:
    """Environment in which `modules` cannot be imported (a sitecustomize first on the path)."""
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "KVSCHED_TEST_BLOCK": ",".join(modules)}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{proc.stderr}"
    assert lines[0].startswith("kvsched: error: "), lines[0]
    return lines[0]


# --- the engine extra ---------------------------------------------------------------------------


def test_the_blocker_really_hides_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                          env={**os.environ, **without(tmp_path, "torch")}, check=False)
    assert proc.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in proc.stderr


@pytest.mark.parametrize("args", [
    ("serve",),
    ("calibrate", "--repeats", "1"),
    ("validate", "--trace", SYNTH),
    ("simulate", "--backend", "engine", "--trace", SYNTH, "--no-progress"),
    ("compare", "--backend", "engine", "--trace", SYNTH, "--no-progress"),
], ids=lambda a: " ".join(a[:3]))
def test_engine_commands_without_the_engine_extra_say_which_extra(exe, tmp_path, args):
    line = one_error_line(run_cli(exe, *args, env=without(tmp_path, "torch")))
    assert ENGINE_EXTRA_HINT in line and "torch" in line, line
    assert f"kvsched {args[0]}" in line


def test_serve_without_the_web_modules_says_which_extra(exe, tmp_path):
    # Only uvicorn is hidden: the message must name it, so the rest of the extra must be there.
    pytest.importorskip("torch")
    line = one_error_line(run_cli(exe, "serve", env=without(tmp_path, "uvicorn")))
    assert ENGINE_EXTRA_HINT in line and "uvicorn" in line, line


# --- tables keep full names when piped ---------------------------------------------------------


def test_piped_batch_table_keeps_full_policy_names(exe):
    proc = run_cli(exe, "batch", "-n", "50", "--capacity", "4000")
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("│")]
    names = [ln.split("│")[1].strip() for ln in rows]
    assert names == ["gba", "gsa", "mcsf-break", "sorted-f", "fcfs-restart", "a-min", "b-scaling"], proc.stdout
    assert "…" not in proc.stdout


def test_piped_compare_table_keeps_labels_with_options_whole(exe):
    proc = run_cli(exe, "compare", "--trace", SYNTH, "--schedulers", "alpha-protection,beta-clearing,vllm,sarathi",
                   "--no-progress", "-o", "alpha-protection:alpha=0.25", "-o", "beta-clearing:beta=0.5",
                   "-o", "vllm:max_num_batched_tokens=1024")
    assert proc.returncode == 0, proc.stderr
    header = next(ln for ln in proc.stdout.splitlines() if "metric" in ln)
    for label in ("alpha-protection (alpha=0.25)", "beta-clearing (beta=0.5)", "vllm (max_num_batched_tokens=1024)",
                  "sarathi"):
        assert label in header, header
    assert "…" not in proc.stdout


# --- compare: one scheduler under two option sets ----------------------------------------------


def test_compare_runs_one_scheduler_twice_under_labels(exe, tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli(exe, "compare", "--trace", SYNTH, "--schedulers", "sarathi,small=sarathi,big=sarathi",
                   "-o", "small:chunk_size=32", "-o", "big:chunk_size=1024", "--json", "--no-progress",
                   "--output", out)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    assert [r["scheduler"] for r in runs] == ["sarathi"] * 3
    assert [r["label"] for r in runs] == ["sarathi", "small (sarathi, chunk_size=32)", "big (sarathi, chunk_size=1024)"]
    assert [r["options"] for r in runs] == [{}, {"chunk_size": 32}, {"chunk_size": 1024}]
    # Three result directories, each with its own options and label.
    assert sorted(p.name for p in out.iterdir()) == ["big", "sarathi", "small"]
    cfgs = {d: json.loads((out / d / "config.json").read_text()) for d in ("sarathi", "small", "big")}
    assert cfgs["sarathi"]["scheduler"]["chunk_size"] == 512
    assert cfgs["small"]["scheduler"]["chunk_size"] == 32 and cfgs["big"]["scheduler"]["chunk_size"] == 1024
    assert cfgs["small"]["label"] == "small (sarathi, chunk_size=32)"
    # 32-token chunks make 100-token prompts take four steps: a later first token than 1024.
    assert runs[1]["ttft_mean"] > runs[2]["ttft_mean"]
    # Plots and reports name the runs by their labels.
    from kvsched.plots import _label

    assert _label(out / "big") == "big (sarathi, chunk_size=1024)"
    report = tmp_path / "report.md"
    rep = run_cli(exe, "report", out, "--format", "md", "-o", report)
    assert rep.returncode == 0, rep.stderr
    text = report.read_text()
    for label in ("small (sarathi, chunk_size=32)", "big (sarathi, chunk_size=1024)"):
        assert label in text


def test_compare_table_labels_runs_with_their_options(exe):
    proc = run_cli(exe, "compare", "--trace", SYNTH, "--schedulers", "a=sarathi,b=sarathi", "-o", "b:chunk_size=64",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    header = next(ln for ln in proc.stdout.splitlines() if "metric" in ln)
    assert "a (sarathi)" in header and "b (sarathi, chunk_size=64)" in header, header


def test_compare_same_scheduler_twice_without_labels_is_a_clean_error(exe):
    line = one_error_line(run_cli(exe, "compare", "--trace", SYNTH, "--schedulers", "sarathi,sarathi",
                                  "-o", "sarathi:chunk_size=256", "--no-progress"))
    assert "listed twice" in line and "a=sarathi,b=sarathi" in line, line


@pytest.mark.parametrize("entry", ["a=", "=sarathi", "a b=sarathi", "x/y=sarathi"])
def test_compare_malformed_label_is_a_clean_error(exe, entry):
    line = one_error_line(run_cli(exe, "compare", "--trace", SYNTH, "--schedulers", f"vllm,{entry}",
                                  "--no-progress"))
    assert "LABEL=NAME" in line, line


# --- rejected requests are named ----------------------------------------------------------------


def write_csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("arrival_time,prompt_len,output_len\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    return path


def test_rejected_requests_are_named_with_id_and_sizes(exe, tmp_path):
    csv = write_csv(tmp_path / "big.csv", [(0.0, 100, 5), (0.1, 9000, 4), (0.2, 50, 3), (0.3, 8000, 7)])
    proc = run_cli(exe, "simulate", "--trace", csv, "--capacity", "4096", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert "2 request(s) rejected" in err[0] and "4096" in err[0], proc.stderr
    assert err[1:] == ["  request 1: prompt_len 9000, output_len 4", "  request 3: prompt_len 8000, output_len 7"]
    # --json: the same requests under a key, stdout still one JSON document
    proc = run_cli(exe, "simulate", "--trace", csv, "--capacity", "4096", "--no-progress", "--json")
    s = json.loads(proc.stdout)
    assert s["num_rejected"] == 2
    assert [(r["request_id"], r["prompt_len"], r["output_len"]) for r in s["rejected_requests"]] == [
        (1, 9000, 4), (3, 8000, 7)]
    assert "9000" in s["rejected_requests"][0]["reason"]
    assert proc.stderr == ""


def test_rejected_list_is_capped_and_shown_once_per_compare(exe, tmp_path):
    csv = write_csv(tmp_path / "many.csv", [(0.1 * i, 9000 if i % 2 else 100, 5) for i in range(60)])
    proc = run_cli(exe, "compare", "--trace", csv, "--schedulers", "vllm,sarathi", "--capacity", "4096",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert sum("request(s) rejected" in ln for ln in err) == 1, proc.stderr  # same 30 for both schedulers
    assert "30 request(s) rejected" in err[0]
    assert err[1] == "  request 1: prompt_len 9000, output_len 5"
    assert sum(ln.startswith("  request ") for ln in err) == 20
    assert err[-1].startswith("  and 10 more")
    proc = run_cli(exe, "compare", "--trace", csv, "--schedulers", "vllm,sarathi", "--capacity", "4096",
                   "--no-progress", "--json")
    assert [len(r["rejected_requests"]) for r in json.loads(proc.stdout)] == [30, 30]


# --- calibrate: progress and a warning on a poor fit ---------------------------------------------


def _shapes_and_times(noise: bool):
    """Decode steps of 1..16 sequences at 64..512 KV tokens each: times exactly affine in the
    KV tokens, or the same plus alternating +-20 ms (a machine busy every other step)."""
    from kvsched.backend import BatchShape

    shapes, times = [], []
    for i, (b, kv) in enumerate((b, kv) for b in (1, 2, 4, 8, 16) for kv in (64, 128, 256, 512)):
        shapes.append(BatchShape(b, 0, b, b * kv, 0))
        times.append(0.01 + 2e-7 * b * kv + (0.02 if noise and i % 2 else 0.0))
    return shapes, times


def test_poor_fit_warning_names_r2_and_point_count():
    from kvsched.engine.calibrate import POOR_FIT_R2, poor_fit_warning
    from kvsched.sim.cost import fit_affine

    good = fit_affine(*_shapes_and_times(noise=False), model="affine")
    assert good.r2 > 0.99 and poor_fit_warning(good) is None
    poor = fit_affine(*_shapes_and_times(noise=True), model="affine")
    assert poor.r2 < POOR_FIT_R2
    warning = poor_fit_warning(poor)
    assert warning is not None
    assert f"r2 = {poor.r2:.3f}" in warning and "over 20 steps" in warning
    assert "max relative error" in warning and "\n" not in warning


def test_calibration_reports_progress_of_each_phase():
    torch = pytest.importorskip("torch")  # noqa: F841
    import kvsched.schedulers  # noqa: F401
    from kvsched.engine.calibrate import calibrate
    from kvsched.engine.model import Llama, LlamaConfig, init_random_

    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, max_position_embeddings=512)
    tiny = init_random_(Llama(config), seed=3)
    calls = []
    fit, points = calibrate(tiny, block_size=8, repeats=1, progress=lambda *a: calls.append(a))
    profile = [c for c in calls if c[0] == "profile"]
    run = [c for c in calls if c[0] == "run"]
    assert profile[0] == ("profile", 0, 28) and profile[-1] == ("profile", 28, 28)
    assert [d for _, d, _ in profile] == list(range(29))  # one call per profiled batch shape
    assert run[0] == ("run", 0, 48) and run[-1] == ("run", 48, 48)
    assert calls.index(profile[-1]) < calls.index(run[0])  # profiling first, then the run
    assert fit.num_points == len(points) > 28


# --- serve says what it is doing -------------------------------------------------------------------


def _read_stderr_until(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    """stderr lines of `proc` up to and including the first one containing `needle`."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)  # a generous bound for a stuck server, not a sync point
        except queue.Empty:
            raise AssertionError(f"no {needle!r} on stderr within {timeout} s; got:\n{''.join(seen)}") from None
        seen.append(line)
        if needle in line:
            return seen


def test_serve_says_it_loads_the_model_and_when_it_is_ready(exe):
    pytest.importorskip("torch")
    pytest.importorskip("uvicorn")
    from kvsched.engine.weights import default_gguf_path

    try:
        default_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    import httpx

    proc = subprocess.Popen([exe, "serve", "--port", "0", "--capacity", "256", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen = _read_stderr_until(proc, "ready on http://", timeout=300)
        assert "kvsched serve: loading model SmolLM2-135M-Instruct" in seen[0], seen
        url = seen[-1].strip().rpartition("ready on ")[2]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")  # the port really bound
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
