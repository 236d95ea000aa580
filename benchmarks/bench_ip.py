"""Hindsight-IP benchmark: what each formulation, solver and option of `kvsched.bounds` buys.

    python benchmarks/bench_ip.py                                  # 5 paper-size model-2 instances, 10 s limit
    python benchmarks/bench_ip.py --model 1 --instances 3 --time-limit 20
    python benchmarks/bench_ip.py --size medium --instances 12 --time-limit 30   # instances HiGHS closes
    # the issue's solver comparison (HiGHS time-indexed IP, CP-SAT intervals, both in turn):
    python benchmarks/bench_ip.py --model 1 2 --instances 20 --time-limit 60 600 --configs default cpsat best
    # root LP only: value and time per formulation / cuts
    python benchmarks/bench_ip.py --lp --model 1 2 --instances 5 --time-limit 60 --configs default chain sparse
    # closed-form bounds only (seconds): sum-output, LB_vol, chain, growth waste, over MC-SF's TEL
    python benchmarks/bench_ip.py --closed --model 1 2 --instances 20

`default` is HiGHS on the time-indexed IP with kvsched's defaults; `cpsat` is OR-Tools
CP-SAT on the interval model (`kvsched.bounds.cpsat`); `best` runs a short CP-SAT probe, then HiGHS
warm-started with the best schedule, then CP-SAT again (`kvsched.bounds.hindsight`).
`sparse` is `default` on the cumulative-start formulation (`kvsched.bounds.sparse`, same
LP, fewer nonzeros); `chain`/`chain6` add 3/6 completion-chain families
(`kvsched.bounds.chain`) as rows; `cpsat-chain`/`best-chain` add them to CP-SAT as
no-overlap constraints on the tails (and the chain bound as an objective row). Each limit in
`--time-limit` is a separate run of every configuration.

Every configuration solves the very same instances (the MC-SF paper's synthetic-study generators, seeded by
`instance_seed(seed, model, index)`) under the same time limit, one thread. Per
configuration the table gives the share solved to proven optimality, the median solve
time (a run that hits the limit counts as the limit), the mean final gap
`(upper - lower) / upper`, the mean proven lower bound and incumbent relative to the best
values any configuration found for that instance, and the median time as a ratio to the
"plain" configuration of the same run.

Each solve runs in one long-lived child process (`kvsched.bounds.IsolatedWorker`): a solver
that dies in native code (OR-Tools did once, in a 600 s run) becomes a row with status
"crashed" and the run goes on. `--no-isolate` solves in the benchmark's own process.

Warm starts come from MC-SF (`kvsched.experiments.mcsf.theory_schedule`) when it is
importable, else from `best_greedy_starts`. Results go to
benchmarks/results/bench_ip.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import kvsched
from kvsched.bounds import (
    Instance,
    IPOptions,
    IsolatedWorker,
    SolverCrashed,
    best_greedy_starts,
    check_result,
    evaluate_starts,
    solve_hindsight,
    solve_ip,
    solve_lp,
    sum_output_bound,
    volume_bound,
)
from kvsched.bounds.chain import chain_bound
from kvsched.bounds.waste import waste_bound
from kvsched.experiments.mcsf_instances import (
    instance_rng,
    model1_instance,
    model2_instance,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_ip.json"


def _paper_scaled(factor: float) -> dict[int, dict[str, object]]:
    """The paper's generator with M, n (or the arrival epochs) and the prompt range scaled by `factor`."""
    def scale(x: int) -> int:
        return max(1, int(factor * x + 0.5))

    capacity, count, prompt_max = (scale(30), scale(50)), (scale(40), scale(60)), scale(5)
    return {
        1: {"capacity_range": capacity, "n_range": count, "prompt_max": prompt_max},
        2: {"capacity_range": capacity, "epochs_range": count, "prompt_max": prompt_max},
    }


