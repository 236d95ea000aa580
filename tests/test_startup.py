"""Start-up: `kvsched simulate --json` imports none of the heavy optional libraries
(docs/architecture.md, "Start-up and lazy imports")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kvsched

HEAVY = ("pandas", "pyarrow", "matplotlib", "scipy", "highspy", "rich")


def _imported_after(argv: list[str], modules: tuple[str, ...] = HEAVY) -> list[str]:
    code = (f"import kvsched.cli, sys; kvsched.cli.main({argv!r}); "
            f"print(sorted(m for m in {modules!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(kvsched.__file__).parents[1])}  # this checkout's kvsched
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1].replace("'", '"'))


def test_simulate_json_imports_no_heavy_library():
    argv = ["simulate", "--trace", "synthetic:n=5,rate=1,prompt=8,output=2", "--json", "--no-progress"]
    assert _imported_after(argv) == []


def test_simulate_on_a_shipped_trace_reads_it_without_pandas():
    argv = ["simulate", "--trace", "azure-conv", "--num-requests", "50", "--scheduler", "vllm", "--json",
            "--no-progress"]
    assert _imported_after(argv) == []


# Parts of kvsched a single-replica `simulate` does not need, imported on first use.
LAZY_PARTS = ("kvsched.cluster.simulate", "kvsched.cluster.disagg")


def test_single_replica_simulate_does_not_load_the_cluster_simulator():
    argv = ["simulate", "--trace", "synthetic:n=5,rate=1,prompt=8,output=2", "--json", "--no-progress"]
    assert _imported_after(argv, LAZY_PARTS) == []
    # ... which a cluster run does load, through the same package.
    assert _imported_after([*argv, "--replicas", "2"], LAZY_PARTS) == sorted(LAZY_PARTS)
