"""End to end: kvsched policies inside real vLLM (CPU, the shipped SmolLM2-135M exported
to an HF folder), read from vLLM's own step log (issue 16, docs/vllm.md "End to end").

The same 36 requests (prompts of 16-32 tokens, `ignore_eos`, fixed `max_tokens`: 70%
short (4-10), 30% long (30-40), in random order, exact predictions in `vllm_xargs`'s
offline twin `extra_args["kvsched"]`) all arrive before step 0; the KV cache is 16
blocks of 32 tokens (15 usable, 480 tokens) and at most 8 run at once, so memory binds.
Step counts are deterministic, wall time on a shared CPU is not, so only steps are
compared:
- `vllm` (vLLM's own FCFS policy as a kvsched scheduler): admits in submission order,
  fills memory greedily and preempts (recompute) when a running request needs a block;
- `mcsf`: admits shortest predicted output first, and only while the planned future
  memory fits, so it never preempts; it runs fewer requests at once, so the batch takes
  more steps, but the mean latency in steps is lower (short requests stop waiting
  behind long ones) and the long requests wait longer (higher p90).
The real runs are also compared step by step with the plugin on vLLM's scheduler
driven without a model (kvsched.vllm.harness): same scheduled tokens in every step.
"""

from __future__ import annotations

import random

import pytest

pytest.importorskip("vllm")
pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NUM_REQUESTS = 36
NUM_BLOCKS = 16
BLOCK_SIZE = 32
MAX_NUM_SEQS = 8


def _workload(seed: int = 2):
    rng = random.Random(seed)
    max_tokens = [rng.randrange(4, 11) if rng.random() < 0.7 else rng.randrange(30, 41) for _ in range(NUM_REQUESTS)]
    prompt_lens = [rng.randrange(16, 33) for _ in range(NUM_REQUESTS)]
    prompts = [[rng.randrange(100, 20000) for _ in range(n)] for n in prompt_lens]
    return prompts, max_tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("smollm2-hf")
    subprocess.run([sys.executable, "-m", "kvsched.cli", "model", "export", "--output", str(out)], check=True,
                   capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    from kvsched.vllm.offline import OfflineRequest, run_batch, step_metrics

    prompts, max_tokens = _workload()
    requests = [OfflineRequest(p, m, m) for p, m in zip(prompts, max_tokens)]
    out = tmp_path_factory.mktemp("e2e")
    result = {}
    for name in ("vllm", "mcsf"):
        log = out / f"{name}.jsonl"
        summary = run_batch(model_dir, requests, scheduler=name, step_log=log, num_blocks=NUM_BLOCKS,
                            block_size=BLOCK_SIZE, max_num_seqs=MAX_NUM_SEQS, max_model_len=256, extra_env={"KVSCHED_STRICT": "1"})
        result[name] = (summary, step_metrics(log), log)
    return max_tokens, prompts, result


def test_every_request_gets_exactly_max_tokens(runs) -> None:
    max_tokens, _, result = runs
    for name, (summary, metrics, _) in result.items():
        assert {k: v for k, v in summary["output_tokens"].items()} == {str(i): m for i, m in enumerate(max_tokens)}, name
        assert len(metrics.latency_steps) == NUM_REQUESTS


def test_admission_order_follows_the_policy(runs) -> None:
    max_tokens, _, result = runs
    fcfs = result["vllm"][1].admission_order
    assert fcfs == [str(i) for i in range(NUM_REQUESTS)]
    shortest_first = [str(i) for i in sorted(range(NUM_REQUESTS), key=lambda i: (max_tokens[i], i))]
    assert result["mcsf"][1].admission_order == shortest_first


def test_preemptions_and_per_request_step_counts(runs) -> None:
    max_tokens, prompts, result = runs
    mcsf, fcfs = result["mcsf"][1], result["vllm"][1]
    # Prompts fit the token budget (no chunking), so a request runs one step per output
    # token and computes prompt + max_tokens - 1 tokens; a preempted one recomputes its
    # prompt and output so far when it resumes (that step also samples its next token,
    # so preemption costs tokens, not steps of its own).
    exact = {str(i): len(p) + m - 1 for i, (p, m) in enumerate(zip(prompts, max_tokens))}
    assert mcsf.num_preemptions == 0
    assert mcsf.steps_scheduled == {str(i): m for i, m in enumerate(max_tokens)}
    assert mcsf.tokens_scheduled == exact
    assert fcfs.num_preemptions > 0  # memory binds under greedy admission
    assert fcfs.steps_scheduled == {str(i): m for i, m in enumerate(max_tokens)}
    for rid, n in exact.items():
        assert (fcfs.tokens_scheduled[rid] > n) == (rid in fcfs.preempted), rid


def test_step_counts_differ_as_the_policies_say(runs) -> None:
    _, _, result = runs
    mcsf, fcfs = result["mcsf"][1], result["vllm"][1]
    print(f"\nsteps: vllm {fcfs.num_steps}, mcsf {mcsf.num_steps}; mean latency (steps): vllm {fcfs.mean_latency:.2f}, "
          f"mcsf {mcsf.mean_latency:.2f}; p90: vllm {fcfs.quantile(0.9)}, mcsf {mcsf.quantile(0.9)}; "
          f"preemptions: vllm {fcfs.num_preemptions}, mcsf {mcsf.num_preemptions}")
    assert mcsf.mean_latency < 0.95 * fcfs.mean_latency  # shortest first
    assert mcsf.num_steps > fcfs.num_steps  # fewer at once: the batch ends later
    assert mcsf.quantile(0.9) > fcfs.quantile(0.9)  # long requests wait behind short ones


def test_real_engine_matches_the_model_free_harness(runs) -> None:
    """The plugin's decisions in the real engine equal those on vLLM's scheduler driven
    without a model (kvsched.vllm.harness) on the same stream, step by step."""
    import json

    from kvsched.vllm.config import PolicyConfig
    from kvsched.vllm.harness import Arrival, Driver, build_scheduler, tiny_model_dir
    from kvsched.vllm.plugin import KvschedScheduler

    max_tokens, prompts, result = runs
    stream = [Arrival(0, len(p), m, {"predicted_output_len": m}) for p, m in zip(prompts, max_tokens)]
    for name, (_, _, log) in result.items():
        sched = build_scheduler(tiny_model_dir(), KvschedScheduler, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                                max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=2048, max_model_len=256,
                                kvsched_config=PolicyConfig(name, {}, strict=True))
        harness = [{f"{k}": v for k, v in r.scheduled.items()} for r in Driver(sched).run(stream)]
        real = [{k.split("-")[0]: v for k, v in json.loads(line)["scheduled"].items()}
                for line in log.read_text().splitlines()]
        assert real == harness, name


def test_vllm_greedy_output_on_the_exported_model_equals_kvsched_engine(model_dir) -> None:
    """The folder `kvsched model export` writes is the same model to vLLM: its greedy
    tokens on three chat prompts equal kvsched's own engine's, token for token (float32)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "vllm_greedy_check.py"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run([sys.executable, str(script), str(model_dir), "--max-tokens", "16"], capture_output=True,
                          text=True, env=env, check=False, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("SAME", "DIFF"))]
    assert proc.returncode == 0 and len(lines) == 3 and all(ln.startswith("SAME") for ln in lines), (
        proc.stdout + proc.stderr[-3000:])