# Instance families: the paper's (the MC-SF paper's studies), one HiGHS closes in seconds, and a
# tiny one like the hand-computed test vectors; `paper-F` (any 0 < F <= 1) is the paper's scaled
# by F (`family`), to find where proofs stop.
SIZES: dict[str, dict[int, dict[str, object]]] = {
    "paper": {1: {}, 2: {}},
    "medium": {
        1: {"capacity_range": (10, 16), "n_range": (8, 14), "prompt_max": 3},
        2: {"capacity_range": (10, 16), "epochs_range": (8, 12), "prompt_max": 3},
    },
    "small": {
        1: {"capacity_range": (6, 14), "n_range": (3, 7), "prompt_max": 3},
        2: {"capacity_range": (6, 14), "epochs_range": (3, 5), "prompt_max": 3},
    },
}

_PLAIN = {"aggregate": False, "tighten_horizon": False, "greedy_incumbent": False, "threshold_cuts": 0}
# name -> (IPOptions overrides, pass the heuristic warm start?)
CONFIGS: dict[str, tuple[dict[str, object], bool]] = {
    "plain": (_PLAIN, False),
    "+aggregate": ({**_PLAIN, "aggregate": True}, False),
    "+warm": (_PLAIN, True),
    "+warm+tighten": ({**_PLAIN, "tighten_horizon": True}, True),
    "+tighten(no pass)": ({**_PLAIN, "tighten_horizon": True, "pass_warm_start": False}, True),
    "+cardinality": ({**_PLAIN, "cardinality_cuts": True}, False),
    "+threshold1": ({**_PLAIN, "threshold_cuts": 1}, False),
    "+threshold2": ({**_PLAIN, "threshold_cuts": 2}, False),
    "+threshold4": ({**_PLAIN, "threshold_cuts": 4}, False),
    "+objective-cut": ({**_PLAIN, "objective_cut": True}, False),
    "+symmetry": ({**_PLAIN, "symmetry_cuts": True}, False),
    # IPOptions() defaults: aggregate, valid tightening, threshold cuts q=1, warm start.
    "default": ({}, True),
    "default-presolve": ({"presolve": False}, True),
    "everything": (
        {"cardinality_cuts": True, "threshold_cuts": 2, "objective_cut": True},
        True,
    ),
    # Solver comparison (kvsched.bounds.hindsight): same options, another method.
    "cpsat": ({}, True),
    "best": ({}, True),
    # Issue 19: the cumulative-start formulation (kvsched.bounds.sparse, same LP) and the
    # completion-chain cuts (kvsched.bounds.chain) in HiGHS, CP-SAT and both.
    "sparse": ({"formulation": "sparse"}, True),
    "chain": ({"chain_cuts": 3}, True),
    "chain6": ({"chain_cuts": 6}, True),
    # Without presolve HiGHS finishes the chain-strengthened root at paper size within 30 s.
    "chain-nopresolve": ({"chain_cuts": 3, "presolve": False}, True),
    "sparse+chain": ({"formulation": "sparse", "chain_cuts": 3}, True),
    "cpsat-chain": ({"chain_cuts": 3}, True),
    "best-chain": ({"chain_cuts": 3}, True),
    # The growth-waste bound (kvsched.bounds.waste) is on by default; these turn it off.
    "default-nowaste": ({"waste_bound": False}, True),
    "cpsat-nowaste": ({"waste_bound": False}, True),
}
METHOD = {"cpsat": "cpsat", "best": "best", "cpsat-chain": "cpsat", "best-chain": "best", "cpsat-nowaste": "cpsat"}  # every other configuration: HiGHS (solve_ip)
DEFAULT_CONFIGS = ("plain", "+aggregate", "+warm+tighten", "+threshold1", "default", "everything")


