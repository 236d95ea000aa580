"""Start-up benchmark: wall time of a tiny `kvsched simulate --json` (one request, two output
tokens: the run itself is ~1 ms, so this is process start, imports and workload build), and its
ratio to a bare `python -c pass` measured in the same run. Target (issue 18): < 0.3 s. Modules
are timed with their bytecode cached, as in an installed package.

With `--whole`, also the CPU time (user + sys) of the whole
`kvsched simulate --trace azure-conv --scheduler vllm --json` process (target: < 1 s). With
`--against SRC`, every command also runs on the kvsched source tree at SRC (e.g. an unpacked
`git archive` of main), interleaved run by run with this checkout's, and the ratios are printed.

    python benchmarks/bench_startup.py            # min of 7 runs each
    python benchmarks/bench_startup.py --runs 15
    python benchmarks/bench_startup.py --runs 5 --whole --against /tmp/main/src
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
SIMULATE = ["-m", "kvsched.cli", "simulate", "--trace", "synthetic:n=1,rate=1,prompt=8,output=2", "--json",
            "--no-progress"]
SHIPPED = [*SIMULATE[:4], "azure-conv", "--num-requests", "1", *SIMULATE[5:]]
WHOLE = [*SIMULATE[:4], "azure-conv", "--scheduler", "vllm", *SIMULATE[5:]]


def _env(src: Path) -> dict:
    # Bytecode caching on, as after `pip install` (which compiles every module): with
    # PYTHONDONTWRITEBYTECODE set, each start would re-compile kvsched (~0.09 s).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(src)
    return env


def _run(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, user + sys CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best_of(args: list[str], runs: int, srcs: list[Path]) -> list[tuple[float, float]]:
    """Per source tree: (min wall, min CPU) over `runs` fresh processes, the trees interleaved
    run by run so that both see the same machine load. The untimed first runs write the cache."""
    envs = [_env(src) for src in srcs]
    for env in envs:
        _run(args, env)
    walls: list[list[float]] = [[] for _ in srcs]
    cpus: list[list[float]] = [[] for _ in srcs]
    for _ in range(runs):
        for k, env in enumerate(envs):
            wall, cpu = _run(args, env)
            walls[k].append(wall)
            cpus[k].append(cpu)
    return [(min(w), min(c)) for w, c in zip(walls, cpus)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--whole", action="store_true", help="also the whole azure-conv vllm process (CPU seconds)")
    p.add_argument("--against", type=Path, help="a baseline kvsched source tree (its src folder), run interleaved")
    args = p.parse_args()
    srcs = [SRC] + ([args.against.resolve()] if args.against else [])
    bare = best_of(["-c", "pass"], args.runs, [SRC])[0][0]
    print(f"python -c pass                                   {bare:.3f} s wall")
    cases = [("kvsched simulate (synthetic, 1 request) --json", SIMULATE),
             ("kvsched simulate (azure-conv read, 1 request)", SHIPPED)]
    for label, cmd in cases:
        res = best_of(cmd, args.runs, srcs)
        line = f"{label:<48} {res[0][0]:.3f} s wall ({res[0][0] / bare:.1f}x python -c pass), {res[0][1]:.3f} s CPU"
        if args.against:
            line += (f"; baseline {res[1][0]:.3f} s wall, {res[1][1]:.3f} s CPU, "
                     f"ratio {res[0][0] / res[1][0]:.2f} wall, {res[0][1] / res[1][1]:.2f} CPU")
        print(line)
    if args.whole:
        res = best_of(WHOLE, args.runs, srcs)
        line = f"{'kvsched simulate azure-conv vllm --json (whole)':<48} {res[0][1]:.3f} s CPU, {res[0][0]:.3f} s wall"
        if args.against:
            line += f"; baseline {res[1][1]:.3f} s CPU, ratio {res[0][1] / res[1][1]:.2f}"
        print(line)


if __name__ == "__main__":
    main()
