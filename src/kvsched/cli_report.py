"""`kvsched report RESULTS`: the command line of kvsched.report (the work is there)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    """Add the `report` subcommand to the CLI's subparsers."""
    r = sub.add_parser("report", help="an HTML or markdown report of a sweep, a run or a directory of runs: "
                                      "latency vs rate with bounds, CDFs, KV usage, preemptions, tables")
    r.add_argument("results", type=Path, metavar="RESULTS",
                   help="a sweep directory, a run directory (simulate --output) or a directory of runs "
                        "(compare --output)")
    r.add_argument("--format", choices=("html", "md"), default="html",
                   help="html: one self-contained file (default); md: markdown plus a folder of PNGs")
    r.add_argument("-o", "--output", type=Path, help="report file (default: RESULTS/report.html or report.md)")
    r.add_argument("--rate", type=float,
                   help="arrival rate (req/s) of a sweep's CDFs and KV usage (default: the highest rate at "
                        "which every label completed runs)")
    r.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from kvsched.cli import CLIError
    from kvsched.report import render_report

    try:
        out = render_report(args.results, args.output, fmt=args.format, rate=args.rate)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {out}")
    return 0
