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
    """The run's label (scheduler and the options given, as `kvsched compare` names it), else
    the scheduler's name, else the directory's name."""
    cfg = load_json(run_dir, "config")
    return str(cfg.get("label") or cfg.get("scheduler", {}).get("name", run_dir.name))


def cdf_points(values) -> tuple[np.ndarray, np.ndarray]:
    """Sorted non-NaN values and the fraction of them at or below each (empirical CDF);
    NaN marks requests that never finished, which a latency CDF leaves out."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[~np.isnan(x)]
    return x, np.arange(1, len(x) + 1) / max(len(x), 1)


def kv_usage_series(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Step end times (s) and the KV cache used after each step as a fraction of capacity.
    A step's usage is what it held while it ran, so plot it against the step's end with
    `where="pre"`."""
    steps = load_table(run_dir, "steps")
    cap = load_json(run_dir, "summary")["capacity_tokens"]
    end = (steps["start_time"] + steps["duration"]).to_numpy(dtype=np.float64)
    return end, steps["kv_used_tokens"].to_numpy(dtype=np.float64) / cap


def plot_runs(run_dirs: list[str | Path], kind: str, out_path: str | Path) -> Path:
    """Draw one figure comparing the runs and save it (PNG/PDF/SVG by suffix)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        for d in map(Path, run_dirs):
            label = _label(d)
            if kind == "kv-usage":
                end, used = kv_usage_series(d)
                ax.step(end, used, where="pre", label=label, lw=0.8)
            else:
                col = "e2e_latency" if kind == "latency-cdf" else "ttft"
                values, fraction = cdf_points(load_table(d, "requests")[col])
                if len(values):
                    ax.plot(values, fraction, label=label)
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
