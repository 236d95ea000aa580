"""Replay a real vLLM run in the simulator and compare them (`kvsched validate-vllm`).

A real run is one row per request: input and output tokens, arrival offset, and the
engine's queued, first-token and last-token timestamps (the format of LLMServingSim's
`bench/examples/<GPU>/<model>/vllm/requests.jsonl`, as CSV), plus a meta file with the
engine settings (model, tensor parallelism, max_num_seqs, max_num_batched_tokens, KV
blocks when recorded). `kvsched bench --output DIR` results are read too (send time as
the queued time). Metrics as LLMServingSim's validation summary computes them:
TTFT = first_token - queued, E2E = last_token - queued, TPOT = (last - first) / (output - 1),
in milliseconds; percentiles by linear interpolation (numpy's default).

Two runs ship in `data/` (casys-kaist/LLMServingSim, MIT; see NOTICE): RTX PRO 6000
Blackwell with Llama-3.1-8B at TP 1 and Qwen3-32B at TP 2, each with LLMServingSim's own
simulated-vs-real summary.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
RUNS = {  # shipped name -> file prefix in data/
    "rtxpro6000-llama-3.1-8b": "vllm_rtxpro6000_llama-3.1-8b",
    "rtxpro6000-qwen3-32b": "vllm_rtxpro6000_qwen3-32b",
}
# The 11 metrics of the comparison (LLMServingSim's summary rows), then makespan.
METRICS = (
    ("ttft_mean", "TTFT Mean"), ("ttft_p50", "TTFT Median"), ("ttft_p90", "TTFT P90"), ("ttft_p99", "TTFT P99"),
    ("tpot_mean", "TPOT Mean"), ("tpot_p50", "TPOT Median"), ("tpot_p99", "TPOT P99"),
    ("e2e_mean", "Latency Mean"), ("e2e_p50", "Latency Median"), ("e2e_p90", "Latency P90"),
    ("e2e_p99", "Latency P99"),
)
GPUS = ("rtxpro6000", "rtx4090")
# vLLM model name (lower case, organisation dropped) -> cost-model prefix, capacity model config name
MODELS = {
    "llama-3.1-8b": ("llama3.1-8b", "LLAMA31_8B"),
    "llama-3.1-8b-instruct": ("llama3.1-8b", "LLAMA31_8B"),
    "qwen3-32b": ("qwen3-32b", "QWEN3_32B"),
    "qwen3-30b-a3b": ("qwen3-30b-a3b", "QWEN3_30B_A3B"),
    "qwen3-30b-a3b-instruct-2507": ("qwen3-30b-a3b", "QWEN3_30B_A3B"),
}
CAPACITY_GPUS = {"rtxpro6000": "RTXPRO6000_GPU"}
VLLM_DEFAULT_MAX_NUM_SEQS = 256
VLLM_DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048


class ValidationError(Exception):
    """A bad run file, meta file or setting: one line for the user."""


@dataclass
class RealRun:
    """One real run: per-request arrays (seconds) and the engine settings."""

    name: str
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray  # offsets from the first arrival: the simulator's arrivals
    queued_s: np.ndarray  # engine timestamps, any origin
    first_token_s: np.ndarray
    last_token_s: np.ndarray
    request_ids: list
    meta: dict = field(default_factory=dict)
    llmservingsim: dict | None = None  # metric key -> (vLLM ms, LLMServingSim ms)


# --- reading ------------------------------------------------------------------------------
def _read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        return pd.read_csv(path)
    except FileNotFoundError:
        raise ValidationError(f"run file {path} does not exist") from None
    except (ValueError, OSError) as exc:  # pandas' and pyarrow's parse errors are ValueErrors
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValidationError(f"run file {path} could not be read: {first}") from None


REAL_COLUMNS = ("input_toks", "output_toks", "queued_ts", "first_token_ts", "last_token_ts")
BENCH_COLUMNS = ("request_id", "arrival_time", "send_time", "first_token_time", "end_time", "num_output_tokens")


def _floats(df, col: str, path: Path) -> np.ndarray:
    try:
        return df[col].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(f"run file {path}: column {col} is not numeric") from None


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValidationError(f"meta file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"meta file {path} is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ValidationError(f"meta file {path} must hold a JSON object")
    return meta


def read_summary(path: Path) -> dict | None:
    """LLMServingSim's `validation/summary.txt`: metric key -> (vLLM, Sim), in ms."""
    if not path.is_file():
        return None
    rows = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(TTFT|TPOT|Latency) (Mean|Median|P\d+)\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            rows[f"{m.group(1)} {m.group(2)}"] = (float(m.group(3)), float(m.group(4)))
    out = {key: rows[label] for key, label in METRICS if label in rows}
    return out if len(out) == len(METRICS) else None


