"""vLLM's real v1 Scheduler on a fake KV configuration, driven step by step on the CPU.

No model, no worker: `build_scheduler` makes a `VllmConfig` whose model folder only
needs a `config.json` (`tiny_model_dir` writes one), a one-group `KVCacheConfig` of
`num_blocks` blocks (block 0 is vLLM's null block) and a `StructuredOutputManager`.
`Driver` adds a request stream (arrivals by step), calls `schedule()`, feeds back one
sampled token for every request whose step reached its last known token, calls
`update_from_output()`, records each step's decisions and checks vLLM's block
accounting (free + held == usable) after every step. `simulate` runs kvsched's own
loop on the same stream with unit-length steps, recording the same per-step decisions,
for the simulator-vs-vLLM equivalence tests.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import (
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
)
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from kvsched.schedulers.proxy import SchedulerProxy

SAMPLED_TOKEN = 7

_TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 512,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
    "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True,
}


def tiny_model_dir(path: str | Path | None = None) -> str:
    """A folder with only a tiny Llama `config.json` (all the scheduler reads)."""
    folder = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="kvsched-vllm-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_TINY_LLAMA))
    return str(folder)


def build_scheduler(model_dir: str, scheduler_cls=Scheduler, *, num_blocks: int = 64, block_size: int = 16,
                    max_num_seqs: int = 8, max_num_batched_tokens: int = 64, enable_chunked_prefill: bool = True,
                    long_prefill_token_threshold: int = 0, prefix_caching: bool = False, max_model_len: int = 2048,
                    async_scheduling: bool = False, **kwargs) -> Scheduler:
    """vLLM's scheduler (or `scheduler_cls`) on `num_blocks` fake KV blocks. Extra
    keyword arguments go to the scheduler class (e.g. the plugin's `kvsched_config`)."""
    model_config = ModelConfig(model=model_dir, dtype="float32", max_model_len=max_model_len,
                               skip_tokenizer_init=True)
    cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=prefix_caching)
    cache_config.num_gpu_blocks = num_blocks  # the engine sets it after profiling memory
    scheduler_config = SchedulerConfig(
        max_model_len=max_model_len, is_encoder_decoder=False, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, enable_chunked_prefill=enable_chunked_prefill,
        long_prefill_token_threshold=long_prefill_token_threshold, async_scheduling=async_scheduling)
    vllm_config = VllmConfig(model_config=model_config, cache_config=cache_config, scheduler_config=scheduler_config)
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=8, dtype=torch.float32)
    kv_cache_config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(layer_names=["model.layers.0.self_attn.attn"], kv_cache_spec=spec)])
    return scheduler_cls(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
                         structured_output_manager=StructuredOutputManager(vllm_config), block_size=block_size,
                         **kwargs)


@dataclass(frozen=True)
class Arrival:
    """A request of the stream: arrives before step `step`."""

    step: int
    prompt_len: int
    max_tokens: int
    extra: dict | None = None  # SamplingParams.extra_args["kvsched"]


@dataclass(frozen=True)
class StepRecord:
    step: int
    scheduled: dict[int, int]  # request index -> tokens
    preempted: frozenset[int]
    finished: frozenset[int]  # finished by this step's output
    free_blocks: int


