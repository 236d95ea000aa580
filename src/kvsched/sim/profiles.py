"""Cost-model coefficients derived from operator profiles and hardware rooflines.

The `llama2-7b-*` and `llama2-70b-a100-tp2` presets of `kvsched.sim.cost` are built here,
from two sources:

1. Token-linear operators (projections, MLP, norms, rope, residual add, embedding) from
   Vidur's profiled operator tables (microsoft/vidur, MIT; Agrawal et al., MLSys'24). The
   package ships small derived tables (`LINEAR_TABLES`), one per model and tensor-parallel
   degree: `data/vidur_llama2_7b_tp1_linear_ops.csv` (TP = 1, A100 and H100) and
   `data/vidur_llama2_70b_tp2_linear_ops.csv` (TP = 2, A100). For each device and
   num_tokens they hold the sum of the per-layer operator medians (`layer_ms`) and the
   embedding median (`emb_ms`) of one GPU of the TP group. `python -m kvsched.sim.profiles
   DIR` regenerates them from the original `<device>_<model>_mlp.csv` files in DIR. The
   step time of these operators, `num_layers * layer_ms + emb_ms`, is fitted by
   `max(floor, base + slope * n)` (`fit_hinge`): flat while reading the weights dominates,
   linear once compute does.
2. Attention, which Vidur's public tables lack (Git LFS), from a roofline on one GPU of the
   TP group (its share of the KV heads and query heads): decode reads each cached KV token
   once (memory bound), prefill attention is compute bound.

No tensor-parallel communication (all-reduce) is modelled: Vidur's operator tables are
compute-only and its network profiles are not among the shipped data (docs/cost_models.md).

Everything here returns plain numbers in seconds; `kvsched.sim.cost` builds the models.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
LINEAR_TABLE_PATH = DATA_DIR / "vidur_llama2_7b_tp1_linear_ops.csv"
# The hinge fits of the shipped linear tables, each stamped with the table file it came from
# (`fit_table` reads them; `write_fit_cache` rewrites them).
FIT_CACHE_PATH = DATA_DIR / "linear_ops_hinge_fits.json"

# Vidur's per-decoder-layer operators (its ExecutionTime sums these once per layer, `add`
# included); `emb` runs once per step. Vidur leaves the embedding out of its model time;
# we keep it (it is < 1 % of the step).
PER_LAYER_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
ONCE_PER_STEP_OPS = ("emb",)


@dataclass(frozen=True)
class ModelSpec:
    """The transformer shape the roofline needs (dense attention, fp16/bf16 weights)."""

    name: str
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    bytes_per_value: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        # K and V, every layer: 2 * 32 * 32 * 128 * 2 B = 524,288 B for Llama-2-7B.
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_value

    @property
    def attn_flops_per_pair(self) -> int:
        # Per (query, key) pair and layer: q.k over hidden (2*hidden FLOPs) and p*v (2*hidden).
        return 4 * self.num_layers * self.hidden_size

    @property
    def lm_head_bytes(self) -> int:
        return self.vocab_size * self.hidden_size * self.bytes_per_value

    # One GPU of a tensor-parallel group of `tp` GPUs (Megatron-style sharding, as in vLLM
    # and Vidur): each holds num_kv_heads / tp KV heads, hidden / tp of the query width and
    # vocab / tp rows of the lm_head. tp = 1 gives the properties above exactly.

    def _check_tp(self, tp: int) -> None:
        if tp < 1 or self.num_kv_heads % tp or self.hidden_size % tp or self.vocab_size % tp:
            raise ValueError(f"{self.name}: tp={tp} must divide num_kv_heads={self.num_kv_heads}, "
                             f"hidden_size={self.hidden_size} and vocab_size={self.vocab_size}")

    def kv_bytes_per_token_per_gpu(self, tp: int = 1) -> int:
        # 70B, TP=2: 2 * 80 layers * (8 / 2) KV heads * 128 * 2 B = 163,840 B.
        self._check_tp(tp)
        return 2 * self.num_layers * (self.num_kv_heads // tp) * self.head_dim * self.bytes_per_value

    def attn_flops_per_pair_per_gpu(self, tp: int = 1) -> int:
        self._check_tp(tp)
        return 4 * self.num_layers * (self.hidden_size // tp)

    def lm_head_bytes_per_gpu(self, tp: int = 1) -> int:
        self._check_tp(tp)
        return (self.vocab_size // tp) * self.hidden_size * self.bytes_per_value


@dataclass(frozen=True)
class GpuSpec:
    """Peak numbers of one GPU plus the per-sequence overhead we assume on it."""

    name: str
    hbm_bytes_per_s: float
    peak_flops: float  # dense fp16/bf16 tensor-core FLOP/s
    per_seq_s: float  # see docs/cost_models.md ("per-sequence overhead")


LLAMA2_7B = ModelSpec("Llama-2-7b-hf", num_layers=32, hidden_size=4096, num_kv_heads=32,
                      head_dim=128, vocab_size=32000)
# 64 query heads x 128 = 8192; grouped-query attention with 8 KV heads. (Vidur's profile
# lists vocab_size 32768, a padded value; the model's tokenizer has 32,000 entries.)
LLAMA2_70B = ModelSpec("Llama-2-70b-hf", num_layers=80, hidden_size=8192, num_kv_heads=8,
                       head_dim=128, vocab_size=32000)
GPUS = {
    "a100": GpuSpec("A100-80GB", hbm_bytes_per_s=2.0e12, peak_flops=312e12, per_seq_s=10e-6),
    # per_seq_s scaled from the A100 value by the HBM bandwidth ratio 2.0/3.35.
    "h100": GpuSpec("H100-80GB", hbm_bytes_per_s=3.35e12, peak_flops=989e12, per_seq_s=6e-6),
}

BANDWIDTH_EFFICIENCY = 0.7  # achieved / peak HBM bandwidth of paged decode attention
FLOPS_EFFICIENCY = 0.5  # achieved / peak tensor FLOP/s of prefill (flash) attention
CAUSAL_FRACTION = 0.5  # prefill_attn_tokens counts the full rectangle; causal masking halves it
ATTN_KERNEL_FLOOR_S = 10e-6  # per layer and step: attention + KV-save launches at tiny sizes
# GpuSpec.per_seq_s is per step of a 32-layer model whose GPU runs 32 query heads per layer
# (Llama-2-7B, TP=1). A model with L layers and the same heads per GPU pays L/32 of it.
PER_SEQ_REFERENCE_LAYERS = 32


@dataclass(frozen=True)
class LinearOpsTable:
    """One shipped derived table of Vidur's token-linear operators: model, TP degree, devices."""

    name: str
    model: ModelSpec
    vidur_model: str  # the model folder / file infix in Vidur, e.g. "Llama-2-7b-hf"
    tp: int
    devices: tuple[str, ...]
    path: Path

    def source(self, vidur_dir: Path | str, device: str) -> Path:
        """The original Vidur file for `device` in `vidur_dir`."""
        return Path(vidur_dir) / f"{device}_{self.vidur_model}_mlp.csv"