def load_run(source: str | Path, meta_path: str | Path | None = None) -> RealRun:
    """A shipped run name, a CSV/JSONL/Parquet file of a real vLLM run (meta beside it as
    `<prefix>_meta.json`, or `meta_path`), or a `kvsched bench --output` directory."""
    summary = None
    if str(source) in RUNS:
        prefix = DATA / RUNS[str(source)]
        path, default_meta = Path(f"{prefix}_requests.csv"), Path(f"{prefix}_meta.json")
        summary = read_summary(Path(f"{prefix}_sim_vs_vllm_summary.txt"))
        name = str(source)
    else:
        path = Path(source)
        name = path.name
        if path.is_dir():
            return _load_bench(path, meta_path)
        if not path.exists():
            raise ValidationError(f"{source} is neither a shipped run ({', '.join(RUNS)}) nor an existing file")
        stem = re.sub(r"_requests$", "", path.stem)
        default_meta = path.with_name(f"{stem}_meta.json")
        summary = read_summary(path.with_name(f"{stem}_sim_vs_vllm_summary.txt"))
    df = _read_table(path)
    missing = [c for c in REAL_COLUMNS if c not in df.columns]
    if missing:
        if all(c in df.columns for c in BENCH_COLUMNS):
            return _bench_frame(df, path, meta_path)
        raise ValidationError(f"run file {path} lacks column(s) {', '.join(missing)} (a real vLLM run needs "
                              f"{', '.join(REAL_COLUMNS)}; a kvsched bench file needs {', '.join(BENCH_COLUMNS)})")
    if meta_path is None and not default_meta.is_file():
        raise ValidationError(f"no meta file for {path}: give --meta META.json (expected {default_meta.name} beside it)")
    meta = read_meta(Path(meta_path) if meta_path else default_meta)
    queued = _floats(df, "queued_ts", path)
    if "arrival_time_s_rel" in df.columns:
        arrival = _floats(df, "arrival_time_s_rel", path)
    else:
        arrival = queued - np.nanmin(queued)
    ids = df["request_id"].tolist() if "request_id" in df.columns else list(range(len(df)))
    return _checked(RealRun(name, _floats(df, "input_toks", path).astype(np.int64),
                            _floats(df, "output_toks", path).astype(np.int64), arrival, queued,
                            _floats(df, "first_token_ts", path), _floats(df, "last_token_ts", path), ids,
                            meta, summary), path)


def _load_bench(folder: Path, meta_path) -> RealRun:
    for candidate in ("requests.parquet", "requests.csv"):
        if (folder / candidate).is_file():
            df = _read_table(folder / candidate)
            missing = [c for c in BENCH_COLUMNS if c not in df.columns]
            if missing:
                raise ValidationError(f"{folder / candidate} lacks column(s) {', '.join(missing)}")
            return _bench_frame(df, folder / candidate, meta_path)
    raise ValidationError(f"{folder} holds no requests.parquet or requests.csv (a kvsched bench --output directory)")


def _bench_frame(df, path: Path, meta_path) -> RealRun:
    """`kvsched bench` rows: the send time is when the server queued the request; failed
    requests are dropped (the simulator cannot fail them)."""
    meta = read_meta(Path(meta_path)) if meta_path else {}
    config = path.parent / "config.json"
    if not meta and config.is_file():
        try:
            bench = json.loads(config.read_text())
            if isinstance(bench, dict) and bench.get("model"):
                meta = {"model": bench["model"]}
        except json.JSONDecodeError:
            pass
    if "success" in df.columns:
        df = df[df["success"].astype(bool)]
    if not len(df):
        raise ValidationError(f"{path}: no successful request to compare")
    prompt = df["num_prompt_tokens"] if "num_prompt_tokens" in df.columns else df["prompt_len"]
    prompt = prompt.fillna(df["prompt_len"]) if "prompt_len" in df.columns else prompt
    send = _floats(df, "send_time", path)
    return _checked(RealRun(path.parent.name, prompt.to_numpy(dtype=np.int64),
                            _floats(df, "num_output_tokens", path).astype(np.int64),
                            _floats(df, "arrival_time", path), send, _floats(df, "first_token_time", path),
                            _floats(df, "end_time", path), df["request_id"].tolist(), meta, None), path)