class Driver:
    """Drives a scheduler with a request stream; request i is vLLM id f"r{i}"."""

    def __init__(self, scheduler: Scheduler, *, check_blocks: bool = True) -> None:
        self.scheduler = scheduler
        self.check_blocks = check_blocks
        self.num_usable_blocks = scheduler.kv_cache_config.num_blocks - 1
        self.records: list[StepRecord] = []
        self.finished: set[int] = set()
        self.step_index = 0
        self._count = 0

    def add(self, prompt_len: int, max_tokens: int, extra: dict | None = None) -> str:
        i = self._count
        self._count += 1
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True,
                                extra_args={"kvsched": extra} if extra is not None else None)
        prompt = [10 + (i * 31 + k) % 400 for k in range(prompt_len)]
        self.scheduler.add_request(Request(f"r{i}", prompt, params, None, arrival_time=float(i)))
        return f"r{i}"

    def held_blocks(self) -> int:
        manager = self.scheduler.kv_cache_manager.coordinator.single_type_managers[0]
        return len({b.block_id for blocks in manager.req_to_blocks.values() for b in blocks if not b.is_null})

    def step(self) -> StepRecord:
        s = self.scheduler
        output = s.schedule()
        req_ids = list(output.num_scheduled_tokens)
        sampled = []
        for rid in req_ids:
            r = s.requests[rid]  # num_computed_tokens already advanced
            sampled.append([SAMPLED_TOKEN] if r.num_computed_tokens >= r.num_tokens else [])
        result = ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                   sampled_token_ids=sampled)
        outs = s.update_from_output(output, result)
        done = frozenset(int(o.request_id[1:]) for eo in outs.values() for o in eo.outputs if o.finish_reason)
        self.finished |= done
        free = s.kv_cache_manager.block_pool.get_num_free_blocks()
        if self.check_blocks:
            held = self.held_blocks()
            assert free + held == self.num_usable_blocks, \
                f"step {self.step_index}: free {free} + held {held} != usable {self.num_usable_blocks}"
            assert len(s.running) <= s.max_num_running_reqs
        record = StepRecord(self.step_index, {int(k[1:]): v for k, v in output.num_scheduled_tokens.items()},
                            frozenset(int(k[1:]) for k in output.preempted_req_ids or ()), done, free)
        self.records.append(record)
        self.step_index += 1
        return record

    def run(self, stream: Sequence[Arrival], max_steps: int = 20000) -> list[StepRecord]:
        """Serve `stream` until every request finished (arrivals join before their step;
        when nothing is in the system the clock jumps to the next arrival)."""
        pending = sorted(range(len(stream)), key=lambda i: (stream[i].step, i))
        j = 0
        while j < len(pending) or self.scheduler.get_num_unfinished_requests():
            if not self.scheduler.get_num_unfinished_requests() and j < len(pending):
                self.step_index = max(self.step_index, stream[pending[j]].step)
            while j < len(pending) and stream[pending[j]].step <= self.step_index:
                a = stream[pending[j]]
                self.add(a.prompt_len, a.max_tokens, a.extra)
                j += 1
            self.step()
            if self.step_index > max_steps:
                raise RuntimeError(f"stream not served within {max_steps} steps")
        return self.records


class _Recording(SchedulerProxy):
    """The scheduler, each of its decisions passed to `record`."""

    def __init__(self, inner, record) -> None:
        super().__init__(inner)
        self._record = record

    def schedule(self, view):
        decision = self.inner.schedule(view)
        self._record(view, decision)
        return decision


def simulate(stream: Sequence[Arrival], scheduler, *, num_blocks: int, block_size: int) -> list[StepRecord]:
    """kvsched's own loop on `stream` with unit-length steps (request i arrives at time
    stream[i].step, output length = max_tokens), recording each step's decision."""
    from kvsched.kvcache import KVCache
    from kvsched.loop import run
    from kvsched.request import Request as KRequest

    # vLLM numbers requests by arrival order (ties by stream order): match it.
    order = sorted(range(len(stream)), key=lambda i: (stream[i].step, i))
    reqs = [KRequest(k, float(stream[i].step), stream[i].prompt_len, stream[i].max_tokens)
            for k, i in enumerate(order)]
    records: list[StepRecord] = []

    class UnitBackend:
        max_repeat = 1

        def execute(self, batch, shape):
            return 1.0

        def decode_durations(self, shape, k):
            return [1.0] * k

    def record(view, decision):
        records.append(StepRecord(round(view.now), dict(decision.run), frozenset(decision.preempt),
                                  frozenset(), 0))

    result = run(reqs, _Recording(scheduler, record), UnitBackend(), KVCache((num_blocks - 1) * block_size, block_size))
    finished_at: dict[int, int] = {r.request_id: round(r.finish_time) - 1 for r in result.requests}
    out = []
    for rec in records:
        done = frozenset(k for k, t in finished_at.items() if t == rec.step and k in rec.scheduled)
        out.append(StepRecord(rec.step, rec.scheduled, rec.preempted, done, 0))
    return out


def decisions(records: Iterable[StepRecord]) -> list[tuple]:
    """What the equivalence tests compare: (step, scheduled tokens, preempted, finished)."""
    return [(r.step, tuple(sorted(r.scheduled.items())), tuple(sorted(r.preempted)), tuple(sorted(r.finished)))
            for r in records]