LLAMA2_7B_TP1 = LinearOpsTable("llama2-7b-tp1", LLAMA2_7B, "Llama-2-7b-hf", 1, ("a100", "h100"),
                               LINEAR_TABLE_PATH)
LLAMA2_70B_TP2 = LinearOpsTable("llama2-70b-tp2", LLAMA2_70B, "Llama-2-70b-hf", 2, ("a100",),
                                DATA_DIR / "vidur_llama2_70b_tp2_linear_ops.csv")
LINEAR_TABLES = {t.name: t for t in (LLAMA2_7B_TP1, LLAMA2_70B_TP2)}


@dataclass(frozen=True)
class HingeFit:
    """`max(floor_s, base_s + slope_s_per_token * n)` fitted to (n, time) points."""

    floor_s: float
    base_s: float
    slope_s_per_token: float
    r2: float
    max_rel_err: float
    mean_rel_err: float
    num_points: int

    @property
    def knee_tokens(self) -> float:
        return (self.floor_s - self.base_s) / self.slope_s_per_token

    def predict(self, num_tokens: np.ndarray) -> np.ndarray:
        return np.maximum(self.floor_s, self.base_s + self.slope_s_per_token * np.asarray(num_tokens))


def fit_hinge(num_tokens: np.ndarray, time_s: np.ndarray) -> HingeFit:
    """Least squares in *relative* error (steps span 9 to 260 ms; decode sits at the small end).

    Segmented regression by grid search: for every split k, the floor is the weighted mean of
    the points with n <= k and the line the weighted fit of the others; keep the split whose
    hinge `max(floor, line)` has the smallest relative squared error. Deterministic, numpy only.
    """
    n = np.asarray(num_tokens, dtype=np.float64)
    y = np.asarray(time_s, dtype=np.float64)
    if n.shape != y.shape or n.ndim != 1 or len(n) < 4:
        raise ValueError("fit_hinge needs two 1-D arrays of equal length >= 4")
    if np.any(y <= 0):
        raise ValueError("fit_hinge: times must be positive")
    w = 1.0 / y
    # The per-point products every split reads, computed once (element for element the same
    # values as computing them on each split's subset, so the fit is bit-for-bit unchanged).
    w2 = w**2
    yw2 = y * w2
    yw = y * w
    design_all = np.column_stack([np.ones(len(n)), n]) * w[:, None]
    best: tuple[float, float, float, float] | None = None
    for k in np.unique(n)[:-2]:
        low = n <= k
        high = ~low
        floor = float(np.sum(yw2[low]) / np.sum(w2[low]))
        (base, slope), *_ = np.linalg.lstsq(design_all[high], yw[high], rcond=None)
        sse = float(np.sum(((np.maximum(floor, base + slope * n) - y) * w) ** 2))
        if best is None or sse < best[0]:
            best = (sse, floor, float(base), float(slope))
    assert best is not None
    _, floor, base, slope = best
    pred = np.maximum(floor, base + slope * n)
    rel = np.abs(pred - y) / y
    r2 = 1.0 - float(np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2))
    return HingeFit(floor, base, slope, r2, float(rel.max()), float(rel.mean()), len(n))


