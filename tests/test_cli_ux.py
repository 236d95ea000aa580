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


def test_piped_compare_table_keeps_long_labels_on_one_line(exe):
    names = ["mc-benchmark", "alpha-protection", "zhou-jiang", "vidur-vllm", "beta-clearing", "fcfs-static"]
    proc = run_cli(exe, "compare", "--trace", SYNTH, "--schedulers", ",".join(names), "--no-progress",
                   "-o", "alpha-protection:alpha=0.25", "-o", "beta-clearing:beta=0.5")
    assert proc.returncode == 0, proc.stderr
    header = next(ln for ln in proc.stdout.splitlines() if "metric" in ln)
    for name in names:
        assert name in header, header
    assert "…" not in proc.stdout
