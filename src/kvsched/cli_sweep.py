"""`kvsched sweep` and `kvsched capacity-search`: grids of simulator runs on local
processes or Ray, resumable, gathered into one Parquet table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

GRID_FLAGS = ("schedulers", "trace", "rates", "capacities", "seeds", "num_requests", "cost_model", "block_size",
              "replicas", "routers", "prefill_decode", "kv_link_gbps", "router_refresh_s")


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _numbers(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in _split(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", nargs="?", type=Path, help="TOML grid file (see docs/sweeps.md); flags below override it")
    p.add_argument("--schedulers", type=_split, help="comma-separated scheduler names")
    p.add_argument("--trace", action="append", help="a trace name, CSV path or synthetic:... spec; repeat for more")
    p.add_argument("--rates", type=_numbers(float), help="arrival rates, req/s (default: the traces' own)")
    p.add_argument("--capacities", type=_numbers(int), help="KV capacities in tokens (default 137000)")
    p.add_argument("--seeds", type=_numbers(int), help="seeds (default 0)")
    p.add_argument("--replicas", type=_numbers(int),
                   help="cluster sizes: replicas behind a router, each running the cell's scheduler (docs/cluster.md)")
    p.add_argument("--routers", type=_split, help="cluster routers (`kvsched routers`; default round-robin)")
    p.add_argument("--prefill-decode", type=_split, metavar="P:D,...",
                   help="prefill/decode disaggregation: replica splits, e.g. 2:6,3:5 (instead of --replicas)")
    p.add_argument("--kv-link-gbps", type=_numbers(float), help="with --prefill-decode: KV link speeds, Gb/s "
                                                                "(default 100)")
    p.add_argument("--router-refresh-s", type=_numbers(float),
                   help="with a cluster: routers read replica state published every this many seconds; 0: live "
                        "(default)")
    p.add_argument("--num-requests", type=int, help="requests per workload (the first N, or a sample with --sample)")
    p.add_argument("--sample", action="store_true", help="with --num-requests: a seeded random sample")
    p.add_argument("--cost-model", help="registered cost model (default llama2-7b-a100)")
    p.add_argument("--block-size", type=int, help="KV block size in tokens (default 16)")
    p.add_argument("--theory", action="store_true", help="unit rounds and token-exact blocks")
    p.add_argument("--opt", action="append", default=[], metavar="SCHEDULER:KEY=V1,V2",
                   help="a scheduler option; several comma-separated values make it an axis")
    p.add_argument("--output", "-o", type=Path, required=True, help="results directory (re-run to resume)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, or Ray CPUs with --ray (default 1)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: a local instance, or the cluster at ADDRESS (e.g. auto, ray://host:10001)")
    p.add_argument("--no-progress", action="store_true")


def _opt_axes(pairs: list[str]) -> dict:
    from kvsched.cli import CLIError

    out: dict = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        sched, colon, name = key.partition(":")
        if not (sep and colon and sched and name and values):
            raise CLIError(f"--opt {pair!r} must look like SCHEDULER:KEY=VALUE[,VALUE...]")
        parsed = list(_split(values))  # text: the grid types it (registry.check_options)
        out.setdefault(sched, {})[name.replace("-", "_")] = parsed if len(parsed) > 1 else parsed[0]
    return out


def build_grid(args):
    """The grid of a TOML file with the command line's flags on top."""
    import tomllib

    from kvsched.cli import CLIError, _load_plugins
    from kvsched.experiments.sweep import Grid

    _load_plugins()
    raw, source = {}, "command line"
    if args.grid is not None:
        try:
            raw, source = tomllib.loads(args.grid.read_text()), str(args.grid)
        except FileNotFoundError:
            raise CLIError(f"{args.grid}: no such grid file") from None
        except tomllib.TOMLDecodeError as exc:
            raise CLIError(f"{args.grid}: not valid TOML: {exc}") from None
    for key in ("schedulers", "rates", "capacities", "seeds", "cost_model", "block_size", "replicas", "routers",
                "prefill_decode", "kv_link_gbps", "router_refresh_s"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    if args.theory:
        raw["theory"] = True
    if args.trace is not None:
        raw.pop("workload", None)
        raw["workloads"] = [{"trace": t} for t in args.trace]
    if args.num_requests is not None or args.sample:
        for w in raw.get("workloads", [raw.get("workload")] if "workload" in raw else []):
            w.update({"num_requests": args.num_requests} if args.num_requests is not None else {})
            w.update({"sample": True} if args.sample else {})
    for sched, opts in _opt_axes(args.opt).items():
        raw.setdefault("options", {}).setdefault(sched, {}).update(opts)
    if "schedulers" not in raw or ("workloads" not in raw and "workload" not in raw):
        raise CLIError("a sweep needs schedulers and a trace: give a TOML grid or --schedulers and --trace")
    try:
        return Grid.from_dict(raw, source=source)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _executor(args):
    from kvsched.cli import CLIError
    from kvsched.experiments.runner import make_executor

    try:
        return make_executor(args.jobs, args.ray)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _with_bar(args, label: str, total: int, work):
    """Run `work(progress)` under a rich bar on stderr (when it is a terminal)."""
    if args.no_progress or not sys.stderr.isatty():
        return work(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("failed {task.fields[failed]}"),
                  TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, failed=0)
        return work(lambda done, total_, failed: bar.update(task, completed=done, total=total_, failed=failed))


def _run(work, out: Path):
    from kvsched.cli import CLIError

    try:
        return work()
    except KeyboardInterrupt:
        raise CLIError(f"interrupted; finished cells are saved in {out}: run the same command again to resume") from None
    except ImportError as exc:  # --ray without Ray installed
        raise CLIError(str(exc)) from None
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None


def cmd_sweep(args) -> int:
    from kvsched.experiments.sweep import run_sweep

    grid = build_grid(args)
    num_cells = len(grid.cells())
    _, outcome = _run(lambda: _with_bar(args, f"sweep {grid.name}", num_cells, lambda progress: run_sweep(
        grid, args.output, executor=_executor(args), progress=progress, save_runs=not args.no_save_runs,
        retry_failed=not args.keep_failed)), args.output)
    print(f"{num_cells} cells: {len(outcome.ran)} run now, {len(outcome.skipped)} found done, "
          f"{len(outcome.failed)} failed; table: {args.output / 'results.parquet'}")
    _print_failures(outcome, args.output)
    return 1 if outcome.failed else 0


def _print_failures(outcome, out: Path, show: int = 5) -> None:
    """Each distinct error once, with how many cells hit it and one cell to look at."""
    by_error: dict[str, list[str]] = {}
    for tid, err in zip(outcome.task_ids, outcome.errors):
        if err is not None:
            by_error.setdefault(err, []).append(tid)
    for err, ids in list(by_error.items())[:show]:
        print(f"  {len(ids)} cell(s) failed with {err} (e.g. {out / 'failed' / (ids[0] + '.json')})")
    if len(by_error) > show:
        print(f"  ... and {len(by_error) - show} other errors: see {out / 'failed'} and the table's error column")


def cmd_capacity(args) -> int:
    from kvsched.cli import CLIError
    from kvsched.experiments.capacity import Criterion, run_search

    grid = build_grid(args)
    try:
        crit = Criterion(args.criterion, args.metric, args.slo)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.fewest_replicas:
        return _cmd_fewest(args, grid, crit)
    table, _ = _run(lambda: _with_bar(args, "capacity search", 0, lambda progress: run_search(
        grid, crit, args.output, lo=args.lo, hi=args.hi, max_rate=args.max_rate, rel_tol=args.rel_tol,
        executor=_executor(args), progress=progress)), args.output)
    from rich.table import Table

    from kvsched.console import stdout_console

    view = Table(title=f"largest sustained rate ({crit.kind}"
                       + (f", {crit.metric} <= {crit.slo_s:g} s" if crit.slo_s is not None else "") + ")")
    for col in ("scheduler", "trace", "capacity (tokens)", "max rate (req/s)", "bracket", "probes"):
        view.add_column(col, justify="left" if col in ("scheduler", "trace") else "right")
    cluster = "replicas" in table.columns
    if cluster:
        view.add_column("replicas", justify="right")
        view.add_column("router")
    for r in table.itertuples():
        rate = "failed: " + r.error if r.status != "ok" else (
            f"< {r.bracket_hi:g}" if r.limit == "below lo" else f"{r.max_rate_per_s:.4g}")
        bracket = f"[{r.bracket_lo:.4g}, {r.bracket_hi:.4g})" if r.limit == "bisection" else str(r.limit)
        view.add_row(r.label, r.trace, f"{r.capacity_tokens:,}", rate, bracket, str(r.num_probes),
                     *((str(r.replicas), r.router) if cluster else ()))
    stdout_console().print(view)
    print(f"tables: {args.output / 'capacity.parquet'}, {args.output / 'probes.parquet'}")
    return 1 if (table["status"] != "ok").any() else 0


def _cmd_fewest(args, grid, crit) -> int:
    """capacity-search --fewest-replicas: the fewest replicas meeting the criterion at each rate."""
    from kvsched.cli import CLIError
    from kvsched.experiments.capacity import run_fewest

    if grid.replicas is not None or grid.prefill_decode is not None:
        raise CLIError("--fewest-replicas searches the replica count itself; drop --replicas and --prefill-decode "
                       "(use --max-replicas)")
    table, _ = _run(lambda: _with_bar(args, "fewest replicas", 0, lambda progress: run_fewest(
        grid, crit, args.output, max_replicas=args.max_replicas, executor=_executor(args), progress=progress)),
        args.output)
    from rich.table import Table

    from kvsched.console import stdout_console

    view = Table(title=f"fewest replicas ({crit.kind}"
                       + (f", {crit.metric} <= {crit.slo_s:g} s" if crit.slo_s is not None else "") + ")")
    for col in ("scheduler", "router", "trace", "rate (req/s)", "capacity (tokens)", "fewest replicas", "probes"):
        view.add_column(col, justify="left" if col in ("scheduler", "router", "trace") else "right")
    for r in table.itertuples():
        answer = ("failed: " + r.error if r.status != "ok" else
                  str(r.fewest_replicas) if r.limit == "found" else f"> {args.max_replicas}")
        view.add_row(r.label, r.router, r.trace, f"{r.rate:g}", f"{r.capacity_tokens:,}", answer, str(r.num_probes))
    stdout_console().print(view)
    print(f"tables: {args.output / 'fewest.parquet'}, {args.output / 'probes.parquet'}")
    return 1 if (table["status"] != "ok").any() else 0


def add_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="a grid of simulator runs (schedulers x traces x rates x capacities x seeds "
                                      "x options), locally or on Ray; resumable; one Parquet table")
    _grid_args(sw)
    sw.add_argument("--no-save-runs", action="store_true",
                    help="keep only each cell's summary (no per-request and per-step tables)")
    sw.add_argument("--keep-failed", action="store_true",
                    help="on resume, keep the recorded error of failed cells instead of running them again")
    sw.set_defaults(func=cmd_sweep)

    ca = sub.add_parser("capacity-search", help="the largest arrival rate each scheduler sustains under a latency "
                                                "SLO or a stability criterion (bisection); or, with --fewest-"
                                                "replicas, the fewest replicas that meet it at a rate")
    _grid_args(ca)
    ca.add_argument("--criterion", choices=("slo", "stable"), default="slo")
    ca.add_argument("--metric", default="e2e_p99", help="summary metric the SLO bounds (default e2e_p99)")
    ca.add_argument("--slo", type=float, help="SLO in seconds on --metric (needed by --criterion slo)")
    ca.add_argument("--lo", type=float, default=0.25, help="lowest rate tried, req/s (default 0.25)")
    ca.add_argument("--hi", type=float, default=4.0, help="first upper rate tried; doubled until it fails")
    ca.add_argument("--max-rate", type=float, default=1024.0, help="never try above this rate")
    ca.add_argument("--rel-tol", type=float, default=0.02, help="stop when the bracket is this narrow (relative)")
    ca.add_argument("--fewest-replicas", action="store_true",
                    help="instead of the largest rate: the fewest replicas (per scheduler and --routers) that meet "
                         "the criterion at each of --rates (docs/cluster.md)")
    ca.add_argument("--max-replicas", type=int, default=64, help="with --fewest-replicas: never try more (default 64)")
    ca.set_defaults(func=cmd_capacity)
