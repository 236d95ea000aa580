"""The cluster flags of `kvsched simulate` and the `kvsched routers` listing.

`kvsched simulate --replicas N --router R [--prefill-replicas P --decode-replicas D
--kv-link-gbps B]` runs `simulate_cluster`; without any of these flags `simulate` is the
single-replica command, output unchanged. Imports stay light (no pandas, no rich) until a
cluster run is asked for, as for the rest of `simulate` (tests/test_startup.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

CLUSTER_FLAGS = ("replicas", "router", "prefill_replicas", "decode_replicas", "kv_link_gbps", "router_refresh_s")
DEFAULT_ROUTER = "round-robin"
DEFAULT_KV_LINK_GBPS = 100.0  # one 100 Gb/s NIC per replica (Splitwise's InfiniBand setting is 200-400)
JSON_CLUSTER_KEYS = ("num_replicas", "router", "load_imbalance", "jain_index", "request_imbalance")


def add_simulate_args(p: argparse.ArgumentParser) -> None:
    from kvsched.cli_args import positive

    pos_int, pos_float = positive(int), positive(float)
    g = p.add_argument_group("cluster (docs/cluster.md); without these flags: one replica")
    g.add_argument("--replicas", type=pos_int, help="replicas behind a router, each with its own scheduler, KV cache "
                                                    "and --capacity (with --prefill/--decode-replicas: their sum)")
    g.add_argument("--router", help=f"global router (`kvsched routers`; default {DEFAULT_ROUTER})")
    g.add_argument("--router-opt", action="append", metavar="KEY=VALUE", help="router option (repeatable)")
    g.add_argument("--router-refresh-s", type=pos_float,
                   help="routers read replica state as published every this many seconds plus their own routing "
                        "since (vLLM's data-parallel coordinator: 0.1); default: live at each arrival")
    g.add_argument("--prefill-replicas", type=pos_int, help="prefill/decode disaggregation: prefill replicas")
    g.add_argument("--decode-replicas", type=pos_int, help="prefill/decode disaggregation: decode replicas")
    g.add_argument("--kv-link-gbps", type=pos_float,
                   help=f"disaggregation: prefill-to-decode KV link, Gb/s (default {DEFAULT_KV_LINK_GBPS:g})")
    g.add_argument("--kv-bytes-per-token", type=pos_int,
                   help="disaggregation: KV bytes per token of the whole replica (default: from the cost model's "
                        "model; needed for a cost model that names none)")
    g.add_argument("--decode-capacity", type=pos_int,
                   help="disaggregation: KV capacity of a decode replica in tokens (default --capacity)")


def requested(args) -> bool:
    """Whether the command line asks for a cluster."""
    return any(getattr(args, k, None) is not None for k in CLUSTER_FLAGS)


def add_routers_parser(sub) -> None:
    r = sub.add_parser("routers", help="list registered cluster routers (NAME: its --router-opt options)")
    r.add_argument("name", nargs="?")
    r.set_defaults(func=cmd_routers)


def _load_routers() -> None:
    import kvsched.cluster.routers  # noqa: F401  (registration)


def cmd_routers(args) -> int:
    from kvsched.cli import CLIError, _list
    from kvsched.registry import ROUTERS

    _load_routers()
    if not args.name:
        return _list(ROUTERS)
    try:
        entry = ROUTERS.get(args.name)
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\"")) from None
    options = ROUTERS.options(entry.name) or ()
    print(f"{entry.name}: {entry.description}")
    for o in options:
        print(f"  --router-opt {o.describe()}")
    return 0


def router_options(name: str, pairs: list[str] | None) -> dict:
    from kvsched.cli import CLIError
    from kvsched.registry import ROUTERS, OptionError

    _load_routers()
    raw = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"router option {pair!r} must look like key=value")
        raw[key.replace("-", "_")] = value
    try:
        return ROUTERS.check_options(name, raw)
    except KeyError as exc:
        raise CLIError(str(exc).strip("'\"")) from None
    except OptionError as exc:
        raise CLIError(str(exc)) from None


def disaggregation(args, cost_model_name: str):
    """The Disaggregation the flags describe, or None (flags that only make sense with it are refused)."""
    from kvsched.cli import CLIError
    from kvsched.cluster.disagg import Disaggregation, kv_bytes_per_token

    p, d = args.prefill_replicas, args.decode_replicas
    if p is None and d is None:
        for flag in ("kv_link_gbps", "kv_bytes_per_token", "decode_capacity"):
            if getattr(args, flag, None) is not None:
                raise CLIError(f"--{flag.replace('_', '-')} needs --prefill-replicas and --decode-replicas")
        return None
    if p is None or d is None:
        raise CLIError("prefill/decode disaggregation needs both --prefill-replicas and --decode-replicas")
    if args.replicas is not None and args.replicas != p + d:
        raise CLIError(f"--replicas {args.replicas} but --prefill-replicas {p} + --decode-replicas {d} = {p + d}")
    per_token = args.kv_bytes_per_token or kv_bytes_per_token(cost_model_name)
    if per_token is None:
        raise CLIError(f"cost model {cost_model_name!r} names no model to take KV bytes per token from; "
                       "give --kv-bytes-per-token")
    return Disaggregation(p, d, args.kv_link_gbps or DEFAULT_KV_LINK_GBPS, per_token, args.decode_capacity)


def run_cluster(reqs, workload: dict, sched_name: str, options: dict, args) -> tuple[dict, dict]:
    """`kvsched simulate` with cluster flags: (summary, config), files written with --output."""
    from kvsched import __version__
    from kvsched.bounds.runs import min_round_time, run_bound
    from kvsched.cli import (
        CLIError,
        _design_options,
        _progress,
        _system,
        make_scheduler,
        run_label,
        scheduler_options,
    )
    from kvsched.cluster.metrics import cluster_summary, save_cluster_run
    from kvsched.cluster.simulate import simulate_cluster
    from kvsched.loop import Run, SchedulingError
    from kvsched.schedulers.clearing import InfeasibleSchedule

    if getattr(args, "backend", "sim") == "engine":
        raise CLIError("a cluster runs in the simulator; --backend engine is one replica")
    if args.bound == "ip":
        raise CLIError("--bound ip is for one replica; a cluster reports the volume bound")
    cost, block_size, lookahead = _system(args)
    dis = disaggregation(args, args.cost_model if not args.theory else "unit")
    n = dis.num_prefill + dis.num_decode if dis is not None else (args.replicas or 1)
    router = args.router or DEFAULT_ROUTER
    r_opts = router_options(router, args.router_opt)
    options = scheduler_options(sched_name, options)
    # A WAIT-family design is for the load one replica sees: every n-th request (rate / n).
    share = dis.num_decode if dis is not None else n
    design = _design_options(sched_name, options, reqs[::share] or reqs, cost)
    probe = make_scheduler(sched_name, design)  # a bad option fails here, once, as a CLIError
    bar, cb = _progress(len(reqs), f"{sched_name} x {n}", not args.no_progress and sys.stderr.isatty())
    t0 = time.perf_counter()
    if bar:
        bar.start()
    try:
        crun = simulate_cluster(reqs, lambda: make_scheduler(sched_name, design), cost,
                                capacity_tokens=args.capacity, num_replicas=n, router=router, router_options=r_opts,
                                router_refresh_s=args.router_refresh_s,
                                seed=args.seed, block_size=block_size, fast_forward=not args.no_fast_forward,
                                progress=cb, lookahead_tokens=lookahead, prefix_caching=args.prefix_caching,
                                disaggregation=dis)
    except (ValueError, InfeasibleSchedule, SchedulingError) as exc:
        raise CLIError(f"{sched_name}: {exc}") from None
    finally:
        if bar:
            bar.stop()
    wall = time.perf_counter() - t0
    result = crun.run
    config = {
        "kvsched_version": __version__, "workload": workload, "label": run_label(sched_name, sched_name, options),
        "scheduler": {"name": sched_name, **probe.config()},
        "cost_model": cost.config(), "backend": "sim", "capacity_tokens": args.capacity, "block_size": block_size,
        "lookahead_tokens": lookahead, "theory": bool(args.theory),
        "prefix_caching": bool(getattr(probe, "enable_prefix_caching", False))
        if args.prefix_caching is None else args.prefix_caching, "fast_forward": not args.no_fast_forward,
        "cluster": {"num_replicas": n, "router": router, "router_options": r_opts, "seed": args.seed,
                    "router_refresh_s": args.router_refresh_s,
                    "disaggregation": None if dis is None else {
                        "num_prefill": dis.num_prefill, "num_decode": dis.num_decode,
                        "kv_link_gbps": dis.kv_link_gbps, "kv_bytes_per_token": dis.kv_bytes_per_token,
                        "decode_capacity_tokens": dis.decode_capacity_tokens}},
    }
    # The volume bound holds for the cluster's total KV (N replicas hold at most N x capacity per
    # round); with disaggregation a request's KV sits in two pools, which that argument does not cover.
    if dis is None:
        pooled = Run(result.requests, result.steps, result.capacity_tokens * n, result.block_size,
                     result.num_blocks * n, result.end_time)
        bound = run_bound(pooled, min_round_time(cost), lookahead)
    else:
        bound = {"bound_name": "none (disaggregated)", "ratio_to_bound": float("nan")}
    if args.output:
        summary = save_cluster_run(crun, args.output, config, format=args.format, extra_summary=bound)
    else:
        summary = {**cluster_summary(crun), **bound}
    summary["sim_wall_time_s"] = wall
    summary["rejected_requests"] = [{"request_id": r.request_id, "prompt_len": r.prompt_len,
                                     "output_len": r.output_len, "reason": r.reject_reason} for r in result.rejected]
    return summary, config


def cmd_simulate_cluster(args) -> int:
    from kvsched.cli import (
        _json_summary,
        _parse_options,
        build_workload,
        print_table,
        report_rejected,
        run_label,
    )

    reqs, workload = build_workload(args)
    options = _parse_options(args.opt)
    summary, _ = run_cluster(reqs, workload, args.scheduler, options, args)
    if args.json:
        print(json.dumps(_json_summary(summary, args.scheduler)))
        return 0
    label = run_label(args.scheduler, args.scheduler, options)
    n, router = summary["num_replicas"], summary["router"]
    print_table({label: summary}, f"{args.trace} under {label}, {n} replicas, router {router}")
    _print_replicas(summary)
    report_rejected({label: summary})
    if args.output:
        print(f"results written to {args.output}")
    return 0


def _print_replicas(summary: dict) -> None:
    from rich.table import Table

    from kvsched.console import stdout_console

    table = Table(title=f"per replica: load imbalance (max/mean busy time) {summary['load_imbalance']:.3f}, "
                        f"Jain's index {summary['jain_index']:.3f}")
    for col in ("replica", "role", "requests", "completed", "busy (s)", "utilization", "E2E mean (s)",
                "preemptions", "peak KV"):
        table.add_column(col, justify="left" if col == "role" else "right")
    for r in summary["replicas"]:
        table.add_row(str(r["replica"]), r["role"], str(r["num_requests"]), str(r["num_completed"]),
                      f"{r['busy_time_s']:.1f}", f"{r['utilization']:.3f}", f"{r['e2e_mean']:.3f}",
                      str(r["num_preemptions"]), str(r["peak_kv_tokens"]))
    stdout_console().print(table)