def family(size: str) -> dict[int, dict[str, object]]:
    """The generator's arguments per arrival model for `--size` (a name in SIZES or `paper-F`)."""
    if size in SIZES:
        return SIZES[size]
    factor = size.removeprefix("paper-")
    try:
        value = float(factor)
    except ValueError:
        value = 0.0
    if size == factor or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{size!r} is not one of {', '.join(SIZES)} or paper-F, 0 < F <= 1")
    return _paper_scaled(value)


def _size(size: str) -> str:
    family(size)
    return size


def make_instance(model: int, seed: int, index: int, size: str) -> Instance:
    rng = instance_rng(seed, model, index)
    kwargs = family(size)[model]
    return model1_instance(rng, **kwargs) if model == 1 else model2_instance(rng, **kwargs)  # type: ignore[arg-type]


def heuristic_starts(inst: Instance) -> tuple[str, tuple[int, ...]]:
    """MC-SF's start epochs when the simulator is available, else the greedy fallback."""
    try:
        from kvsched.experiments.mcsf import theory_schedule

        _, starts = theory_schedule(inst, "mcsf")
        if starts is not None:
            evaluate_starts(inst, starts)
            return "mcsf", starts
    except Exception as exc:  # noqa: BLE001  (the benchmark must run without the simulator)
        print(f"  mcsf unavailable ({type(exc).__name__}: {exc}); using best_greedy_starts", file=sys.stderr)
    return "greedy", best_greedy_starts(inst)


def warm_started_instances(args: argparse.Namespace):
    """Each instance of the run with the heuristic's name, start epochs and TEL."""
    for model in args.model:
        for index in range(args.first, args.first + args.instances):
            inst = make_instance(model, args.seed, index, args.size)
            source, warm = heuristic_starts(inst)
            warm_tel, _ = evaluate_starts(inst, warm)
            yield model, index, inst, source, warm, warm_tel


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    configs = list(args.configs)
    if "plain" not in configs and not args.no_plain:
        configs.insert(0, "plain")
    if args.isolate:
        with IsolatedWorker() as worker:
            rows = _solve_all(args, configs, worker.call, log)
    else:
        rows = _solve_all(args, configs, lambda fn, *a, **kw: fn(*a, **kw), log)
    summary = []
    for model in args.model:
        for limit in args.time_limit:
            sel = [r for r in rows if r["model"] == model and r["time_limit_s"] == limit]
            for s in summarize(sel, configs, limit):
                summary.append({"model": model, "time_limit_s": limit, **s})
    return {"rows": rows, "summary": summary}


def _solve_all(args: argparse.Namespace, configs: list[str], call: Callable, log: Callable[[str], None]) -> list[dict]:
    """Every configuration on every instance. `call(fn, ...)` runs one solve: in a child process
    with --isolate, so that a solver dying in native code costs one row, not the run."""
    rows: list[dict] = []
    for model, index, inst, source, warm, warm_tel in warm_started_instances(args):
        lb_chain, lb_waste = chain_bound(inst), waste_bound(inst)
        log(f"model {model} instance {index}: n={inst.n} M={inst.capacity} safe horizon={inst.safe_horizon()} "
            f"LB_vol={volume_bound(inst)} chain={lb_chain} waste={lb_waste} {source}={warm_tel}")
        for limit in args.time_limit:
            for name in configs:
                overrides, use_warm = CONFIGS[name]
                opts = IPOptions(time_limit_s=limit, threads=args.threads, **overrides)  # type: ignore[arg-type]
                row = {"model": model, "instance": index, "config": name, "time_limit_s": limit, "n": inst.n,
                       "capacity": inst.capacity, "heuristic": source, "heuristic_tel": warm_tel}
                t0 = time.perf_counter()
                try:
                    if name in METHOD:
                        res = call(solve_hindsight, inst, opts, method=METHOD[name], incumbent_starts=warm)
                    else:
                        res = call(solve_ip, inst, opts, incumbent_starts=warm if use_warm else None)
                        check_result(inst, res)
                except SolverCrashed as exc:
                    rows.append({**row, "status": "crashed", "error": str(exc), "wall_s": time.perf_counter() - t0})
                    log(f"  {name:15s} {limit:5g}s CRASHED: {exc}")
                    continue
                wall = time.perf_counter() - t0
                rows.append({
                    **row, "status": res.status, "objective": res.objective,
                    "lower_bound": res.lower_bound, "lower_bound_source": res.lower_bound_source,
                    "lower_bound_solver": res.lower_bound_solver, "gap": res.gap,
                    "solve_time_s": res.solve_time_s, "wall_s": wall, "num_vars": res.num_vars,
                    "num_rows": res.num_rows, "num_nonzeros": res.num_nonzeros, "horizon": res.horizon,
                    "horizon_kind": res.horizon_kind,
                    "volume_bound": volume_bound(inst), "chain_bound": lb_chain, "waste_bound": lb_waste,
                    "certificate": res.certificate(),
                })
                log(f"  {name:15s} {limit:5g}s {res.status:9s} obj={res.objective} lb={res.lower_bound} "
                    f"({res.lower_bound_source}/{res.lower_bound_solver}) t={res.solve_time_s:6.2f}s")
    return rows


