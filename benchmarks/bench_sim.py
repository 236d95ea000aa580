"""Simulator speed benchmark: the decode pool against the per-request path, in one run.

    python benchmarks/bench_sim.py           # full run (~5 min on an idle 2-core machine; the 1M run ~1-2 min)
    python benchmarks/bench_sim.py --quick   # ~2 min: 100k-request synthetic, fewer repeats

Every timed figure is measured for the new path (`simulate(..., decode_pool=True)`, the
default: decoding requests advanced as a group, kvsched.pool) and, where it says so, for
the old per-request path (`decode_pool=False`) in the same process, interleaved, and
reported as the ratio old / new. Both paths must give the same run (checked here too).

1. azure-conv   The whole shipped Azure conversation trace (19,366 requests) at its own
                rate and at half of it, under vllm, sarathi and mcsf (exact predictions),
                capacity 137,000 tokens, block 16, cost model llama2-7b-a100.
                Targets: < 0.5 s simulation wall for vllm and sarathi at 1x.
2. synthetic    1,000,000 requests (100,000 with --quick) of a stable Poisson workload
                under vllm, each path in a fresh process: wall and peak RSS. Targets:
                < 30 s and < 1 GB. The old path runs 100,000 requests (the 1M run takes
                minutes on it): the ratio is at 100k.
3. batch        Wall time per loop iteration against the batch size: vllm and mcsf
                (oracle lengths) with max_num_seqs = 16, 64, 256 running and 1,000 /
                10,000 requests waiting, old and new path. The new path should be flat
                in the batch size (mcsf: up to its plan's O(distinct ends) per event).
4. apc          The prefix-caching KV model: azure-conv x1 under vllm (decode pool on),
                own block keys registered lazily (the default) against eagerly
                (`PrefixCachingKVCache(lazy_own_keys=False)`) and prefix caching off, in
                CPU seconds (`time.process_time`), interleaved; the same run is checked.
5. queue        Wall time per loop iteration with 1k, 10k and 100k requests waiting
                (vllm, sarathi, vidur-vllm, sjf, fcfs-static; new path): O(1) in the queue.

All timings are `time.perf_counter` wall times of `kvsched.sim.simulate` (workload
generation excluded), best of k repeats where cheap. Results go to
benchmarks/results/bench_sim.json (git-ignored).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import kvsched
import kvsched.compiled
import kvsched.schedulers
import kvsched.sim.cost
from kvsched.decision import Decision, Scheduler, View
from kvsched.kvcache import KVCache, PrefixCachingKVCache
from kvsched.loop import run
from kvsched.predictors import with_predictions
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.sim import simulate
from kvsched.sim.backend import SimBackend
from kvsched.traces import load_trace, parse_synthetic, requests_from_arrays, scale_rate

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_sim.json"

CAPACITY_TOKENS = 137_000  # kvsched.cli.DEFAULT_CAPACITY_TOKENS
BLOCK_SIZE = 16
COST_MODEL = "llama2-7b-a100"

AZURE_TARGET_S = 0.5
AZURE_SCHEDULERS = ("vllm", "sarathi", "mcsf")
AZURE_RATE_SCALES = (1.0, 0.5)

SYNTH_TARGET_S = 30.0
SYNTH_TARGET_RSS_MIB = 1024.0
SYNTH_N_OLD = 100_000
SYNTH_N_FULL = 1_000_000
SYNTH_N_QUICK = 100_000
# Stable load: with this cost model and capacity, vllm saturates near 15 req/s on these
# lengths (measured: at 15 req/s the queue reaches ~40; at 20 req/s it grows without
# bound), so 10 req/s is about two thirds of saturation and the waiting queue stays ~0.
SYNTH_SPEC = "synthetic:n={n},arrival=poisson,rate=10,prompt=lognormal(5.5,0.5),output=uniform(50,350)"
SYNTH_SEED = 0

QUEUE_SCHEDULERS = ("vllm", "sarathi", "vidur-vllm", "sjf", "fcfs-static")
QUEUE_SIZES = (1_000, 10_000, 100_000)
QUEUE_WARMUP_CALLS = 10  # skip the first calls (the first one takes in all N arrivals: O(N) once)
QUEUE_MAX_WINDOW = 1_000  # scheduler calls timed per run
QUEUE_PROMPT = (32, 1024)  # uniform prompt lengths, the same prefix at every size
QUEUE_OUTPUT = 256  # fixed output length: SJF's key ties, so it serves in id order like FCFS


def cost_model():
    return COST_MODELS.create(COST_MODEL)


BATCH_SIZES = (16, 64, 256)
BATCH_WAITING = (1_000, 10_000)
BATCH_CAPACITY_TOKENS = 4_000_000  # memory never binds: the batch size is max_num_seqs
BATCH_WINDOW = 400  # scheduler calls timed once the running set is full
# (registry name, options): max_num_seqs is set to the batch size. MC-SF plans with true
# lengths (the synthetic requests carry no predictions); memory never binds.
BATCH_SCHEDULERS = (("vllm", {}), ("mcsf", {"predictor": "oracle"}))


def run_sim(reqs, scheduler: Scheduler, progress=None, decode_pool=True, capacity_tokens=CAPACITY_TOKENS):
    return simulate(reqs, scheduler, cost_model(), capacity_tokens=capacity_tokens, block_size=BLOCK_SIZE,
                    progress=progress, decode_pool=decode_pool)


def same_run(a, b) -> bool:
    """The two paths' runs agree: every step column, the end time, every request's times and counters."""
    if a.end_time != b.end_time or any(a.steps[c] != b.steps[c] for c in a.steps):
        return False
    fields = ("finish_time", "first_token_time", "num_preemptions", "num_restarts", "num_wasted_tokens",
              "wasted_kv_area", "attempts")
    return all(getattr(x, f) == getattr(y, f) for x, y in zip(a.requests, b.requests, strict=True) for f in fields)


def peak_rss_mib() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return ru / (1024 * 1024) if sys.platform == "darwin" else ru / 1024


def sim_counts(run) -> tuple[int, int]:
    """(loop iterations that ran a batch, simulated steps)."""
    steps = run.steps
    rows = len(steps["step"])
    return rows, (steps["step"][-1] + steps["num_steps"][-1]) if rows else 0


# --- 1. the Azure conversation trace -----------------------------------------------------
def bench_azure(repeats: int, old_repeats: int, log) -> list[dict]:
    t0 = time.perf_counter()
    base = with_predictions(load_trace("azure-conv"), "exact", np.random.default_rng(0))  # mcsf reads predictions
    load_s = time.perf_counter() - t0
    out = []
    for scale in AZURE_RATE_SCALES:
        reqs = base if scale == 1.0 else scale_rate(base, scale)
        for name in AZURE_SCHEDULERS:
            walls: dict[bool, list[float]] = {True: [], False: []}
            cpus: dict[bool, list[float]] = {True: [], False: []}  # time.process_time: less load-sensitive
            last: dict[bool, object] = {}
            for i in range(max(repeats, old_repeats)):
                # Interleaved, in alternating order: the machine's load and the other path's
                # live run (kept for the comparison) weigh on both alike.
                for pool in ((False, True) if i % 2 == 0 else (True, False)):
                    if len(walls[pool]) >= (repeats if pool else old_repeats):
                        continue
                    last.pop(pool, None)  # free the previous repeat's run before timing the next
                    gc.collect()
                    sched = SCHEDULERS.create(name)
                    t, c = time.perf_counter(), time.process_time()
                    res = run_sim(reqs, sched, decode_pool=pool)
                    walls[pool].append(time.perf_counter() - t)
                    cpus[pool].append(time.process_time() - c)
                    last[pool] = res
                    del res
            new, old = last[True], last[False]
            rows, steps = sim_counts(new)
            wall, wall_old = min(walls[True]), min(walls[False])
            row = {
                "scheduler": name, "rate_scale": scale, "num_requests": len(reqs),
                "num_completed": sum(1 for r in new.requests if r.is_finished),
                "num_preemptions": sum(r.num_preemptions + r.num_restarts for r in new.requests),
                "wall_s": wall, "wall_s_all": walls[True], "wall_old_s": wall_old, "wall_old_s_all": walls[False],
                "repeats": repeats, "old_repeats": old_repeats, "old_over_new": wall_old / wall,
                "cpu_s": min(cpus[True]), "cpu_old_s": min(cpus[False]),
                "old_over_new_cpu": min(cpus[False]) / min(cpus[True]),
                "same_results": same_run(old, new), "uses_pool": bool(getattr(SCHEDULERS.create(name), "uses_pool",
                                                                               False)),
                "requests_per_s": len(reqs) / wall, "iterations": rows, "sim_steps": steps,
                "us_per_iteration": 1e6 * wall / rows, "us_per_iteration_old": 1e6 * wall_old / rows,
                "makespan_sim_s": new.end_time, "target_s": AZURE_TARGET_S, "ratio_to_target": wall / AZURE_TARGET_S,
                "trace_load_s": load_s,
            }
            out.append(row)
            log(f"azure-conv x{scale:g} {name}: new {wall:.2f} s, old {wall_old:.2f} s "
                f"({row['old_over_new']:.1f}x); CPU new {row['cpu_s']:.2f} s, old {row['cpu_old_s']:.2f} s "
                f"({row['old_over_new_cpu']:.1f}x), same results: {row['same_results']}")
            last.clear()
            gc.collect()
    return out


# --- 4. the prefix-caching KV model --------------------------------------------------------
APC_KINDS = ("lazy", "eager", "off")


def apc_kv(kind: str):
    if kind == "off":
        return KVCache(CAPACITY_TOKENS, BLOCK_SIZE)
    return PrefixCachingKVCache(CAPACITY_TOKENS, BLOCK_SIZE, lazy_own_keys=kind == "lazy")


def bench_apc(repeats: int, log) -> dict:
    reqs = load_trace("azure-conv")
    cpu: dict[str, list[float]] = {k: [] for k in APC_KINDS}
    last: dict[str, object] = {}
    for i in range(repeats):
        for kind in (APC_KINDS if i % 2 == 0 else APC_KINDS[::-1]):
            last.pop(kind, None)
            gc.collect()
            t = time.process_time()
            res = run(reqs, SCHEDULERS.create("vllm"), SimBackend(cost_model()), apc_kv(kind))
            cpu[kind].append(time.process_time() - t)
            last[kind] = res
            del res
    best = {k: min(v) for k, v in cpu.items()}
    row = {"scheduler": "vllm", "trace": "azure-conv", "cpu_s": best, "cpu_s_all": cpu, "repeats": repeats,
           "eager_over_lazy": best["eager"] / best["lazy"], "lazy_over_off": best["lazy"] / best["off"],
           "same_results": same_run(last["eager"], last["lazy"])}
    log(f"apc azure-conv x1 vllm CPU: lazy {best['lazy']:.2f} s, eager {best['eager']:.2f} s, off {best['off']:.2f} s; "
        f"same results (lazy vs eager): {row['same_results']}")
    return row


def apc_table(a: dict) -> Table:
    c = a["cpu_s"]
    return (f"Prefix-caching KV model, azure-conv x1, vllm, CPU s (best of {a['repeats']})",
            ["lazy own keys", "eager keys", "APC off", "eager / lazy", "lazy / off", "same run"],
            [[f"{c['lazy']:.2f}", f"{c['eager']:.2f}", f"{c['off']:.2f}", f"{a['eager_over_lazy']:.2f}x",
              f"{a['lazy_over_off']:.2f}x", str(a["same_results"])]],
            "lazy = PrefixCachingKVCache default; eager = lazy_own_keys=False (the previous model); off = KVCache")


# --- 2. a large synthetic workload ---------------------------------------------------------
def synthetic_child(n: int, decode_pool: bool) -> dict:
    """One synthetic run in this (fresh) process: wall, peak RSS and shape of the run."""
    spec = SYNTH_SPEC.format(n=n)
    t = time.perf_counter()
    reqs = parse_synthetic(spec, np.random.default_rng(SYNTH_SEED))
    gen_s = time.perf_counter() - t
    rss_gen = peak_rss_mib()
    t = time.perf_counter()
    res = run_sim(reqs, SCHEDULERS.create("vllm"), decode_pool=decode_pool)
    wall = time.perf_counter() - t
    rows, steps = sim_counts(res)
    waiting = np.asarray(res.steps["num_waiting"], dtype=np.float64)
    return {
        "spec": spec, "seed": SYNTH_SEED, "scheduler": "vllm", "decode_pool": decode_pool, "num_requests": n,
        "num_completed": sum(1 for r in res.requests if r.is_finished), "generate_s": gen_s, "wall_s": wall,
        "requests_per_s": n / wall, "iterations": rows, "sim_steps": steps, "us_per_iteration": 1e6 * wall / rows,
        "makespan_sim_s": res.end_time, "mean_waiting": float(waiting.mean()), "max_waiting": int(waiting.max()),
        "num_preemptions": sum(r.num_preemptions for r in res.requests),
        "peak_rss_mib": peak_rss_mib(), "peak_rss_after_generation_mib": rss_gen,
    }


def run_child(n: int, decode_pool: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-synthetic", str(n)]
    if not decode_pool:
        cmd.append("--old")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def bench_synthetic(n: int, log) -> dict:
    log(f"synthetic: {n:,} requests, new path (fresh process) ...")
    new = run_child(n, True)
    log(f"synthetic: {n:,} new {new['wall_s']:.1f} s, peak RSS {new['peak_rss_mib']:.0f} MiB")
    small_new = new if n == SYNTH_N_OLD else run_child(SYNTH_N_OLD, True)
    log(f"synthetic: {SYNTH_N_OLD:,} requests, old path (fresh process) ...")
    small_old = run_child(SYNTH_N_OLD, False)
    log(f"synthetic: {SYNTH_N_OLD:,} old {small_old['wall_s']:.1f} s vs new {small_new['wall_s']:.1f} s")
    return {
        "new": new, "small_new": small_new, "small_old": small_old,
        "old_over_new_at_small": small_old["wall_s"] / small_new["wall_s"],
        "same_iterations_at_small": small_old["iterations"] == small_new["iterations"]
        and small_old["makespan_sim_s"] == small_new["makespan_sim_s"],
        "target_s": SYNTH_TARGET_S, "target_rss_mib": SYNTH_TARGET_RSS_MIB, "target_requests": SYNTH_N_FULL,
    }


# --- 3. per-iteration cost against the batch size ------------------------------------------------
class _StopBatch(Exception):
    pass


class BatchTimer(Scheduler):
    """Times `window` scheduler calls (and the loop applying them) once `full` requests
    are resident, then stops the run."""

    def __init__(self, inner: Scheduler, full: int, window: int) -> None:
        self.inner, self.full, self.window = inner, full, window
        self.uses_pool = getattr(inner, "uses_pool", False)
        self.clairvoyant = getattr(inner, "clairvoyant", True)
        self.calls = 0
        self.t_start = self.t_end = None
        self.step_start = self.step_end = None

    def schedule(self, view: View) -> Decision:
        if self.t_start is None:
            if len(view.resident) >= self.full:
                self.t_start, self.step_start = time.perf_counter(), view.step
        else:
            self.calls += 1
            if self.calls == self.window:
                self.t_end, self.step_end = time.perf_counter(), view.step
                raise _StopBatch
        return self.inner.schedule(view)


def bench_batch(repeats: int, log) -> list[dict]:
    rng = np.random.default_rng(2)
    n_max = max(BATCH_WAITING) + max(BATCH_SIZES)
    prompts = rng.integers(32, 1024, size=n_max, endpoint=True)
    outputs = rng.integers(16, 512, size=n_max, endpoint=True)  # finishes spread: an admission every few steps
    out = []
    for name, options in BATCH_SCHEDULERS:
        for waiting in BATCH_WAITING:
            for size in BATCH_SIZES:
                out.append(_batch_row(name, options, size, waiting, prompts, outputs, repeats, log))
    return out


def _batch_row(name: str, options: dict, size: int, waiting: int, prompts, outputs, repeats: int, log) -> dict:
    """One row of section 3: µs per iteration of `name` with `size` running and `waiting` queued, both paths."""
    n = waiting + size
    reqs = requests_from_arrays(np.zeros(n), prompts[:n], outputs[:n])
    row = {"scheduler": name, "num_running": size, "num_waiting": waiting}
    for pool in (False, True):
        best = None
        for _ in range(repeats):
            timer = BatchTimer(SCHEDULERS.create(name, max_num_seqs=size, **options), size, BATCH_WINDOW)
            try:
                run_sim(reqs, timer, decode_pool=pool, capacity_tokens=BATCH_CAPACITY_TOKENS)
            except _StopBatch:
                pass
            if timer.t_end is None:
                raise RuntimeError(f"batch {size}, {waiting} waiting: the run ended before the window did")
            it = (timer.t_end - timer.t_start) / BATCH_WINDOW
            if best is None or it < best[0]:
                best = (it, timer.step_end - timer.step_start)
        key = "new" if pool else "old"
        row[f"us_per_iteration_{key}"] = 1e6 * best[0]
        row[f"sim_steps_{key}"] = best[1]
    row["old_over_new"] = row["us_per_iteration_old"] / row["us_per_iteration_new"]
    log(f"batch {name} {size} running / {waiting:,} waiting: old {row['us_per_iteration_old']:.0f} us, "
        f"new {row['us_per_iteration_new']:.0f} us per iteration ({row['old_over_new']:.1f}x)")
    return row


# --- 4. per-step cost against the waiting-queue length ---------------------------------------
class _Stop(Exception):
    pass


class TimedScheduler(Scheduler):
    """Wraps a scheduler; times calls warmup .. warmup+window-1 and stops the run after them.

    iteration time = wall from the start of call `warmup` to the start of call
    `warmup + window`, divided by `window`: one scheduler call plus the loop applying its
    decision (validate, allocate, execute, finish). The checksum (tokens scheduled,
    preemptions, simulated steps) proves two runs made the same decisions.
    """

    def __init__(self, inner: Scheduler, warmup: int, window: int | None) -> None:
        self.inner, self.warmup, self.window = inner, warmup, window
        self.uses_pool = getattr(inner, "uses_pool", False)
        self.clairvoyant = getattr(inner, "clairvoyant", True)
        self.calls = 0
        self.sched_s = 0.0
        self.tokens = self.preempted = 0
        self.waiting_at_call: list[int] = []
        self.t_start = self.t_end = None
        self.step_start = self.step_end = None
        self.waiting_end = None

    def schedule(self, view: View) -> Decision:
        c = self.calls
        self.calls += 1
        if self.window is None:  # probe mode: record the queue length, run to the end
            self.waiting_at_call.append(len(view.waiting))
            return self.inner.schedule(view)
        if c == self.warmup:
            self.step_start = view.step
            self.t_start = time.perf_counter()
        elif c == self.warmup + self.window:
            self.t_end = time.perf_counter()
            self.step_end = view.step
            self.waiting_end = len(view.waiting)
            raise _Stop
        if c < self.warmup:
            return self.inner.schedule(view)
        t = time.perf_counter()
        d = self.inner.schedule(view)
        self.sched_s += time.perf_counter() - t
        self.tokens += sum(d.run.values())
        self.preempted += len(d.preempt)
        return d


def queue_workload(n: int, prompts: np.ndarray) -> list:
    """n requests at t=0: the first n of one fixed prompt-length array, fixed outputs."""
    return requests_from_arrays(np.zeros(n), prompts[:n], np.full(n, QUEUE_OUTPUT))


def _window_for(name: str, n_small: int, prompts: np.ndarray) -> tuple[int, int]:
    """Calls to time so that the smallest queue stays at least half full throughout."""
    probe = TimedScheduler(SCHEDULERS.create(name), 0, None)
    run_sim(queue_workload(n_small, prompts), probe)
    half = next((i for i, w in enumerate(probe.waiting_at_call) if w < n_small // 2), len(probe.waiting_at_call))
    return max(1, min(QUEUE_MAX_WINDOW, half - QUEUE_WARMUP_CALLS - 1)), half


def bench_queue(repeats: int, log) -> list[dict]:
    prompts = np.random.default_rng(1).integers(*QUEUE_PROMPT, size=max(QUEUE_SIZES), endpoint=True)
    workloads = {n: queue_workload(n, prompts) for n in QUEUE_SIZES}
    out = []
    for name in QUEUE_SCHEDULERS:
        window, half = _window_for(name, min(QUEUE_SIZES), prompts)
        per_size = []
        for n in QUEUE_SIZES:
            best = None
            setups = []
            for _ in range(repeats):
                timed = TimedScheduler(SCHEDULERS.create(name), QUEUE_WARMUP_CALLS, window)
                t = time.perf_counter()
                try:
                    run_sim(workloads[n], timed)
                except _Stop:
                    pass
                total = time.perf_counter() - t
                if timed.t_end is None:
                    raise RuntimeError(f"{name}, {n} waiting: the run ended before the timed window did")
                iter_s = (timed.t_end - timed.t_start) / window
                setups.append(total - (timed.t_end - timed.t_start))
                if best is None or iter_s < best["iter_s"]:
                    best = {"iter_s": iter_s, "sched_s": timed.sched_s / window, "timed": timed}
            timed = best["timed"]
            sim_steps = timed.step_end - timed.step_start
            per_size.append({
                "num_waiting_start": n, "num_waiting_end": timed.waiting_end,
                "us_per_iteration": 1e6 * best["iter_s"], "us_per_schedule_call": 1e6 * best["sched_s"],
                "us_per_sim_step": 1e6 * best["iter_s"] * window / sim_steps,
                "window_calls": window, "window_sim_steps": sim_steps,
                "checksum": [timed.tokens, timed.preempted, sim_steps],
                "setup_and_rest_s_min": min(setups),
            })
        base = per_size[0]
        same = all(p["checksum"] == base["checksum"] for p in per_size)
        row = {
            "scheduler": name, "window_calls": window, "warmup_calls": QUEUE_WARMUP_CALLS, "repeats": repeats,
            "smallest_queue_half_empty_at_call": half, "same_decisions_at_every_size": same,
            "sizes": per_size,
            "ratio_largest_to_smallest_iteration": per_size[-1]["us_per_iteration"] / base["us_per_iteration"],
            "ratio_largest_to_smallest_schedule_call":
                per_size[-1]["us_per_schedule_call"] / base["us_per_schedule_call"],
        }
        out.append(row)
        log(f"queue {name}: " + ", ".join(f"{p['num_waiting_start']:,}: {p['us_per_iteration']:.0f} us"
                                          for p in per_size) + f"  ratio {row['ratio_largest_to_smallest_iteration']:.2f}")
    return out


# --- output -----------------------------------------------------------------------------------
Table = tuple[str, list[str], list[list[str]], str]  # title, header, rows, note


def azure_table(azure: list[dict]) -> Table:
    rows = [[
        f"x{r['rate_scale']:g}", r["scheduler"], "yes" if r["uses_pool"] else "no", f"{r['wall_s']:.2f}",
        f"{r['wall_old_s']:.2f}", f"{r['old_over_new']:.1f}x", f"{r['cpu_s']:.2f} / {r['cpu_old_s']:.2f}",
        f"{r['old_over_new_cpu']:.1f}x", "yes" if r["same_results"] else "NO",
        f"{r['iterations']:,}", f"{r['sim_steps']:,}", f"{r['num_preemptions']:,}", f"{r['us_per_iteration']:.0f}",
        f"{r['ratio_to_target']:.2f}x",
    ] for r in azure]
    return (
        (f"1. azure-conv, whole trace ({COST_MODEL}, {CAPACITY_TOKENS:,} tokens, block {BLOCK_SIZE}; "
         f"new best of {azure[0]['repeats']}, old best of {azure[0]['old_repeats']})"),
        ["rate", "scheduler", "pool", "new s", "old s", "old/new", "CPU s new / old", "old/new CPU", "same run",
         "iterations", "sim steps",
         "evictions", "us/iter new", f"new / target ({AZURE_TARGET_S:g} s)"],
        rows,
        ("old = decode_pool=False (every request visited every step), interleaved with new in the same run. "
         "pool = the scheduler opts in to the decode pool (all three do)."),
    )


def synthetic_table(s: dict) -> Table:
    new, small_new, small_old = s["new"], s["small_new"], s["small_old"]
    rows = [[
        f"{new['num_requests']:,}", "new", f"{new['wall_s']:.1f}", f"{new['peak_rss_mib']:.0f}",
        f"{new['iterations']:,}", f"{new['us_per_iteration']:.1f}", f"{new['mean_waiting']:.1f} / {new['max_waiting']}",
        f"{new['wall_s'] * s['target_requests'] / new['num_requests'] / s['target_s']:.2f}x",
    ]]
    for r in ((small_new,) if small_new is not new else ()) + (small_old,):
        rows.append([f"{r['num_requests']:,}", "new" if r["decode_pool"] else "old", f"{r['wall_s']:.1f}",
                     f"{r['peak_rss_mib']:.0f}", f"{r['iterations']:,}", f"{r['us_per_iteration']:.1f}",
                     f"{r['mean_waiting']:.1f} / {r['max_waiting']}", ""])
    return (
        f"2. synthetic under vllm: {new['spec']} (seed {new['seed']}); each run in a fresh process",
        ["requests", "path", "wall s", "peak RSS MiB", "iterations", "us/iter", "mean / max waiting",
         f"wall for {s['target_requests']:,} / {s['target_s']:g} s"],
        rows,
        (f"old/new at {small_old['num_requests']:,} requests: {s['old_over_new_at_small']:.1f}x "
         f"(same iterations and end time: {s['same_iterations_at_small']}). Targets: {s['target_s']:g} s and "
         f"{s['target_rss_mib']:.0f} MiB for {s['target_requests']:,} requests (the last column extrapolates "
         "linearly when fewer ran). Peak RSS includes generating the workload and Python itself."),
    )


def batch_table(batch: list[dict]) -> Table:
    rows = [[r.get("scheduler", "vllm"), f"{r['num_running']}", f"{r['num_waiting']:,}",
             f"{r['us_per_iteration_old']:.0f}",
             f"{r['us_per_iteration_new']:.0f}", f"{r['old_over_new']:.1f}x",
             f"{r['sim_steps_old']} / {r['sim_steps_new']}"] for r in batch]
    return (
        (f"3. cost per loop iteration vs batch size (max_num_seqs = batch, all at t=0, "
         f"{BATCH_WINDOW} calls once the batch is full)"),
        ["scheduler", "running", "waiting", "us/iter old", "us/iter new", "old/new", "sim steps old / new"],
        rows,
        "An iteration = one scheduler call + the loop applying it. New should stay flat as the batch grows.",
    )


def queue_table(queue: list[dict]) -> Table:
    rows = []
    for q in queue:
        last = len(q["sizes"]) - 1
        for i, p in enumerate(q["sizes"]):
            rows.append([
                q["scheduler"] if i == 0 else "", f"{p['num_waiting_start']:,}", f"{p['num_waiting_end']:,}",
                f"{p['us_per_iteration']:.1f}", f"{p['us_per_schedule_call']:.1f}", f"{p['us_per_sim_step']:.1f}",
                f"{p['window_calls']} / {p['window_sim_steps']}",
                ("yes" if q["same_decisions_at_every_size"] else "NO") if i == 0 else "",
                f"{q['ratio_largest_to_smallest_iteration']:.2f} "
                f"({q['ratio_largest_to_smallest_schedule_call']:.2f})" if i == last else "",
            ])
    return (
        (f"4. cost per loop iteration vs waiting-queue length (all requests arrive at t=0; "
        f"best of {queue[0]['repeats']})"),
        ["scheduler", "waiting", "waiting at end", "us/iter", "us/schedule()", "us/sim step",
         "calls / sim steps", "same decisions", "ratio largest/smallest: iter (schedule)"],
        rows,
        ("New path. us/iter = one scheduler call + the loop applying its decision. The ratio is relative to the "
        "smallest queue in this same run; ~1 means O(1) in the queue length."),
    )


def print_tables(results: dict) -> None:
    tables = []
    if results.get("azure"):
        tables.append(azure_table(results["azure"]))
    if results.get("synthetic"):
        tables.append(synthetic_table(results["synthetic"]))
    if results.get("batch"):
        tables.append(batch_table(results["batch"]))
    if results.get("queue"):
        tables.append(queue_table(results["queue"]))
    if results.get("apc"):
        tables.append(apc_table(results["apc"]))
    try:
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:  # plain text
        for title, header, rows, note in tables:
            print(f"\n{title}")
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
            for r in rows:
                print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
            print(f"  {note}")
        return
    console = Console(width=max(170, Console().width))
    for title, header, rows, note in tables:
        table = RichTable(title=title, title_justify="left", caption=note, caption_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        console.print(table)


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "src"],
                                    capture_output=True, text=True, check=False).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "numpy": np.__version__,
        "kvsched": kvsched.__version__, "git_commit": commit, "src_dirty": dirty,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, 100k synthetic requests (extrapolated)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    p.add_argument("--only", choices=("azure", "synthetic", "batch", "queue", "apc"), action="append",
                   help="run only this part (repeatable)")
    p.add_argument("--child-synthetic", type=int, help=argparse.SUPPRESS)
    p.add_argument("--old", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_synthetic:
        print(json.dumps(synthetic_child(args.child_synthetic, not args.old)))
        return 0
    parts = args.only or ["azure", "synthetic", "batch", "queue", "apc"]
    t_all = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:6.1f} s] {msg}", file=sys.stderr, flush=True)

    results: dict = {
        "mode": "quick" if args.quick else "full", "machine": machine_info(),
        "loadavg_1_5_15_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "config": {"capacity_tokens": CAPACITY_TOKENS, "block_size": BLOCK_SIZE, "cost_model": COST_MODEL},
    }
    # Order: smallest heap first, so the queue test does not run beside a million dead requests.
    if "queue" in parts:
        results["queue"] = bench_queue(2 if args.quick else 3, log)
    if "batch" in parts:
        results["batch"] = bench_batch(1 if args.quick else 2, log)
    if "azure" in parts:
        results["azure"] = bench_azure(2 if args.quick else 3, 2, log)
    if "apc" in parts:
        results["apc"] = bench_apc(2 if args.quick else 3, log)
    if "synthetic" in parts:  # child processes: this one's heap does not count
        results["synthetic"] = bench_synthetic(SYNTH_N_QUICK if args.quick else SYNTH_N_FULL, log)
    results["total_wall_s"] = time.perf_counter() - t_all
    results["loadavg_1_5_15_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    load = results["loadavg_1_5_15_at_end"]
    load_txt = f"; load average at end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)" if load else ""
    print(f"\n{results['mode']} run: {results['total_wall_s']:.0f} s in all{load_txt}; results in {args.out}")
    print("Single-threaded: every figure is one core's work; other processes on the machine inflate them.")
    print(f"kvsched core: {kvsched.compiled.describe()} (KVSCHED_PURE=1 runs the Python source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