def _checked(run: RealRun, path: Path) -> RealRun:
    arrays = (run.input_tokens, run.output_tokens, run.arrival_s, run.queued_s, run.first_token_s, run.last_token_s)
    if not len(run.input_tokens):
        raise ValidationError(f"run file {path} has no requests")
    if any(not np.all(np.isfinite(a)) for a in arrays[2:]):
        raise ValidationError(f"run file {path} has missing timestamps")
    if np.any(run.input_tokens < 1) or np.any(run.output_tokens < 1):
        raise ValidationError(f"run file {path}: every request needs at least one input and one output token")
    run.arrival_s = run.arrival_s - run.arrival_s.min()
    return run


# --- settings -----------------------------------------------------------------------------
def _model_key(name: str) -> str:
    return name.rsplit("/", 1)[-1].lower().removeprefix("meta-")


def _gpu_of(run: RealRun, gpu: str | None) -> str | None:
    if gpu:
        return gpu.lower().replace(" ", "").replace("-", "")
    hw = run.meta.get("hardware")
    text = json.dumps(hw).lower().replace(" ", "").replace("-", "") if hw else ""
    text += " " + run.name.lower().replace("-", "").replace("_", "")
    return next((g for g in GPUS if g in text), None)


@dataclass
class Settings:
    cost_model: str
    capacity_tokens: int
    capacity_source: str
    max_num_seqs: int
    max_num_batched_tokens: int
    prefix_caching: bool
    tp: int
    block_size: int = 16


def settings(run: RealRun, *, cost_model: str | None = None, capacity: int | None = None, gpu: str | None = None,
             tp: int | None = None, max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
             prefix_caching: bool | None = None, block_size: int = 16) -> Settings:
    """The simulator's configuration of the run: meta first, explicit arguments win."""
    from kvsched.sim import capacity as cap

    engine = run.meta.get("engine_kwargs") or {}
    tp = tp or int(engine.get("tensor_parallel_size") or 1)
    seqs = max_num_seqs or int(engine.get("max_num_seqs") or VLLM_DEFAULT_MAX_NUM_SEQS)
    tokens = max_num_batched_tokens or int(engine.get("max_num_batched_tokens") or VLLM_DEFAULT_MAX_NUM_BATCHED_TOKENS)
    if prefix_caching is None:
        prefix_caching = bool(engine.get("enable_prefix_caching", True))  # vLLM's default: on
    model_name = run.meta.get("model") or engine.get("model") or ""
    known = MODELS.get(_model_key(model_name)) if model_name else None
    gpu_key = _gpu_of(run, gpu)
    if cost_model is None:
        if known is None or gpu_key is None:
            what = f"model {model_name!r}" if known is None else "the GPU (give --gpu)"
            raise ValidationError(f"cannot pick a cost model for {run.name}: unknown {what}; give --cost-model NAME "
                                  "(see kvsched cost-models)")
        cost_model = f"{known[0]}-{gpu_key}" + (f"-tp{tp}" if tp > 1 else "")
    if capacity is not None:
        cap_tokens, source = capacity, "--capacity"
    elif _kv_blocks(run.meta):
        blocks, bs = _kv_blocks(run.meta)
        cap_tokens, source = blocks * bs, "the meta's KV blocks"
    elif known is not None and gpu_key in CAPACITY_GPUS:
        derived = cap.derive_kv_capacity(getattr(cap, known[1]), getattr(cap, CAPACITY_GPUS[gpu_key]), tp,
                                         block_size=block_size, max_num_batched_tokens=tokens, max_num_seqs=seqs)
        cap_tokens, source = derived.tokens, "derived as vLLM does (GPU memory, model, TP)"
    else:
        from kvsched.sim.tables import default_capacity

        cap_tokens = default_capacity(cost_model, block_size=block_size)
        if cap_tokens is None:
            raise ValidationError(f"no KV capacity for {run.name}: the meta records no KV blocks and {cost_model} "
                                  "names no deployment; give --capacity TOKENS")
        source = f"{cost_model}'s derived default"
    return Settings(cost_model, int(cap_tokens), source, seqs, tokens, prefix_caching, tp, block_size)


