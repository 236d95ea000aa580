"""Plots that read saved run directories only (never live objects)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from kvsched.results import load_json, load_table

KINDS = ("latency-cdf", "ttft-cdf", "kv-usage")


def _label(run_dir: Path) -> str:
    cfg = load_json(run_dir, "config")
    return str(cfg.get("scheduler", {}).get("name", run_dir.name))


def plot_runs(run_dirs: list[str | Path], kind: str, out_path: str | Path) -> Path:
    """Draw one figure comparing the runs and save it (PNG/PDF/SVG by suffix)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        for d in map(Path, run_dirs):
            label = _label(d)
            if kind == "kv-usage":
                steps = load_table(d, "steps")
                cap = load_json(d, "summary")["capacity_tokens"]
                end = steps["start_time"] + steps["duration"]
                ax.step(end, steps["kv_used_tokens"] / cap, where="pre", label=label, lw=0.8)
            else:
                col = "e2e_latency" if kind == "latency-cdf" else "ttft"
                reqs = load_table(d, "requests")
                values = np.sort(reqs[col].dropna().to_numpy())
                if len(values):
                    ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=label)
        if kind == "kv-usage":
            ax.set_xlabel("time (s)")
            ax.set_ylabel("KV cache used / capacity")
            ax.set_ylim(0, 1.05)
        else:
            ax.set_xlabel("end-to-end latency (s)" if kind == "latency-cdf" else "TTFT (s)")
            ax.set_ylabel("fraction of completed requests")
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
    return out
