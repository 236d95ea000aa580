"""Per-step overhead of the kvsched plugin inside vLLM vs vLLM's default scheduler.

Fake KV harness (no model): 1,256 requests, 256 running (decoding) and 1,000 waiting
that cannot be admitted (max_num_seqs=256), then the mean wall time of schedule() over
--steps steps (update_from_output excluded).

    PYTHONPATH=src python benchmarks/bench_vllm.py [--policy vllm] [--steps 200]
"""

import argparse
import logging
import time

logging.disable(logging.WARNING)

from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402

from kvsched.vllm.config import PolicyConfig  # noqa: E402
from kvsched.vllm.harness import Driver, build_scheduler, tiny_model_dir  # noqa: E402
from kvsched.vllm.plugin import KvschedScheduler  # noqa: E402


def measure(cls, steps, **kw):
    s = build_scheduler(tiny_model_dir("/tmp/kvsched-bench-model"), cls, num_blocks=4000, block_size=16,
                        max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=4096, **kw)
    d = Driver(s, check_blocks=False)
    for _ in range(1256):
        d.add(32, 10_000 // 4)
    while len(s.running) < 256 or any(r.num_output_tokens == 0 for r in s.running):
        d.step()
    total = 0.0
    for _ in range(steps):
        out_t = time.perf_counter()
        output = s.schedule()
        total += time.perf_counter() - out_t
        d.records.clear()
        # feed back one token per scheduled request (harness logic, untimed)
        from vllm.v1.outputs import ModelRunnerOutput
        ids = list(output.num_scheduled_tokens)
        s.update_from_output(output, ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                                       sampled_token_ids=[[7]] * len(ids)))
    assert len(s.running) == 256 and len(s.waiting) == 1000
    return total / steps * 1e6


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--policy", default="vllm")
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args()
    base = measure(Scheduler, a.steps)
    plug = measure(KvschedScheduler, a.steps, kvsched_config=PolicyConfig(a.policy, strict=True))
    print(f"vLLM Scheduler.schedule(): {base:.0f} us/step; kvsched plugin ({a.policy}): {plug:.0f} us/step; "
          f"overhead {plug - base:.0f} us = {100 * (plug - base) / base:.0f} %")


if __name__ == "__main__":
    main()
