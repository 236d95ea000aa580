"""Per-step overhead of the kvsched plugin inside vLLM vs vLLM's default scheduler.

Fake KV harness (no model): 1,256 requests of 32 prompt tokens (max_tokens 2,500,
extra_args predicted_output_len 100 and predicted_output_interval [50, 150], which only
kvsched's predicting policies read: with max_tokens as the plan, MC-SF-like policies
admit ~24);
max_num_seqs=256, so the steady state is 256 running (decoding) and 1,000 waiting that
cannot be admitted. For each policy asked for, vLLM's own Scheduler and the plugin run
the same stream side by side: warm-up steps until both are in that state (at most
--warmup steps; the state each reached is printed either way), then --steps timed
`schedule()` calls each, interleaved (alternating which goes first), with
`update_from_output()` untimed. Times are this thread's CPU time (time.thread_time),
so other work on a shared machine is not counted; --wall uses time.perf_counter. The plugin runs as in production (not strict; --strict
adds its per-step cross-checks). Printed per policy: median and mean µs per step of
each, plugin / vLLM ratio (of medians), and the plugin's split: the policy's decide
(kvsched scheduler.schedule), vLLM's schedule() inside the plugin, and the rest
(translation: view, clipping, queue restriction, verification), medians per step.

    PYTHONPATH=src python benchmarks/bench_vllm.py [--policy vllm,mcsf] [--steps 100]
"""

import argparse
import logging
import statistics
import sys
import time
import traceback

logging.disable(logging.WARNING)

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.outputs import ModelRunnerOutput

from kvsched.schedulers.proxy import SchedulerProxy
from kvsched.vllm.config import PolicyConfig
from kvsched.vllm.harness import Driver, build_scheduler, tiny_model_dir
from kvsched.vllm.plugin import KvschedMixin

RUNNING, WAITING = 256, 1000
CLOCK = time.thread_time  # CPU time of this thread: what other work on a shared machine takes is not counted


class _TimedScheduler(Scheduler):
    """vLLM's Scheduler; records the time of each schedule() (the plugin's inner call)."""

    inner_s = 0.0

    def schedule(self, *args, **kwargs):
        t = CLOCK()
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.inner_s += CLOCK() - t


class _TimedPlugin(KvschedMixin, _TimedScheduler):
    """KvschedScheduler with its super().schedule() timed (same MRO otherwise)."""


def _build(cls, **kw):
    s = build_scheduler(tiny_model_dir("/tmp/kvsched-bench-model"), cls, num_blocks=4000, block_size=16,
                        max_num_seqs=RUNNING, max_num_batched_tokens=8192, max_model_len=4096, **kw)
    d = Driver(s, check_blocks=False)
    for _ in range(RUNNING + WAITING):
        d.add(32, 2500, {"predicted_output_len": 100, "predicted_output_interval": [50, 150]})
    return s, d


def _steady(s) -> bool:
    return len(s.running) == RUNNING and all(r.num_output_tokens > 0 for r in s.running)


def _feed(s, output) -> None:
    ids = list(output.num_scheduled_tokens)
    s.update_from_output(output, ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                                   sampled_token_ids=[[7]] * len(ids)))


def _state(s) -> str:
    return f"{len(s.running)} running / {len(s.waiting)} waiting"


class _TimedPolicy(SchedulerProxy):
    """The policy, its decisions timed into `total_s[0]`."""

    def __init__(self, inner, total_s: list[float]) -> None:
        super().__init__(inner)
        self._total_s = total_s

    def schedule(self, view):
        t = CLOCK()
        try:
            return self.inner.schedule(view)
        finally:
            self._total_s[0] += CLOCK() - t


