"""`kvsched validate-vllm`: replay a real vLLM run in the simulator and print vLLM | kvsched |
error % (the work is in kvsched.validation)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    from kvsched.cli_args import positive
    from kvsched.validation import RUNS

    p = sub.add_parser("validate-vllm", help="replay a real vLLM run (shipped, your own, or kvsched bench output) "
                                             "in the simulator: vLLM | kvsched | error %% per metric")
    p.add_argument("run", metavar="RUN",
                   help=f"a shipped run ({', '.join(RUNS)}), a per-request CSV/JSONL/Parquet file of a real vLLM "
                        "run, or a `kvsched bench --output` directory")
    p.add_argument("--meta", type=Path, help="the run's meta JSON (default: <prefix>_meta.json beside the file)")
    p.add_argument("--cost-model", help="registered cost model (default: from the meta's model, GPU and TP)")
    p.add_argument("--gpu", help="GPU when the meta and file name do not say (rtxpro6000, rtx4090)")
    p.add_argument("--tp", type=positive(int), help="tensor parallelism (default: the meta's, else 1)")
    p.add_argument("--capacity", dest="kv_capacity", type=positive(int),
                   help="KV capacity in tokens (default: the meta's KV blocks, else derived as vLLM does)")
    p.add_argument("--max-num-seqs", type=positive(int), help="default: the meta's, else vLLM's 256")
    p.add_argument("--max-num-batched-tokens", type=positive(int), help="default: the meta's, else 2048")
    p.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic prefix caching (default: the meta's enable_prefix_caching, else on as in vLLM)")
    p.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    p.add_argument("--output", type=Path, metavar="DIR",
                   help="write comparison and per-request tables, summary.json and e2e_scatter.png")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format with --output")
    p.set_defaults(func=cmd_validate_vllm)


def cmd_validate_vllm(args) -> int:
    from kvsched.cli import CLIError
    from kvsched.results import json_safe
    from kvsched.validation import (
        ValidationError,
        compare,
        load_run,
        settings,
        write_outputs,
    )

    try:
        run = load_run(args.run, args.meta)
        s = settings(run, cost_model=args.cost_model, capacity=args.kv_capacity, gpu=args.gpu, tp=args.tp,
                     max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                     prefix_caching=args.prefix_caching)
        result = compare(run, s)
    except ValidationError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:  # the simulator's own checks (e.g. a bad capacity)
        raise CLIError(f"{args.run}: {exc}") from None
    paths = write_outputs(result, args.output, args.format) if args.output else []
    summary = result["summary"]
    if args.json:
        print(json.dumps(json_safe(summary)))
        return 0
    print_comparison(summary)
    if paths:
        print(f"results written to {args.output} ({', '.join(p.name for p in paths)})")
    return 0


def print_comparison(summary: dict) -> None:
    from rich.table import Table

    from kvsched.console import stdout_console

    lss = summary["llmservingsim_mean_abs_error_pct"] is not None
    caching = "on" if summary["prefix_caching"] else "off"
    table = Table(title=f"{summary['run']}: {summary['num_requests']} requests, cost model {summary['cost_model']}, "
                        f"KV {summary['capacity_tokens']:,} tokens, prefix caching {caching}")
    for name in ("metric (ms)", "vLLM", "kvsched", "error %", *(("LLMServingSim", "its error %") if lss else ())):
        table.add_column(name, justify="left" if name.startswith("metric") else "right")
    for key, row in summary["metrics"].items():
        cells = [row["label"], f"{row['vllm']:.1f}", f"{row['kvsched']:.1f}", f"{row['error_pct']:+.1f}"]
        if lss:
            cells += ([f"{row['llmservingsim']:.1f}", f"{row['llmservingsim_error_pct']:+.1f}"]
                      if "llmservingsim" in row else ["", ""])
        table.add_row(*cells, end_section=key == "e2e_p99")
    table.add_row("mean |error| over the 11", "", "", f"{summary['mean_abs_error_pct']:.2f}",
                  *(("", f"{summary['llmservingsim_mean_abs_error_pct']:.2f}") if lss else ()))
    table.add_row("per-request E2E MAPE", "", "", f"{summary['e2e_mape_pct']:.2f}", *(("", "") if lss else ()))
    stdout_console().print(table)
