"""A batch of requests through real vLLM (offline `vllm.LLM`) under a kvsched policy.

Used by the end-to-end test (tests/test_vllm_e2e.py) and benchmarks/bench_vllm_e2e.py.
`run_batch` starts a fresh Python process per run (vLLM spawns its engine core; the
plugin reads its policy from environment variables that must be set before vLLM starts),
so the caller needs no main guard and two runs in one test do not share state.

The requests all arrive at once (one `LLM.generate` call, in list order), each with a
fixed prompt, `max_tokens` and `ignore_eos`, so the number of output tokens is exactly
`max_tokens` and the step log is deterministic for a given policy. The policy's step log
(`KVSCHED_STEP_LOG`) is the record: `step_metrics` turns it into per-request step counts.

    python -m kvsched.vllm.offline SPEC.json   # what run_batch runs in the child
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PLUGIN_CLS = "kvsched.vllm.plugin.KvschedScheduler"


@dataclass(frozen=True)
class OfflineRequest:
    prompt_ids: list[int]
    max_tokens: int
    predicted_output_len: int | None = None  # None: no prediction sent


def run_batch(model_dir: str | Path, requests: list[OfflineRequest], *, scheduler: str | None,
              options: dict | None = None, step_log: str | Path, num_blocks: int = 32, block_size: int = 32,
              max_num_seqs: int = 16, max_num_batched_tokens: int = 2048, max_model_len: int = 512, timeout_s: float = 600,
              extra_env: dict | None = None) -> dict:
    """Run `requests` through vLLM with the kvsched plugin under `scheduler` (None: vLLM's own
    Scheduler, no plugin) and return the child's summary (output token counts per request).
    The KV cache is `num_blocks` blocks of `block_size` tokens (small, so memory binds; vLLM's
    CPU attention wants multiples of 32)."""
    step_log = Path(step_log)
    if step_log.exists():
        step_log.unlink()
    spec = {
        "model_dir": str(model_dir), "scheduler_cls": PLUGIN_CLS if scheduler else None,
        "requests": [r.__dict__ for r in requests], "num_blocks": num_blocks, "block_size": block_size,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens, "max_model_len": max_model_len,
    }
    env = dict(os.environ)
    if scheduler:
        from kvsched.vllm.config import plugin_env

        env.update(plugin_env(scheduler, options or {}, step_log=str(step_log)))
    env.update(extra_env or {})
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # else vLLM CPU wants 92% of RAM free
    # The engine core in this process: LLM.generate adds every request before the first
    # step (with a separate core process, step 0 may see only the first few).
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    spec_path = step_log.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "kvsched.vllm.offline", str(spec_path)], env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line][-5:]
        raise RuntimeError(f"vLLM run ({scheduler}) failed with exit code {proc.returncode}:\n" + "\n".join(errors))
    return json.loads(Path(str(spec_path) + ".out").read_text())


@dataclass
class StepMetrics:
    """What a step log says about one run (all requests arrive before step 0)."""

    num_steps: int
    num_preemptions: int
    admission_order: list[str]  # request ids by the step they were first scheduled
    steps_scheduled: dict[str, int]  # request id -> number of steps it got tokens in
    tokens_scheduled: dict[str, int]  # request id -> tokens computed for it (recomputation included)
    latency_steps: dict[str, int]  # request id -> index of its last scheduled step + 1
    preempted: dict[str, int]  # request id -> times preempted

    @property
    def mean_latency(self) -> float:
        return sum(self.latency_steps.values()) / len(self.latency_steps)

    def quantile(self, q: float) -> int:
        values = sorted(self.latency_steps.values())
        return values[min(len(values) - 1, int(q * len(values)))]


def step_metrics(step_log: str | Path) -> StepMetrics:
    """Per-request step counts from the plugin's step log. vLLM's offline ids are
    "<index>-<suffix>"; the index (submission order) is kept."""
    order: list[str] = []
    steps: dict[str, int] = {}
    tokens: dict[str, int] = {}
    last: dict[str, int] = {}
    preempted: dict[str, int] = {}
    num_steps = 0
    for line in Path(step_log).read_text().splitlines():
        rec = json.loads(line)
        num_steps += 1
        for rid, n in rec["scheduled"].items():  # vLLM's order: running first, then admissions in order
            key = rid.split("-")[0]
            if key not in steps:
                order.append(key)
            steps[key] = steps.get(key, 0) + 1
            tokens[key] = tokens.get(key, 0) + n
            last[key] = rec["step"]
        for rid in rec["preempted"]:
            key = rid.split("-")[0]
            preempted[key] = preempted.get(key, 0) + 1
    return StepMetrics(num_steps, sum(preempted.values()), order, steps, tokens, {k: v + 1 for k, v in last.items()},
                       preempted)


def _child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model_dir"], dtype="float32", enforce_eager=True, seed=0,
              scheduler_cls=spec["scheduler_cls"], max_num_seqs=spec["max_num_seqs"],
              max_num_batched_tokens=spec["max_num_batched_tokens"],
              max_model_len=spec["max_model_len"], block_size=spec["block_size"],
              num_gpu_blocks_override=spec["num_blocks"], enable_prefix_caching=False,
              async_scheduling=False)
    prompts, params = [], []
    for r in spec["requests"]:
        extra = None
        if r["predicted_output_len"] is not None:
            extra = {"kvsched": {"predicted_output_len": int(r["predicted_output_len"])}}
        prompts.append({"prompt_token_ids": r["prompt_ids"]})
        params.append(SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], ignore_eos=True,
                                     extra_args=extra))
    outputs = llm.generate(prompts, params, use_tqdm=False)
    summary = {"output_tokens": {o.request_id: len(o.outputs[0].token_ids) for o in outputs},
               "request_ids": [o.request_id for o in outputs]}
    Path(spec_path + ".out").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