def _kv_blocks(meta: dict) -> tuple[int, int] | None:
    kv = meta.get("kv_cache")
    if not isinstance(kv, dict):
        return None
    for key in ("num_gpu_blocks", "num_blocks", "kv_blocks", "total_blocks"):
        if isinstance(kv.get(key), int) and kv[key] > 0:
            return kv[key], int(kv.get("block_size") or 16)
    return None


# --- metrics ------------------------------------------------------------------------------
def metrics(ttft_s, tpot_s, e2e_s) -> dict[str, float]:
    """The 11 metrics in milliseconds (TPOT over requests with more than one output token)."""
    out = {}
    for prefix, values in (("ttft", ttft_s), ("tpot", tpot_s), ("e2e", e2e_s)):
        x = 1e3 * np.asarray(values, dtype=np.float64)
        x = x[np.isfinite(x)]
        out[f"{prefix}_mean"] = float(x.mean()) if len(x) else math.nan
        for p in (50, 90, 99):
            out[f"{prefix}_p{p}"] = float(np.percentile(x, p)) if len(x) else math.nan
    return {key: out[key] for key, _ in METRICS}


def _tpot(first, last, output) -> np.ndarray:
    output = np.asarray(output, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(output > 1, (np.asarray(last) - np.asarray(first)) / (output - 1), np.nan)


def real_latencies(run: RealRun) -> dict[str, np.ndarray]:
    return {"ttft": run.first_token_s - run.queued_s, "e2e": run.last_token_s - run.queued_s,
            "tpot": _tpot(run.first_token_s, run.last_token_s, run.output_tokens)}


def simulate_run(run: RealRun, s: Settings):
    """The run replayed in the simulator under vLLM's scheduler rules; returns the Run."""
    from kvsched.registry import COST_MODELS, SCHEDULERS
    from kvsched.request import Request
    from kvsched.sim import simulate

    try:
        cost = COST_MODELS.create(s.cost_model)
    except KeyError as exc:
        raise ValidationError(str(exc).strip("'\"")) from None
    scheduler = SCHEDULERS.create("vllm", max_num_seqs=s.max_num_seqs, max_num_batched_tokens=s.max_num_batched_tokens,
                                  reserve_full_sequence=True, threshold_needs_two=True,
                                  enable_prefix_caching=s.prefix_caching)
    reqs = [Request(i, float(a), int(p), int(o)) for i, (a, p, o) in
            enumerate(zip(run.arrival_s, run.input_tokens, run.output_tokens, strict=True))]
    return simulate(reqs, scheduler, cost, capacity_tokens=s.capacity_tokens, block_size=s.block_size,
                    prefix_caching=s.prefix_caching)


def compare(run: RealRun, s: Settings) -> dict:
    """vLLM vs kvsched: the 11 metrics and makespan with errors, mean absolute error, per-request
    E2E MAPE, LLMServingSim's errors where its summary ships, and the per-request rows."""
    result = simulate_run(run, s)
    reqs = sorted(result.requests, key=lambda r: r.request_id)
    finished = np.array([r.finish_time is not None for r in reqs])
    if not finished.all():
        raise ValidationError(f"{(~finished).sum()} request(s) did not finish in the simulator "
                              f"(capacity {s.capacity_tokens} tokens); give a larger --capacity")
    sim_first = np.array([r.first_token_time for r in reqs], dtype=np.float64)
    sim_last = np.array([r.finish_time for r in reqs], dtype=np.float64)
    real = real_latencies(run)
    sim = {"ttft": sim_first - run.arrival_s, "e2e": sim_last - run.arrival_s,
           "tpot": _tpot(sim_first, sim_last, run.output_tokens)}
    real_m, sim_m = metrics(real["ttft"], real["tpot"], real["e2e"]), metrics(sim["ttft"], sim["tpot"], sim["e2e"])
    rows = {}
    for key, label in METRICS:
        rows[key] = {"label": label, "vllm": real_m[key], "kvsched": sim_m[key],
                     "error_pct": 100 * (sim_m[key] - real_m[key]) / real_m[key]}
        if run.llmservingsim:
            v, lss = run.llmservingsim[key]
            rows[key].update(llmservingsim=lss, llmservingsim_error_pct=100 * (lss - v) / v)
    real_span = float(np.max(run.last_token_s) - np.min(run.queued_s))
    sim_span = float(np.max(sim_last))  # arrivals start at 0
    rows["makespan"] = {"label": "Makespan (s)", "vllm": real_span, "kvsched": sim_span,
                        "error_pct": 100 * (sim_span - real_span) / real_span}
    mae = float(np.mean([abs(rows[k]["error_pct"]) for k, _ in METRICS]))
    e2e_mape = float(np.mean(np.abs(sim["e2e"] - real["e2e"]) / real["e2e"]) * 100)
    out = {
        "run": run.name, "num_requests": len(reqs), "cost_model": s.cost_model, "capacity_tokens": s.capacity_tokens,
        "capacity_source": s.capacity_source, "block_size": s.block_size, "tensor_parallel_size": s.tp,
        "scheduler": {"name": "vllm", "max_num_seqs": s.max_num_seqs,
                      "max_num_batched_tokens": s.max_num_batched_tokens, "reserve_full_sequence": True,
                      "threshold_needs_two": True},
        "prefix_caching": s.prefix_caching,
        "num_preemptions": int(sum(r.num_preemptions for r in reqs)),
        "metrics": rows, "mean_abs_error_pct": mae, "e2e_mape_pct": e2e_mape,
        "llmservingsim_mean_abs_error_pct": (float(np.mean([abs(rows[k]["llmservingsim_error_pct"])
                                                            for k, _ in METRICS])) if run.llmservingsim else None),
    }
    per_request = {"request_id": [str(x) for x in run.request_ids], "input_tokens": run.input_tokens,
                   "output_tokens": run.output_tokens, "arrival_s": run.arrival_s,
                   "vllm_ttft_s": real["ttft"], "kvsched_ttft_s": sim["ttft"],
                   "vllm_tpot_s": real["tpot"], "kvsched_tpot_s": sim["tpot"],
                   "vllm_e2e_s": real["e2e"], "kvsched_e2e_s": sim["e2e"]}
    return {"summary": out, "per_request": per_request}


def write_outputs(comparison: dict, out_dir: Path, fmt: str = "csv") -> list[Path]:
    """comparison.{csv,parquet}, requests.{csv,parquet}, summary.json and e2e_scatter.png."""
    import pandas as pd

    from kvsched.results import json_safe

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = comparison["summary"]
    table = pd.DataFrame([{"metric": k, **v} for k, v in summary["metrics"].items()])
    per_req = pd.DataFrame(comparison["per_request"])
    per_req["e2e_error_pct"] = 100 * (per_req.kvsched_e2e_s - per_req.vllm_e2e_s) / per_req.vllm_e2e_s
    paths = [out_dir / f"comparison.{fmt}", out_dir / f"requests.{fmt}", out_dir / "summary.json",
             out_dir / "e2e_scatter.png"]
    for frame, path in ((table, paths[0]), (per_req, paths[1])):
        frame.to_parquet(path, index=False) if fmt == "parquet" else frame.to_csv(path, index=False)
    paths[2].write_text(json.dumps(json_safe(summary), indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(per_req.vllm_e2e_s, per_req.kvsched_e2e_s, s=8, alpha=0.6)
    hi = float(max(per_req.vllm_e2e_s.max(), per_req.kvsched_e2e_s.max())) * 1.05
    ax.plot([0, hi], [0, hi], color="black", lw=1, label="y = x")
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="vLLM E2E latency (s)", ylabel="kvsched E2E latency (s)",
           title=f"{summary['run']}: E2E MAPE {summary['e2e_mape_pct']:.1f}%")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(paths[3], dpi=120)
    plt.close(fig)
    return paths


__all__ = ["METRICS", "RUNS", "RealRun", "Settings", "ValidationError", "compare", "load_run", "metrics",
           "read_summary", "settings", "write_outputs"]
