"""The `kvsched` command line: the only place that assembles components."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from kvsched import __version__
from kvsched.registry import COST_MODELS, SCHEDULERS, TRACES

DEFAULT_CAPACITY_TOKENS = 137_000  # Llama-2-7B fp16 on one A100-80GB (WAIT paper, sec. 12.1)
DEFAULT_COST_MODEL = "llama2-7b-a100"
JSON_KEYS = (
    "num_requests", "num_completed", "num_rejected", "ttft_mean", "ttft_p99", "e2e_mean", "e2e_p99",
    "throughput_tokens_per_s", "num_preemptions", "peak_kv_tokens", "capacity_tokens", "sim_wall_time_s",
)


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _load_plugins() -> None:
    import kvsched.schedulers
    import kvsched.sim.cost
    import kvsched.traces  # noqa: F401


# --- argument helpers -------------------------------------------------------------------
def _parse_value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    return text


def _parse_options(pairs: list[str]) -> dict:
    opts = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"scheduler option {pair!r} must look like key=value")
        sched, colon, name = key.rpartition(":")  # compare's SCHEDULER:key keeps the scheduler's name
        opts[sched + colon + name.replace("-", "_")] = _parse_value(value)
    return opts


def make_scheduler(name: str, options: dict):
    try:
        entry = SCHEDULERS.get(name)
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\"")) from None
    try:
        return entry.factory(**options)
    except TypeError as exc:  # unknown keyword
        raise CLIError(f"scheduler {name!r}: {exc}") from None
    except ValueError as exc:
        raise CLIError(f"scheduler {name!r}: {exc}") from None


def _workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", required=True, help="registered trace name, CSV path, or synthetic:KEY=VALUE,...")
    p.add_argument("--rate", type=float, help="arrival rate (req/s) for length-only traces")
    p.add_argument("--rate-scale", type=float, default=1.0, help="replay at this multiple of the trace's rate")
    p.add_argument("--num-requests", type=int, help="use only this many requests")
    p.add_argument("--sample", action="store_true", help="with --num-requests: a random sample, not the first N")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")


def _system_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY_TOKENS, help="KV capacity in tokens")
    p.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (1 = token-exact)")
    p.add_argument("--cost-model", default=DEFAULT_COST_MODEL, help="registered cost model (see docs)")
    p.add_argument("--no-fast-forward", action="store_true", help="simulate decode runs step by step")
    p.add_argument("--output", type=Path, help="directory for result files")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true")


def build_workload(args) -> tuple[list, dict]:
    from kvsched.traces import head, load_trace, parse_synthetic, sample, scale_rate

    rng = np.random.default_rng(args.seed)
    try:
        if args.trace.startswith("synthetic:"):
            reqs = parse_synthetic(args.trace, rng)
        else:
            reqs = load_trace(args.trace, rng=rng, rate=args.rate)
        if args.num_requests is not None:
            reqs = sample(reqs, args.num_requests, rng) if args.sample else head(reqs, args.num_requests)
        if args.rate_scale != 1.0:
            reqs = scale_rate(reqs, args.rate_scale)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise CLIError(str(exc).strip("'\"")) from None
    desc = {
        "trace": args.trace, "rate": args.rate, "rate_scale": args.rate_scale,
        "num_requests": args.num_requests, "sample": args.sample, "seed": args.seed,
    }
    return reqs, desc


def _cost_model(name: str):
    try:
        return COST_MODELS.create(name)
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\"")) from None


def _progress(total: int, label: str, enabled: bool):
    """A rich progress bar on stderr, or nothing."""
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("sim t={task.fields[t]:.0f}s"),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total, t=0.0)
    return bar, (lambda now, done: bar.update(task, completed=done, t=now))


def run_one(reqs, workload: dict, sched_name: str, options: dict, args) -> tuple[dict, dict]:
    from kvsched.metrics import summarize
    from kvsched.results import save_run
    from kvsched.sim import simulate

    scheduler = make_scheduler(sched_name, options)
    cost = _cost_model(args.cost_model)
    bar, cb = _progress(len(reqs), sched_name, not args.no_progress and sys.stderr.isatty())
    t0 = time.perf_counter()
    if bar:
        bar.start()
    try:
        result = simulate(reqs, scheduler, cost, capacity_tokens=args.capacity, block_size=args.block_size,
                          fast_forward=not args.no_fast_forward, progress=cb)
    finally:
        if bar:
            bar.stop()
    wall = time.perf_counter() - t0
    config = {
        "kvsched_version": __version__, "workload": workload,
        "scheduler": {"name": sched_name, **scheduler.config()},
        "cost_model": cost.config(), "capacity_tokens": args.capacity, "block_size": args.block_size,
        "fast_forward": not args.no_fast_forward,
    }
    if args.output:
        out = args.output if len(getattr(args, "schedulers_list", [sched_name])) == 1 else args.output / sched_name
        summary = save_run(result, out, config, format=args.format)
    else:
        summary = summarize(result)
    summary["sim_wall_time_s"] = wall
    return summary, config


# --- output -------------------------------------------------------------------------------
ROWS = (
    ("completed / requests", lambda s: f"{s['num_completed']} / {s['num_requests']}"),
    ("rejected", lambda s: str(s["num_rejected"])),
    ("TTFT mean / p50 / p99 (s)", lambda s: f"{s['ttft_mean']:.3f} / {s['ttft_p50']:.3f} / {s['ttft_p99']:.3f}"),
    ("TPOT mean / p99 (ms)", lambda s: f"{1e3 * s['tpot_mean']:.1f} / {1e3 * s['tpot_p99']:.1f}"),
    ("E2E mean / p50 / p99 (s)", lambda s: f"{s['e2e_mean']:.3f} / {s['e2e_p50']:.3f} / {s['e2e_p99']:.3f}"),
    ("throughput (tok/s)", lambda s: f"{s['throughput_tokens_per_s']:.1f}"),
    ("completed req/s", lambda s: f"{s['throughput_requests_per_s']:.3f}"),
    ("preemptions", lambda s: str(s["num_preemptions"])),
    ("peak / mean KV (tokens)", lambda s: f"{s['peak_kv_tokens']} / {s['mean_kv_tokens']:.0f} of {s['capacity_tokens']}"),
    ("simulated steps", lambda s: str(s["num_steps"])),
    ("makespan (s)", lambda s: f"{s['makespan_s']:.1f}"),
    ("wall time (s)", lambda s: f"{s['sim_wall_time_s']:.2f}"),
)


def print_table(summaries: dict[str, dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in summaries:
        table.add_column(name, justify="right")
    for label, fmt in ROWS:
        table.add_row(label, *(fmt(s) for s in summaries.values()))
    # Piped output has no terminal width; do not squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 40 + 24 * len(summaries)).print(table)


def _json_summary(summary: dict, scheduler: str) -> dict:
    out = {"scheduler": scheduler}
    out.update({k: summary[k] for k in JSON_KEYS})
    out.update({k: v for k, v in summary.items() if k not in out})
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


# --- commands -----------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    reqs, workload = build_workload(args)
    options = _parse_options(args.opt)
    summary, _ = run_one(reqs, workload, args.scheduler, options, args)
    if args.json:
        print(json.dumps(_json_summary(summary, args.scheduler)))
    else:
        print_table({args.scheduler: summary}, f"{args.trace} under {args.scheduler}")
        if args.output:
            print(f"results written to {args.output}")
    return 0


def cmd_compare(args) -> int:
    reqs, workload = build_workload(args)
    names = [n.strip() for n in args.schedulers.split(",") if n.strip()]
    args.schedulers_list = names
    per_sched: dict[str, dict] = {n: {} for n in names}
    for key, value in _parse_options(args.opt).items():
        sched, sep, opt = key.partition(":")
        if not sep or sched not in per_sched:
            raise CLIError(f"compare options look like SCHEDULER:key=value with a listed scheduler, got {key!r}")
        per_sched[sched][opt] = value
    summaries = {n: run_one(reqs, workload, n, per_sched[n], args)[0] for n in names}
    if args.json:
        print(json.dumps([_json_summary(s, n) for n, s in summaries.items()]))
    else:
        print_table(summaries, f"{args.trace}: {len(reqs)} requests")
    return 0


def _list(registry) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True)
    table.add_column("name")
    table.add_column("description")
    for e in registry.entries():
        table.add_row(e.name, e.description)
    Console().print(table)
    return 0


def cmd_trace_stats(args) -> int:
    from kvsched.traces import trace_stats

    reqs, _ = build_workload(args)
    stats = trace_stats(reqs)
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key:24s} {value:.6g}" if isinstance(value, float) else f"{key:24s} {value}")
    return 0


def cmd_plot(args) -> int:
    from kvsched.plots import plot_runs

    try:
        out = plot_runs(args.runs, args.kind, args.output)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvsched", description="LLM inference scheduling under KV-cache limits")
    p.add_argument("--version", action="version", version=f"kvsched {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate one scheduler on a workload")
    _workload_args(s)
    s.add_argument("--scheduler", default="vllm")
    s.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE", help="scheduler option (repeatable)")
    _system_args(s)
    s.set_defaults(func=cmd_simulate)

    c = sub.add_parser("compare", help="several schedulers on one workload, one table")
    _workload_args(c)
    c.add_argument("--schedulers", default="vllm,sarathi", help="comma-separated names")
    c.add_argument("-o", "--opt", action="append", metavar="SCHED:KEY=VALUE", help="option of one scheduler")
    _system_args(c)
    c.set_defaults(func=cmd_compare)

    sub.add_parser("schedulers", help="list registered schedulers").set_defaults(func=lambda a: _list(SCHEDULERS))
    sub.add_parser("traces", help="list registered traces").set_defaults(func=lambda a: _list(TRACES))
    sub.add_parser("cost-models", help="list cost models").set_defaults(func=lambda a: _list(COST_MODELS))

    t = sub.add_parser("trace-stats", help="statistics of a workload")
    _workload_args(t)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_trace_stats)

    pl = sub.add_parser("plot", help="plot saved runs (latency CDF, TTFT CDF, KV usage over time)")
    pl.add_argument("runs", nargs="+", type=Path, help="run directories written with --output")
    pl.add_argument("--kind", choices=("latency-cdf", "ttft-cdf", "kv-usage"), default="latency-cdf")
    pl.add_argument("--output", type=Path, default=Path("kvsched-plot.png"))
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    _load_plugins()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"kvsched: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