def run_lp(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """`--lp`: the root LP only (safe horizon, each configuration's formulation and cuts)."""
    rows: list[dict] = []
    for model in args.model:
        for index in range(args.first, args.first + args.instances):
            inst = make_instance(model, args.seed, index, args.size)
            lb_vol = volume_bound(inst)
            log(f"model {model} instance {index}: n={inst.n} M={inst.capacity} LB_vol={lb_vol}")
            for limit in args.time_limit:
                for name in args.configs:
                    o = IPOptions(**CONFIGS[name][0])  # type: ignore[arg-type]
                    lp = solve_lp(inst, aggregate=o.aggregate, threshold_cuts=o.threshold_cuts,
                                  cardinality_cuts=o.cardinality_cuts, chain_cuts=o.chain_cuts,
                                  formulation=o.formulation, time_limit_s=limit, threads=args.threads)
                    rows.append({"model": model, "instance": index, "config": name, "time_limit_s": limit,
                                 "lp_value": lp.value, "lp_status": lp.status, "solve_time_s": lp.solve_time_s,
                                 "num_nonzeros": lp.num_nonzeros, "volume_bound": lb_vol})
                    log(f"  {name:15s} {limit:5g}s LP={lp.value} ({lp.status}) t={lp.solve_time_s:6.2f}s "
                        f"nnz={lp.num_nonzeros:,}")
    summary = []
    for model in args.model:
        for limit in args.time_limit:
            for name in args.configs:
                sel = [r for r in rows if r["model"] == model and r["time_limit_s"] == limit and r["config"] == name]
                done = [r for r in sel if r["lp_value"] is not None]
                summary.append({
                    "model": model, "time_limit_s": limit, "config": name, "instances": len(sel),
                    "solved": len(done),
                    "median_time_s": statistics.median(r["solve_time_s"] if r["lp_value"] is not None else limit
                                                       for r in sel),
                    "mean_lp_over_lb_vol": float(np.mean([r["lp_value"] / r["volume_bound"] for r in done]))
                    if done else None,
                    "median_nonzeros": int(statistics.median(r["num_nonzeros"] for r in sel)),
                })
    return {"rows": rows, "summary": summary}


def run_closed(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """`--closed`: the closed-form bounds only (no solver), each over the heuristic's TEL."""
    names = ("sum-output", "volume", "chain", "waste")
    rows: list[dict] = []
    for model, index, inst, source, _, warm_tel in warm_started_instances(args):
        t0 = time.perf_counter()
        lb_waste = waste_bound(inst)
        waste_s = time.perf_counter() - t0
        values = dict(zip(names, (sum_output_bound(inst), volume_bound(inst), chain_bound(inst), lb_waste),
                          strict=True))
        rows.append({"model": model, "instance": index, "n": inst.n, "capacity": inst.capacity,
                     "heuristic": source, "heuristic_tel": warm_tel, **values, "waste_time_s": waste_s})
        log(f"model {model} instance {index}: n={inst.n} M={inst.capacity} "
            + " ".join(f"{k}={v}" for k, v in values.items()) + f" {source}={warm_tel} ({waste_s:.3f} s)")
    summary = [
        {"model": model, "instances": len(sel),
         **{f"mean_{k}_over_heuristic": float(np.mean([r[k] / r["heuristic_tel"] for r in sel])) for k in names}}
        for model in args.model
        for sel in [[r for r in rows if r["model"] == model]]
    ]
    return {"rows": rows, "summary": summary}


def summarize(rows: list[dict], configs: list[str], time_limit_s: float) -> list[dict]:
    best_lb: dict[int, int] = {}
    best_ub: dict[int, int] = {}
    # A crashed solve (--isolate) has no answer: it counts as unproven and stays out of the means.
    crashed = [r for r in rows if r["status"] == "crashed"]
    rows = [r for r in rows if r["status"] != "crashed"]
    for r in rows:
        best_lb[r["instance"]] = max(best_lb.get(r["instance"], 0), r["lower_bound"])
        if r["objective"] is not None:
            best_ub[r["instance"]] = min(best_ub.get(r["instance"], 1 << 62), r["objective"])
    out = []
    plain_median = None
    for name in configs:
        sel = [r for r in rows if r["config"] == name]
        num_crashed = sum(r["config"] == name for r in crashed)
        if not sel:
            if num_crashed:
                out.append({"config": name, "instances": num_crashed, "crashed": num_crashed, "solved": 0})
            continue
        # A run without a proof counts as the limit: the median is "time to proof" when
        # at least half the instances were proven, else the limit.
        times = [min(r["solve_time_s"], time_limit_s) if r["status"] == "optimal" else time_limit_s for r in sel]
        times += [time_limit_s] * num_crashed
        med = statistics.median(times)
        if name == "plain":
            plain_median = med
        gaps = [1.0 if r["gap"] is None else r["gap"] for r in sel]
        out.append({
            "config": name,
            "instances": len(sel) + num_crashed,
            "crashed": num_crashed,
            "solved": sum(r["status"] == "optimal" for r in sel),
            "median_time_s": med,
            "time_ratio_to_plain": med / plain_median if plain_median else None,
            "mean_gap": float(np.mean(gaps)),
            "mean_lb_over_best_lb": float(np.mean([r["lower_bound"] / best_lb[r["instance"]] for r in sel])),
            "mean_ub_over_best_ub": float(np.nanmean([
                r["objective"] / best_ub[r["instance"]] if r["objective"] is not None else np.nan for r in sel
            ])),
            # MC-SF's ratio to the optimum lies in [heuristic/UB, heuristic/LB] for each instance.
            "mean_heuristic_over_ub": float(np.nanmean([
                r["heuristic_tel"] / r["objective"] if r["objective"] else np.nan for r in sel
            ])),
            "mean_heuristic_over_lb": float(np.mean([r["heuristic_tel"] / r["lower_bound"] for r in sel])),
            # Over the proven instances only, the heuristic's ratio to a proven optimum (None: none proven).
            "mean_heuristic_over_optimum": float(np.mean(proven)) if (proven := [
                r["heuristic_tel"] / r["objective"] for r in sel if r["status"] == "optimal"
            ]) else None,
            "median_nonzeros": int(statistics.median(r["num_nonzeros"] for r in sel)),
        })
    return out


def print_table(summary: list[dict], title: str) -> None:
    header = ("model", "limit s", "config", "solved", "median s", "x plain", "mean gap", "LB/best LB", "UB/best UB",
              "heur/UB", "heur/LB", "nonzeros")
    cells = [
        (
            str(s["model"]), f"{s['time_limit_s']:g}", s["config"],
            f"{s['solved']}/{s['instances']}" + (f" ({s['crashed']} crashed)" if s["crashed"] else ""),
            f"{s['median_time_s']:.2f}",
            "-" if s["time_ratio_to_plain"] is None else f"{s['time_ratio_to_plain']:.2f}",
            f"{s['mean_gap']:.3f}", f"{s['mean_lb_over_best_lb']:.3f}", f"{s['mean_ub_over_best_ub']:.3f}",
            f"{s['mean_heuristic_over_ub']:.4f}", f"{s['mean_heuristic_over_lb']:.3f}", f"{s['median_nonzeros']:,}",
        )
        for s in summary if "median_time_s" in s
    ] + [(str(s["model"]), f"{s['time_limit_s']:g}", s["config"], f"0/{s['instances']} ({s['crashed']} crashed)",
          *["-"] * 8) for s in summary if "median_time_s" not in s]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="left" if h == "config" else "right")
        for c in cells:
            table.add_row(*c)
        Console(width=140).print(table)
    except ImportError:
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
        print(title)
        print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        for c in cells:
            print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=5)
    p.add_argument("--first", type=int, default=0, help="index of the first instance (to split a long run)")
    p.add_argument("--time-limit", type=float, nargs="+", default=[10.0],
                   help="seconds per solve; several values: every configuration runs under each")
    p.add_argument("--model", type=int, nargs="+", choices=(1, 2), default=[2],
                   help="arrival model(s) of the MC-SF paper's studies")
    p.add_argument("--no-plain", action="store_true", help="skip the plain baseline (ratios then show '-')")
    p.add_argument("--seed", type=int, default=0, help="base seed: instance i uses SeedSequence([seed, model, i])")
    p.add_argument("--size", type=_size, default="paper",
                   help=f"instance family: {', '.join(SIZES)}, or paper-F (the paper's M, n and prompts times F)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(DEFAULT_CONFIGS))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="solve in this process (default: in a child process, so that a solver crash costs one row)")
    p.add_argument("--lp", action="store_true", help="solve only the root LP of each configuration's model")
    p.add_argument("--closed", action="store_true", help="closed-form bounds only (no solver): Σo, LB_vol, chain, waste")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    result = run_closed(args, log) if args.closed else run_lp(args, log) if args.lp else run(args, log)
    cmd = "python benchmarks/bench_ip.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result.update({
        "command": cmd.strip(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "kvsched_version": kvsched.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "total_wall_s": time.perf_counter() - t0,
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.closed:
        for s in result["summary"]:
            print(f"model {s['model']}, {s['instances']} instances, mean bound / heuristic TEL: "
                  + "  ".join(f"{k.removeprefix('mean_').removesuffix('_over_heuristic')} {v:.3f}"
                              for k, v in s.items() if k.startswith("mean_")))
        print(f"{result['total_wall_s']:.0f} s in all; results in {args.out}")
        return 0
    if args.lp:
        for s in result["summary"]:
            ratio = "-" if s["mean_lp_over_lb_vol"] is None else f"{s['mean_lp_over_lb_vol']:.3f}"
            print(f"model {s['model']} limit {s['time_limit_s']:g}s {s['config']:14s} LP solved "
                  f"{s['solved']}/{s['instances']}  median {s['median_time_s']:.2f}s  LP/LB_vol {ratio}  "
                  f"nonzeros {s['median_nonzeros']:,}")
        print(f"{result['total_wall_s']:.0f} s in all; results in {args.out}")
        return 0
    print_table(
        result["summary"],
        f"hindsight optimum, size {args.size}, {args.instances} instances per model, seed {args.seed}, "
        f"{args.threads} thread(s)",
    )
    print(f"{result['total_wall_s']:.0f} s in all; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
