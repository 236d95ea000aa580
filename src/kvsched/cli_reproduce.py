"""`kvsched reproduce NAME`: the command line of kvsched.experiments.reproduce (the work is there).

    kvsched reproduce --list                      the reproductions, their papers and runtimes
    kvsched reproduce wait-e1 [--quick|--full]    one reproduction into reproductions/wait-e1/
    kvsched reproduce all [--quick]               every reproduction, one after the other

An interrupted reproduction (Ctrl-C) keeps every finished task under its output folder;
the same command again resumes where it stopped. `--ray [ADDRESS]` runs the tasks on a
local Ray instance or on a running cluster.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    """Add the `reproduce` subcommand to the CLI's subparsers."""
    r = sub.add_parser("reproduce", help="reproduce a paper's experiment: table, figure and a report beside the "
                                         "paper's numbers (--list names them)",
                       description="Run one experiment of the WAIT, MC-SF or GBA/GSA paper and write its table, "
                                   "figure, summary.json, config.json and report.md (kvsched's numbers beside the "
                                   "paper's, and where and why they differ). Re-running the same command with the "
                                   "same --output resumes an interrupted run.")
    r.add_argument("name", nargs="?", metavar="NAME", help="a reproduction (see --list), or 'all'")
    r.add_argument("--list", action="store_true", help="name every reproduction with its paper and runtime")
    size = r.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smaller version for a first look (minutes or less)")
    size.add_argument("--full", action="store_true", help="the paper's size where the default is smaller (hours)")
    size.add_argument("--test-scale", action="store_true", help=argparse.SUPPRESS)  # seconds; for the tests
    r.add_argument("--output", type=Path, help="output folder (default reproductions/NAME; for 'all': "
                                               "reproductions/, one sub-folder per reproduction)")
    r.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the tasks on Ray: a local instance with --jobs CPUs, or the cluster at ADDRESS "
                        "('auto', 'ray://host:10001')")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--ip-time-limit", type=float, metavar="S",
                   help="mcsf-synthetic-*: hindsight-IP time limit per paper-size instance in seconds "
                        "(default: the scale's, 2 s; 60 s with --full)")
    r.add_argument("--ip-solver", choices=("auto", "highs", "cpsat", "best"), default="auto",
                   help="mcsf-synthetic-*: who solves the hindsight IP (auto: best when OR-Tools is installed)")
    r.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args) -> int:
    from kvsched.cli import CLIError
    from kvsched.experiments import reproduce as rp

    entries = rp.registry()
    if args.list:
        print_list(entries)
        return 0
    if not args.name:
        raise CLIError(f"name a reproduction (or 'all'), or use --list; known: {', '.join(entries)}")
    if args.name != "all" and args.name not in entries:
        raise CLIError(f"unknown reproduction {args.name!r}; known: {', '.join(entries)}, all")
    if args.jobs < 1:
        raise CLIError(f"--jobs must be >= 1, got {args.jobs}")
    if args.ip_time_limit is not None and not args.ip_time_limit > 0:
        raise CLIError(f"--ip-time-limit must be > 0 seconds, got {args.ip_time_limit}")
    if args.ip_solver in ("cpsat", "best"):
        from kvsched.bounds.cpsat import INSTALL_HINT, cpsat_available

        if not cpsat_available():
            raise CLIError(f"--ip-solver {args.ip_solver}: {INSTALL_HINT}")
    scale = "quick" if args.quick else "full" if args.full else "test" if args.test_scale else "default"
    names = list(entries) if args.name == "all" else [args.name]
    if scale == "full" and args.name == "all":
        raise CLIError("'all' runs the defaults (or --quick); give --full to one reproduction at a time")
    if scale == "full" and not entries[args.name].has_full:
        raise CLIError(f"{args.name} has no --full: its default already is the paper's size")
    executor = _executor(args)
    for name in names:
        out = (args.output or Path("reproductions")) / name if args.name == "all" else \
            args.output or Path("reproductions") / name
        try:
            result = _run(rp, name, out, scale, args, executor)
        except KeyboardInterrupt:
            print(f"interrupted: finished tasks are saved under {out}; run the same command again to resume",
                  file=sys.stderr)
            return 130
        except (ValueError, RuntimeError, ImportError) as exc:
            raise CLIError(f"{name}: {exc}") from None
        _print_result(rp, result)
    return 0


def _executor(args):
    from kvsched.experiments.runner import make_executor

    return make_executor(args.jobs, args.ray)


def _run(rp, name: str, out: Path, scale: str, args, executor):
    """One reproduction under a rich progress bar on stderr (when it is a terminal)."""
    if args.no_progress or not sys.stderr.isatty():
        return rp.reproduce(name, out, scale=scale, jobs=args.jobs, executor=executor, **_ip_args(args))
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(name, total=None)

        def progress(part: str, done: int, total: int) -> None:
            bar.update(task, description=f"{name}: {part}", completed=done, total=total)

        return rp.reproduce(name, out, scale=scale, jobs=args.jobs, executor=executor, progress=progress,
                            **_ip_args(args))


def _ip_args(args) -> dict:
    return {"ip_time_limit_s": args.ip_time_limit, "ip_solver": args.ip_solver}


def _print_result(rp, result) -> None:
    from rich.markup import escape
    from rich.table import Table

    from kvsched.console import stdout_console

    table = Table(title=f"{result.name}: kvsched beside the paper", title_justify="left")
    for col in ("quantity", "kvsched", "paper", "difference"):
        table.add_column(col, overflow="fold")
    for c in result.findings.comparisons:
        table.add_row(*(escape(v) for v in (c.quantity, c.kvsched, c.paper, c.difference)))
    console = stdout_console()
    console.print(table)
    console.print(f"{result.name}: {rp.format_duration(result.wall_time_s)}, {result.tasks_run} tasks run; "
                  f"report in {result.report}")


def print_list(entries: dict) -> None:
    """The reproductions as a rich table: name, paper, what it reproduces, runtimes."""
    from rich.markup import escape
    from rich.table import Table

    from kvsched.console import stdout_console
    from kvsched.experiments.reproduce import format_duration

    table = Table(title="kvsched reproduce NAME [--quick | --full]", title_justify="left")
    for col in ("name", "paper", "reproduces", "default", "--quick", "--full"):
        table.add_column(col, overflow="fold")
    for e in entries.values():
        full = f"≈ {format_duration(e.runtime_s.get('full'))}" if e.has_full else "= default"
        what = escape(e.description) + ("\n[dim](default reduced; --full: the paper's size)[/dim]" if e.has_full else "")
        table.add_row(e.name, escape(f"arXiv {e.paper}, {e.section}"), what, format_duration(e.runtime_s.get("default")),
                      format_duration(e.runtime_s.get("quick")), full)

    # Piped output has no terminal width; do not fold the descriptions into 80 columns.
    stdout_console().print(table)
    print("Runtimes: wall time measured on 2 cores with --jobs 2 (--full: estimates).")
