"""Where the growth-waste bound loses: its makespan rank against a real schedule's, term by term.

    python benchmarks/waste_gap.py                      # 10 paper-size model-1 instances, MC-SF's schedules
    python benchmarks/waste_gap.py --model 2 --instances 5
    python benchmarks/waste_gap.py --cpsat 30           # CP-SAT's schedules (30 s each, one worker)

For the last rank (`k = n`, the makespan) the per-rank bound of `kvsched.bounds.waste` says
`M (C_n - a_min) >= sum vol + sum h_i(lam) - lam sum cap`. A schedule has exactly
`M (C_max - a_min) = sum vol + sum charge + free not charged` (`schedule_waste`), so the
difference between its makespan and the bound splits into three measured terms, in
memory-epochs at the bound's best price `lam`:

* **breakpoint choice**: `sum (charge_i + lam memory_i - h_i(lam))`, how much cheaper the
  relaxation's breakpoint sets are than the ones the schedule has (split by output-length
  thirds: which requests it lets off);
* **unused room**: `lam (sum cap - sum memory)`, completions' room the relaxation credits in
  full although the schedule's continuing requests do not use it;
* **uncharged free memory**: free memory-epochs the growth argument does not see (and the
  share of it on epochs where one request runs alone, where it is that request's room
  `M - s - o`).

Results go to benchmarks/results/waste_gap.json (git-ignored); the table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kvsched.bounds import evaluate_starts
from kvsched.bounds.volume import request_volumes
from kvsched.bounds.waste import request_terms, schedule_waste
from kvsched.experiments.mcsf import theory_schedule
from kvsched.experiments.mcsf_instances import generate

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "waste_gap.json"


def decompose(inst, starts) -> dict:
    """The three terms above for one instance and schedule (memory-epochs), and the totals."""
    a, s, o = inst.arrays()
    capacity = inst.capacity
    cap = capacity - s - o
    lam, h, g = request_terms(inst, exact=True)
    totals = g.sum(axis=0)  # the last rank: every request
    best = int(np.argmax(totals))
    price, bound = float(lam[best]), float(totals[best])
    vol = request_volumes(s, o)
    charge, memory = schedule_waste(inst, starts)
    _, profile = evaluate_starts(inst, starts)  # epochs 1..makespan; refuses an infeasible schedule
    start = np.asarray(starts)
    done = start + o
    span = int(done.max()) - int(a.min())
    # Free memory per epoch beyond what the growth argument charges there (r d), and the part of
    # it on epochs where one request runs alone (there it is that request's room, M - s - o).
    epochs = np.arange(int(a.min()) + 1, int(done.max()) + 1)
    alive = (start[:, None] < epochs) & (epochs <= done[:, None])
    free = capacity - np.asarray(profile)[epochs - 1]
    quiet = ~np.isin(epochs, done)
    next_done = np.sort(done)[np.searchsorted(np.sort(done), epochs)]
    beyond = np.where(quiet, free - alive.sum(axis=0) * (next_done - epochs), free)
    choice = charge + price * memory - h[:, best]
    thirds = np.array_split(np.argsort(o, kind="stable"), 3)
    row = {
        "n": inst.n, "capacity": capacity, "makespan": span, "bound_makespan": bound / capacity, "price": price,
        "schedule_minus_bound": capacity * span - bound,
        "choice": float(choice.sum()),
        "choice_by_third": [float(choice[idx].sum()) for idx in thirds],
        "unused_room": price * float(cap.sum() - memory.sum()),
        "uncharged_free": float(capacity * span - vol.sum() - charge.sum()),
        "uncharged_free_alone": float(beyond[quiet & (alive.sum(axis=0) == 1)].sum()),
        "free": float(capacity * span - vol.sum()), "charged": float(charge.sum()),
    }
    # The identity the split rests on (exact: the prices are sixteenths, everything else integers).
    assert abs(row["choice"] + row["unused_room"] + row["uncharged_free"] - row["schedule_minus_bound"]) < 1e-6
    assert beyond.sum() == row["uncharged_free"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=int, choices=(1, 2), default=1)
    p.add_argument("--instances", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpsat", type=float, default=None, metavar="S",
                   help="use CP-SAT's schedule found in S seconds (one worker) instead of MC-SF's")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    rows = []
    for index in range(args.instances):
        inst = generate(args.model, args.seed, index)
        _, starts = theory_schedule(inst, "mcsf")
        source = "mcsf"
        if args.cpsat is not None:
            from kvsched.bounds import solve_cpsat

            res = solve_cpsat(inst, time_limit_s=args.cpsat, incumbent_starts=starts)
            starts, source = res.starts, "cpsat"
        row = {"model": args.model, "instance": index, "schedule": source, **decompose(inst, starts)}
        rows.append(row)
        print(f"instance {index}: makespan {row['makespan']} vs bound {row['bound_makespan']:.1f}", file=sys.stderr)
    gap = np.array([r["schedule_minus_bound"] for r in rows])
    share = {k: float(np.sum([r[k] for r in rows]) / gap.sum()) for k in ("choice", "unused_room", "uncharged_free")}
    by_third = np.sum([r["choice_by_third"] for r in rows], axis=0) / gap.sum()
    alone = float(np.sum([r["uncharged_free_alone"] for r in rows]) / np.sum([r["uncharged_free"] for r in rows]))
    summary = {"instances": len(rows), "mean_makespan": float(np.mean([r["makespan"] for r in rows])),
               "mean_bound_makespan": float(np.mean([r["bound_makespan"] for r in rows])),
               "share_of_gap": share, "choice_share_by_output_third": by_third.tolist(),
               "uncharged_free_share_with_one_running": alone}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "summary": summary,
                                    "command": "python benchmarks/waste_gap.py " + " ".join(argv or sys.argv[1:])},
                                   indent=2) + "\n")
    print(f"model {args.model}, {len(rows)} instances, {rows[0]['schedule']}'s schedules: mean makespan "
          f"{summary['mean_makespan']:.1f}, rank-n bound {summary['mean_bound_makespan']:.1f}")
    print("share of (schedule - bound) memory-epochs: "
          + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in share.items()))
    print("breakpoint choice by output third (short, middle, long): " + ", ".join(f"{v:.2f}" for v in by_third))
    print(f"free memory the growth argument misses, on epochs where one request runs alone: {alone:.2f}")
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