def measure(policy: str, steps: int, warmup: int, strict: bool = False) -> dict:
    base, base_driver = _build(Scheduler)
    plug, plug_driver = _build(_TimedPlugin, kvsched_config=PolicyConfig(policy, strict=strict))
    decide_s = [0.0]
    plug.policy_scheduler = _TimedPolicy(plug.policy_scheduler, decide_s)
    for _ in range(warmup):
        if _steady(base) and _steady(plug):
            break
        for d in (base_driver, plug_driver):
            d.step()
            d.records.clear()
    reached = {"vllm": _state(base), "plugin": _state(plug), "steady": _steady(base) and _steady(plug)}
    plug.inner_s, decide_s[0] = 0.0, 0.0
    times = {"vllm": [], "plugin": [], "decide": [], "vllm_inside": []}
    for i in range(steps):
        for name, s in (("vllm", base), ("plugin", plug)) if i % 2 == 0 else (("plugin", plug), ("vllm", base)):
            plug.inner_s, decide_s[0] = 0.0, 0.0
            t = CLOCK()
            output = s.schedule()
            times[name].append(CLOCK() - t)
            if s is plug:
                times["decide"].append(decide_s[0])
                times["vllm_inside"].append(plug.inner_s)
            _feed(s, output)
    us = {k: [x * 1e6 for x in v] for k, v in times.items()}
    us["translation"] = [t - d - v for t, d, v in zip(us["plugin"], us["decide"], us["vllm_inside"])]
    med = {k: statistics.median(v) for k, v in us.items()}
    paired = sorted(p / b for p, b in zip(us["plugin"], us["vllm"]))  # step i of each: the same state
    quart = statistics.quantiles(paired, n=4)
    return {
        "policy": policy, "reached": reached, "end": {"vllm": _state(base), "plugin": _state(plug)},
        "median": med,
        "mean": {k: statistics.fmean(v) for k, v in us.items()},
        "split": {k: med[k] for k in ("decide", "vllm_inside", "translation")},
        "mismatches": plug.num_mismatches, "paired": (quart[0], statistics.median(paired), quart[2]),
    }


def report(r: dict) -> str:
    med, mean, split = r["median"], r["mean"], r["split"]
    ratio = med["plugin"] / med["vllm"]
    lines = [
        f"{r['policy']}: reached {r['reached']['plugin']} (plugin), {r['reached']['vllm']} (vLLM)"
        + ("" if r["reached"]["steady"] else f" -- NOT the {RUNNING}/{WAITING} decode state")
        + f"; after timing {r['end']['plugin']} (plugin), {r['end']['vllm']} (vLLM)",
        (f"  vLLM alone {med['vllm']:.0f} us/step (mean {mean['vllm']:.0f}); plugin {med['plugin']:.0f} us/step "
        f"(mean {mean['plugin']:.0f}); plugin/vLLM {ratio:.3f} (overhead {100 * (ratio - 1):+.1f} %); "
        f"per-step paired ratio median {r['paired'][1]:.3f} (quartiles {r['paired'][0]:.3f}-{r['paired'][2]:.3f})"),
        (f"  plugin split (medians): policy decide {split['decide']:.0f} us, vLLM schedule() inside "
        f"{split['vllm_inside']:.0f} us, translation {split['translation']:.0f} us; "
        f"mismatches {r['mismatches']}"),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", action="append",
                   help="kvsched policy, or a comma-separated list; repeatable (default: vllm,mcsf)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per policy (default 100)")
    p.add_argument("--warmup", type=int, default=50, help="most warm-up steps (default 50)")
    p.add_argument("--wall", action="store_true", help="wall-clock time instead of thread CPU time")
    p.add_argument("--strict", action="store_true",
                   help="run the plugin strict (KVSCHED_STRICT=1: raise on a mismatch, cross-check its mirrors of "
                        "vLLM's state every step); default off, as in production, mismatches are counted")
    a = p.parse_args(argv)
    if a.wall:
        global CLOCK
        CLOCK = time.perf_counter
    policies = [x.strip() for item in (a.policy or ["vllm,mcsf"]) for x in item.split(",") if x.strip()]
    failed = 0
    for policy in policies:
        try:
            print(report(measure(policy, a.steps, a.warmup, a.strict)), flush=True)
        except Exception:  # noqa: BLE001 - report this policy's failure and go on with the others
            failed += 1
            print(f"{policy}: FAILED\n{traceback.format_exc()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