def load_linear_table(device: str, path: Path | None = None,
                      table: LinearOpsTable = LLAMA2_7B_TP1) -> tuple[np.ndarray, np.ndarray]:
    """(num_tokens, step seconds of the token-linear operators) for `device` from the shipped
    `table` (or the file at `path` in its format): num_layers * layer_ms + emb_ms, in seconds."""
    path = table.path if path is None else Path(path)
    rows = [r for r in csv.DictReader(path.open()) if r["device"] == device]
    if not rows:
        raise ValueError(f"device {device!r} not in {path.name}")
    num_tokens = np.array([int(r["num_tokens"]) for r in rows], dtype=np.float64)
    step_ms = np.array([table.model.num_layers * float(r["layer_ms"]) + float(r["emb_ms"]) for r in rows])
    return num_tokens, step_ms * 1e-3


def summarise_vidur_table(csv_path: Path | str, tp: int = 1, model: ModelSpec | None = None) -> list[dict]:
    """Rows {num_tokens, layer_ms, emb_ms} from one Vidur `mlp.csv`, rows with
    num_tensor_parallel_workers == tp (duplicated num_tokens rows, e.g. 2048 and 4096, are
    averaged). With `model`, check that the file profiles that shape (hidden, KV heads)."""
    import pandas as pd  # only needed to regenerate the shipped table

    df = pd.read_csv(csv_path)
    df = df[df["num_tensor_parallel_workers"] == tp]
    if df.empty:
        raise ValueError(f"{csv_path}: no rows with num_tensor_parallel_workers == {tp}")
    if model is not None:
        shape = {"n_embd": model.hidden_size, "n_kv_head": model.num_kv_heads,
                 "n_head": model.hidden_size // model.head_dim}
        for column, value in shape.items():
            if set(df[column]) != {value}:
                raise ValueError(f"{csv_path}: {column} is {sorted(set(df[column]))}, "
                                 f"expected {value} for {model.name}")
    layer = df[[f"time_stats.{op}.median" for op in PER_LAYER_OPS]].sum(axis=1)
    emb = df[[f"time_stats.{op}.median" for op in ONCE_PER_STEP_OPS]].sum(axis=1)
    grouped = pd.DataFrame({"num_tokens": df["num_tokens"], "layer_ms": layer, "emb_ms": emb})
    grouped = grouped.groupby("num_tokens", as_index=False).mean().sort_values("num_tokens")
    return [
        {"num_tokens": int(r.num_tokens), "layer_ms": round(float(r.layer_ms), 6),
         "emb_ms": round(float(r.emb_ms), 6)}
        for r in grouped.itertuples()
    ]


def write_linear_table(vidur_dir: Path | str, path: Path | str | None = None,
                       table: LinearOpsTable = LLAMA2_7B_TP1) -> None:
    """Regenerate the shipped `table` (to `path`, default `table.path`) from the
    `<device>_<vidur_model>_mlp.csv` files in vidur_dir."""
    with Path(table.path if path is None else path).open("w", newline="") as out:
        writer = csv.DictWriter(out, ["device", "num_tokens", "layer_ms", "emb_ms"])
        writer.writeheader()
        for device in table.devices:
            for row in summarise_vidur_table(table.source(vidur_dir, device), tp=table.tp, model=table.model):
                writer.writerow({"device": device, **row})


@functools.cache
def fit_table(table_name: str, device: str) -> HingeFit:
    """Hinge fit of the shipped linear-operator table `table_name` for `device` (cached).

    Read from FIT_CACHE_PATH when that fit was written from this very table file (same size
    and CRC-32), else fitted: fitting imports numpy.linalg and solves one least-squares problem
    per split, ~35 ms of every `kvsched simulate` start. Tests check that the shipped fits equal
    fresh ones bit for bit."""
    table = LINEAR_TABLES[table_name]
    cached = _cached_fit(table, device)
    return _fresh_fit(table, device) if cached is None else cached


def _fresh_fit(table: LinearOpsTable, device: str) -> HingeFit:
    return fit_hinge(*load_linear_table(device, table=table))


def _table_stamp(path: Path) -> str:
    """Size and CRC-32 of a table file: which file a stored fit was made from."""
    data = Path(path).read_bytes()
    return f"{len(data)}:{zlib.crc32(data):08x}"


def _cached_fit(table: LinearOpsTable, device: str, path: Path = FIT_CACHE_PATH) -> HingeFit | None:
    """The stored fit of `table` for `device`, or None when none was stored from this table file."""
    try:
        entry = json.loads(Path(path).read_text()).get(table.name, {}).get(device)
    except FileNotFoundError:
        return None
    if entry is None or entry["table"] != _table_stamp(table.path):
        return None
    return HingeFit(**entry["fit"])


def write_fit_cache(path: Path | str = FIT_CACHE_PATH) -> None:
    """Store the hinge fit of every shipped table and device (JSON floats round-trip exactly)."""
    entries = {t.name: {d: {"table": _table_stamp(t.path), "fit": asdict(_fresh_fit(t, d))} for d in t.devices}
               for t in LINEAR_TABLES.values()}
    Path(path).write_text(json.dumps(entries, indent=1) + "\n")


def fit_device(device: str) -> HingeFit:
    """Hinge fit of the shipped Llama-2-7B TP=1 table for `device` (cached)."""
    return fit_table(LLAMA2_7B_TP1.name, device)


@dataclass(frozen=True)
class Derivation:
    """Coefficients of a `PiecewiseTokenCost` (as keyword arguments) and the fit behind them."""

    coefficients: dict[str, float]
    fit: HingeFit


def derive(
    table: LinearOpsTable,
    device: str,
    bandwidth_efficiency: float = BANDWIDTH_EFFICIENCY,
    flops_efficiency: float = FLOPS_EFFICIENCY,
    per_seq_s: float | None = None,
) -> Derivation:
    """Coefficients of a profiled preset: hinge fit of `table`'s Vidur linear operators for
    `device` + roofline attention on one GPU of the TP group + fixed and per-sequence
    overheads (derivation in docs/cost_models.md). Times are per step of the whole group:
    the GPUs of a TP group run the step in lockstep, each on its shard."""
    if device not in table.devices:
        raise ValueError(f"device must be one of {sorted(table.devices)}, got {device!r}")
    if not 0 < bandwidth_efficiency <= 1:
        raise ValueError(f"bandwidth_efficiency must be in (0, 1], got {bandwidth_efficiency}")
    if not 0 < flops_efficiency <= 1:
        raise ValueError(f"flops_efficiency must be in (0, 1], got {flops_efficiency}")
    gpu, model, tp = GPUS[device], table.model, table.tp
    fit = fit_table(table.name, device)
    bandwidth = gpu.hbm_bytes_per_s * bandwidth_efficiency
    if per_seq_s is None:
        per_seq_s = gpu.per_seq_s * model.num_layers / PER_SEQ_REFERENCE_LAYERS
    coefficients = {
        "linear_floor_s": fit.floor_s,
        "linear_base_s": fit.base_s,
        "linear_s_per_token": fit.slope_s_per_token,
        # lm_head weights are read once per step (Vidur's table omits the lm_head), and every
        # layer launches attention kernels even for tiny batches.
        "d0_s": model.lm_head_bytes_per_gpu(tp) / bandwidth + model.num_layers * ATTN_KERNEL_FLOOR_S,
        "d1_s_per_token": model.kv_bytes_per_token_per_gpu(tp) / bandwidth,
        "d3_s_per_seq": per_seq_s,
        "d4_s_per_attn_token": CAUSAL_FRACTION * model.attn_flops_per_pair_per_gpu(tp)
        / (gpu.peak_flops * flops_efficiency),
    }
    return Derivation(coefficients, fit)


def derive_llama2_7b(
    device: str,
    bandwidth_efficiency: float = BANDWIDTH_EFFICIENCY,
    flops_efficiency: float = FLOPS_EFFICIENCY,
    per_seq_s: float | None = None,
) -> Derivation:
    """The `llama2-7b-<device>` preset (TP = 1)."""
    return derive(LLAMA2_7B_TP1, device, bandwidth_efficiency, flops_efficiency, per_seq_s)


def derive_llama2_70b_tp2(
    device: str = "a100",
    bandwidth_efficiency: float = BANDWIDTH_EFFICIENCY,
    flops_efficiency: float = FLOPS_EFFICIENCY,
    per_seq_s: float | None = None,
) -> Derivation:
    """The `llama2-70b-a100-tp2` preset: Llama-2-70B on two GPUs, tensor parallelism 2."""
    return derive(LLAMA2_70B_TP2, device, bandwidth_efficiency, flops_efficiency, per_seq_s)


def main(argv: list[str]) -> None:
    if not argv or any(name not in LINEAR_TABLES for name in argv[1:]):
        sys.exit(f"usage: python -m kvsched.sim.profiles VIDUR_PROFILE_DIR [TABLE ...]\n"
                 f"TABLE: one of {', '.join(LINEAR_TABLES)} (default: all)")
    for name in argv[1:] or LINEAR_TABLES:
        table = LINEAR_TABLES[name]
        write_linear_table(argv[0], table=table)
        print(f"wrote {table.path}")
    write_fit_cache()
    print(f"wrote {FIT_CACHE_PATH}")
    fit_table.cache_clear()
    for name in argv[1:] or LINEAR_TABLES:
        table = LINEAR_TABLES[name]
        for device in table.devices:
            d = derive(table, device)
            print(table.name, device, d.coefficients, d.fit)


if __name__ == "__main__":
    main(sys.argv[1:])
