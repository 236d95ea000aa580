"""Simulator speed benchmark: requests simulated per wall second, and O(1) step cost.

    python benchmarks/bench_sim.py           # full run (~3-4 min on a 2-core machine)
    python benchmarks/bench_sim.py --quick   # < 1 min: fewer repeats, 100k-request synthetic, extrapolated

Three measurements (see benchmarks/README.md for what each figure means):

1. azure-conv   The whole shipped Azure conversation trace (19,366 requests) under vllm
                and sarathi, at the trace's own rate and at 4x, capacity 137,000 tokens,
                block 16, cost model llama2-7b-a100. Target: < 1 s wall per run.
2. synthetic    1,000,000 requests (100,000 with --quick, extrapolated linearly and
                labelled so) of a stable Poisson workload under vllm. Target: < 60 s.
3. queue        Wall time per loop iteration (one scheduler call plus applying its
                decision) with 1k, 10k and 100k requests waiting, for vllm, sarathi,
                vidur-vllm, sjf and fcfs-static. Every size runs the very same
                decisions over the measured window (checked by a checksum), so the
                ratio largest/smallest isolates the effect of the queue length; it
                should be ~1 (O(1) in the queue length).

All timings are `time.perf_counter` wall times of `kvsched.sim.simulate` (workload
generation excluded and reported separately), best of k repeats where cheap. Results
go to benchmarks/results/bench_sim.json (git-ignored).
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
import kvsched.schedulers
import kvsched.sim.cost
from kvsched.decision import Decision, Scheduler, View
from kvsched.registry import COST_MODELS, SCHEDULERS
from kvsched.sim import simulate
from kvsched.traces import load_trace, parse_synthetic, requests_from_arrays, scale_rate

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_sim.json"

CAPACITY_TOKENS = 137_000  # kvsched.cli.DEFAULT_CAPACITY_TOKENS
BLOCK_SIZE = 16
COST_MODEL = "llama2-7b-a100"

AZURE_TARGET_S = 1.0
AZURE_SCHEDULERS = ("vllm", "sarathi")
AZURE_RATE_SCALES = (1.0, 4.0)

SYNTH_TARGET_S = 60.0
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


def run_sim(reqs, scheduler: Scheduler, progress=None):
    return simulate(reqs, scheduler, cost_model(), capacity_tokens=CAPACITY_TOKENS, block_size=BLOCK_SIZE,
                    progress=progress)


def peak_rss_mib() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return ru / (1024 * 1024) if sys.platform == "darwin" else ru / 1024


def sim_counts(run) -> tuple[int, int]:
    """(loop iterations that ran a batch, simulated steps)."""
    steps = run.steps
    rows = len(steps["step"])
    return rows, (steps["step"][-1] + steps["num_steps"][-1]) if rows else 0


# --- 1. the Azure conversation trace -----------------------------------------------------
def bench_azure(repeats: int, log) -> list[dict]:
    t0 = time.perf_counter()
    base = load_trace("azure-conv")
    load_s = time.perf_counter() - t0
    out = []
    for scale in AZURE_RATE_SCALES:
        reqs = base if scale == 1.0 else scale_rate(base, scale)
        for name in AZURE_SCHEDULERS:
            walls = []
            res = None
            for _ in range(repeats):
                res = None  # free the previous repeat's run before timing the next
                sched = SCHEDULERS.create(name)
                t = time.perf_counter()
                res = run_sim(reqs, sched)
                walls.append(time.perf_counter() - t)
            # Counts come from the last run; every repeat is the same deterministic run.
            rows, steps = sim_counts(res)
            wall = min(walls)
            done = sum(1 for r in res.requests if r.is_finished)
            row = {
                "scheduler": name, "rate_scale": scale, "num_requests": len(reqs), "num_completed": done,
                "wall_s": wall, "wall_s_all": walls, "repeats": repeats,
                "requests_per_s": len(reqs) / wall, "iterations": rows, "sim_steps": steps,
                "sim_steps_per_s": steps / wall, "iterations_per_s": rows / wall,
                "us_per_iteration": 1e6 * wall / rows, "makespan_sim_s": res.end_time,
                "target_s": AZURE_TARGET_S, "ratio_to_target": wall / AZURE_TARGET_S, "trace_load_s": load_s,
            }
            out.append(row)
            log(f"azure-conv x{scale:g} {name}: {wall:.2f} s wall ({row['requests_per_s']:.0f} req/s)")
            del res
    return out


# --- 2. a large synthetic workload ---------------------------------------------------------
def bench_synthetic(n: int, full_n: int, log) -> dict:
    spec = SYNTH_SPEC.format(n=n)
    t = time.perf_counter()
    reqs = parse_synthetic(spec, np.random.default_rng(SYNTH_SEED))
    gen_s = time.perf_counter() - t
    log(f"synthetic: generated {n:,} requests in {gen_s:.1f} s; simulating under vllm ...")
    marks: list[tuple[float, int]] = []  # (wall clock, requests done), every 2048 iterations

    def progress(now: float, done: int) -> None:
        marks.append((time.perf_counter(), done))

    t = time.perf_counter()
    res = run_sim(reqs, SCHEDULERS.create("vllm"), progress=progress)
    wall = time.perf_counter() - t
    # Linearity check for the extrapolation: wall per request in the second half of the run
    # over the first half (1.0 = per-request cost does not grow with the run's length).
    half = next((m for m in marks if m[1] >= n // 2), marks[-1])
    first_half = (half[0] - t) / max(half[1], 1)
    second_half = (t + wall - half[0]) / max(n - half[1], 1)
    rows, steps = sim_counts(res)
    waiting = np.asarray(res.steps["num_waiting"], dtype=np.float64)
    batch = np.asarray(res.steps["num_seqs"], dtype=np.float64)
    done = sum(1 for r in res.requests if r.is_finished)
    preemptions = sum(r.num_preemptions for r in res.requests)
    extrapolated = n != full_n
    full_wall = wall * full_n / n  # linear: per-request cost is flat at a stable load
    out = {
        "spec": spec, "seed": SYNTH_SEED, "scheduler": "vllm", "num_requests": n, "num_completed": done,
        "generate_s": gen_s, "wall_s": wall, "requests_per_s": n / wall, "iterations": rows,
        "sim_steps": steps, "sim_steps_per_s": steps / wall, "us_per_iteration": 1e6 * wall / rows,
        "makespan_sim_s": res.end_time, "last_arrival_s": reqs[-1].arrival_time,
        "mean_waiting": float(waiting.mean()), "max_waiting": int(waiting.max()),
        "mean_batch_seqs": float(batch.mean()), "num_preemptions": preemptions,
        "target_requests": full_n, "target_s": SYNTH_TARGET_S,
        "extrapolated": extrapolated, "wall_s_for_target_requests": full_wall,
        "ratio_to_target": full_wall / SYNTH_TARGET_S, "peak_rss_mib": peak_rss_mib(),
        "second_half_over_first_half_per_request": second_half / first_half,
    }
    log(f"synthetic: {wall:.1f} s wall for {n:,} requests ({out['requests_per_s']:.0f} req/s)")
    del res, reqs
    gc.collect()
    return out


# --- 3. per-step cost against the waiting-queue length ---------------------------------------
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
        f"x{r['rate_scale']:g}", r["scheduler"], f"{r['num_requests']:,}", f"{r['wall_s']:.2f}",
        f"{r['requests_per_s']:,.0f}", f"{r['iterations']:,}", f"{r['sim_steps']:,}",
        f"{r['sim_steps_per_s']:,.0f}", f"{r['us_per_iteration']:.0f}", f"{r['ratio_to_target']:.2f}x",
    ] for r in azure]
    return (
        (f"1. azure-conv, whole trace ({COST_MODEL}, {CAPACITY_TOKENS:,} tokens, block {BLOCK_SIZE}; "
        f"best of {azure[0]['repeats']})"),
        ["rate", "scheduler", "requests", "wall s", "req/s", "iterations", "sim steps", "sim steps/s",
         "us/iter", f"wall / target ({AZURE_TARGET_S:g} s)"],
        rows,
        ("ratio > 1 = slower than the target. iterations = scheduler calls that ran a batch; "
        "sim steps counts fast-forwarded decode steps one by one."),
    )


def synthetic_table(s: dict) -> Table:
    factor = s["target_requests"] / s["num_requests"]
    label = f"EXTRAPOLATED x{factor:g}" if s["extrapolated"] else "measured"
    return (
        f"2. synthetic under vllm: {s['spec']} (seed {s['seed']})",
        ["requests", "generate s", "wall s", "req/s", "iterations", "sim steps/s", "us/iter",
         "mean / max waiting", "2nd/1st half", f"wall for {s['target_requests']:,}",
         f"ratio to {SYNTH_TARGET_S:g} s"],
        [[f"{s['num_requests']:,}", f"{s['generate_s']:.1f}", f"{s['wall_s']:.1f}", f"{s['requests_per_s']:,.0f}",
          f"{s['iterations']:,}", f"{s['sim_steps_per_s']:,.0f}", f"{s['us_per_iteration']:.0f}",
          f"{s['mean_waiting']:.1f} / {s['max_waiting']}", f"{s['second_half_over_first_half_per_request']:.2f}",
          f"{s['wall_s_for_target_requests']:.1f} s ({label})", f"{s['ratio_to_target']:.2f}x"]],
        ("Stable load: Poisson at 10 req/s, prompt lognormal(mu 5.5, sigma 0.5) ~ median 245 tokens, "
        "output uniform 50..350; vllm saturates near 15 req/s here. 'wall s' excludes generation. "
        "2nd/1st half = wall per request in the second half of the run over the first (1 = linear). "
        f"{s['num_preemptions']} preemptions; peak RSS {s['peak_rss_mib']:.0f} MiB."),
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
        (f"3. cost per loop iteration vs waiting-queue length (all requests arrive at t=0; "
        f"best of {queue[0]['repeats']})"),
        ["scheduler", "waiting", "waiting at end", "us/iter", "us/schedule()", "us/sim step",
         "calls / sim steps", "same decisions", "ratio largest/smallest: iter (schedule)"],
        rows,
        ("us/iter = one scheduler call + the loop applying its decision. The ratio is relative to the "
        "smallest queue in this same run; ~1 means O(1) in the queue length."),
    )


def print_tables(results: dict) -> None:
    tables = []
    if results.get("azure"):
        tables.append(azure_table(results["azure"]))
    if results.get("synthetic"):
        tables.append(synthetic_table(results["synthetic"]))
    if results.get("queue"):
        tables.append(queue_table(results["queue"]))
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
    p.add_argument("--only", choices=("azure", "synthetic", "queue"), action="append",
                   help="run only this part (repeatable)")
    args = p.parse_args(argv)
    parts = args.only or ["azure", "synthetic", "queue"]
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
        results["queue"] = bench_queue(3 if args.quick else 5, log)
    if "azure" in parts:
        results["azure"] = bench_azure(1 if args.quick else 2, log)
    if "synthetic" in parts:
        results["synthetic"] = bench_synthetic(SYNTH_N_QUICK if args.quick else SYNTH_N_FULL, SYNTH_N_FULL, log)
    results["total_wall_s"] = time.perf_counter() - t_all
    results["loadavg_1_5_15_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    load = results["loadavg_1_5_15_at_end"]
    load_txt = f"; load average at end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)" if load else ""
    print(f"\n{results['mode']} run: {results['total_wall_s']:.0f} s in all{load_txt}; results in {args.out}")
    print("Single-threaded Python: every figure is one core's work; other processes on the machine inflate them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
