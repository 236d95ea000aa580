"""Table-driven cost models: step times looked up in measured operator tables.

`TableCost` computes the time of one step from profiled operator tables instead of a
fitted formula, so that a simulated step costs what the measured kernels cost at that
batch shape. Presets (`COST_MODELS`):

- `llama3.1-8b-rtx4090`, `llama3.1-8b-rtxpro6000`: Llama-3.1-8B bf16, TP 1, on one
  RTX 4090 / one RTX PRO 6000 Blackwell Server Edition, from LLMServingSim's vLLM 0.19
  layer-wise profiles (casys-kaist/LLMServingSim @ profiler/perf/<HW>/meta-llama/
  Llama-3.1-8B/bf16/tp1/{dense,attention,per_sequence}.csv, MIT; cite Cho et al.,
  LLMServingSim2.0, arXiv:2511.07229, and LLMServingSim, IISWC 2024). A step is

      sum of the dense operators at (prefill tokens + decodes)      (32 x per-layer ops
                                                                     + embedding and
                                                                     final_layernorm once)
    + 32 x attention(prefill_chunk, kv_prefill, n_decode, kv_decode) (4-D grid, per layer)
    + lm_head + sampler at num_seqs                                   (once per step)

- `llama3-8b-a100`: Meta-Llama-3-8B fp16, TP 1, on one A100-80GB: the token-linear
  operators from Vidur's profile (microsoft/vidur @ data/profiling/compute/a100/
  meta-llama/Meta-Llama-3-8B/mlp.csv, MIT), interpolated rather than hinge-fitted, plus
  the attention / lm_head / per-sequence roofline of `kvsched.sim.profiles` with A100
  numbers (Vidur's attention table is a Git-LFS object and not available).

Reading of LLMServingSim's dense table (its `profiler/models/llama.yaml` lists the
iteration as embedding; per layer [layernorm, qkv_proj, rotary_emb, attention, o_proj,
layernorm, gate_up_proj, act_fn, down_proj]; final_layernorm, lm_head, sampler): the
`layernorm` row is one RMSNorm call (the size of one `final_layernorm` call, not of two:
28.5 vs 26.7 us at 2048 tokens on the RTX 4090) and runs twice per decoder layer; qkv_proj, rotary_emb, o_proj, gate_up_proj, act_fn and
down_proj once per layer; `embedding` and `final_layernorm` once per step. The tables
were measured with a 1-layer model (vLLM `hf_overrides: num_hidden_layers: 1`), so
per-layer times are multiplied by the 32 layers of Llama-3.1-8B. (The RTX PRO 6000
`meta.yaml` shows the overrides of its TP 2 run; its TP 1 tables are the full-width
model: the 1-token down_proj reads 117 MB in 85.5 us = 1.37 TB/s, lm_head 1.05 GB in
714 us.)

Mapping a `BatchShape` to the attention grid. LLMServingSim's profiler measures one
prefill request (`prefill_chunk` new tokens after `kv_prefill` cached ones) beside
`n_decode` one-token decodes that each have `kv_decode` cached tokens. From a shape with
P = num_prefill_tokens, A = prefill_attn_tokens (sum of new * (computed + new)), k =
num_seqs - num_decode_seqs prefill requests (at least 1 when P > 0) and n =
num_decode_seqs:

- prefill_chunk = P;
- m = A / P is the chunk-weighted mean of (computed + new) over the prefill requests
  (the one request's KV after the step when k = 1). Assuming the k chunks are equal,
  kv_prefill = m - P/(2k) - P/2 is the history of the single P-token chunk that does the
  same causal attention work, P * (kv_prefill + P/2); exact for k = 1, clamped at 0;
- the prefill requests hold about k * m KV tokens after the step (at least P); exact for
  k = 1 or equal requests;
- n_decode = n; kv_decode = (num_kv_tokens - prefill KV) / n - 1, the mean cached length
  of the decodes before the step (each holds its cached tokens plus the new one after
  it), clamped at 0. LLMServingSim's simulator uses the mean as well, then corrects
  for the spread of the lengths (below).

Skew correction (RTX PRO 6000 presets; LLMServingSim's `skew_fit.csv` per model and TP,
its rule as documented in LLMServingSim's docs/profiler/skew-alpha-fit.md): the grid holds
uniform decode batches, and a batch whose decodes have different lengths is slower than
the uniform batch at their mean. With the longest and shortest cached lengths of the
step's decodes (`BatchShape.max_decode_kv_len`, `min_decode_kv_len`), the per-layer
attention becomes t_mean + alpha * (t_max - t_mean), t_max the grid at the longest
length; alpha is the fit's value for the bucket (prefill chunk as profiled, decodes,
skew rate (mean - min) / (max - min), longest length, prefill history), or the fit's
pooled `alpha_default` (meta.yaml) for a bucket it has no sample of, e.g. any chunk
that is not a profiled grid value. No correction for fewer than two decodes, for decodes
of equal length, or when t_max <= t_mean. The RTX 4090 bundle has no fit in its meta:
no correction there, as in LLMServingSim.

TP 2 communication: two all-reduces of tokens x hidden x 2 B per decoder layer, each the
measured latency of the smallest 2-GPU NCCL all-reduce (12.7 us at 4 KB) plus the bytes
over 16 GB/s, the serving link of LLMServingSim's RTX PRO 6000 cluster config (derivation
and the real-run evidence: docs/fidelity.md).

Approximations: several prefill requests in one step are one chunk of their total (for
k equal fresh prompts that charges the attention of one P-token prompt; LLMServingSim's
profiler reports a real k = 7 split at 0.65-0.71 of the one-chunk time); the decodes'
KV lengths are replaced by their mean.

Interpolation and extrapolation. Every profilable point of the doubling grid (prefill_chunk
0, 16, ..., 2048; kv_prefill and kv_decode 0, 16, ..., 16384; n_decode 0, 1, 2, ..., 256) is
measured on both GPUs (8,643 rows). The RTX PRO 6000 profiles add a second sweep at x1.5
spacing (chunks 24, 36, ..., 1384; kv 768, 1152, ..., 13122; 19,364 rows in all), which
resolves the convex prefill attention between doubling points: the grid's axes are every
profiled value, and a cell neither sweep measured is filled by linear interpolation between
its nearest measured neighbours along kv_decode, else kv_prefill, else the chunk (off the
x1.5 sweep that is what multilinear interpolation on the doubling grid gives; docs/fidelity.md
measures the effect). Structural holes are filled before interpolating: pc = 0 is independent of
kv_prefill and n_decode = 0 of kv_decode (the grid has only one value there), a decode
with fewer than 16 cached tokens costs like 16 (the first profiled point), and the
n_decode = 256 plane with a prefill chunk (not profilable: 257 sequences exceed vLLM's
max_num_seqs = 256) is extrapolated linearly from n_decode = 64 and 128 (decode attention
is linear in n_decode * kv_decode). Then every axis is interpolated linearly, as
LLMServingSim does. Below an axis' first point the value is clamped (a chunk of 1-15
tokens costs like 16); above its last point it is extrapolated along the secant of the
top octave (x_max/2 to x_max: the last two points of the doubling grids). A prefill chunk
longer than 2048 tokens is split into 2048-token pieces, piece j with j * 2048 more
cached tokens (the decodes go with the first piece): causal attention work is additive
over such pieces, whereas a straight line in the chunk length would miss its quadratic
growth. The dense and per-sequence tables are interpolated in tokens / sequences and
extrapolated along the top-octave secant (1024 to 2048 tokens, 128 to 256 sequences):
their last points sit 16 tokens apart on a GEMM tile plateau (RTX 4090: 5.9 us per token
from 2016 to 2048 tokens against 88 from 1024 to 2048).

`write_tables(profiles_dir)` regenerates the shipped copies in `data/` from a folder
holding copies of the upstream profiles; the package reads only `data/` at run time. Derivations and example
step times: docs/cost_models.md.
"""

from __future__ import annotations

import csv
import functools
import itertools
import shutil
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from kvsched.backend import BatchShape
from kvsched.registry import COST_MODELS
from kvsched.sim import capacity, cost, profiles
from kvsched.sim.cost import _ONE_DECODE, CostModel, _decode_kv

DATA_DIR = profiles.DATA_DIR

# ---------------------------------------------------------------- LLMServingSim tables

LLMSERVINGSIM_MODEL = "Llama-3.1-8B"
LLAMA31_8B_LAYERS = 32
# Calls per decoder layer of each per-layer dense operator (LLMServingSim's llama.yaml).
DENSE_PER_LAYER = {
    "layernorm": 2,
    "qkv_proj": 1,
    "rotary_emb": 1,
    "o_proj": 1,
    "gate_up_proj": 1,
    "act_fn": 1,
    "down_proj": 1,
}
DENSE_ONCE = ("embedding", "final_layernorm")
PER_SEQUENCE_OPS = ("lm_head", "sampler")
# The doubling grid of the attention sweep (meta.yaml: chunks 0, 16-2048 x2; kv 0, 16-16384 x2;
# n_decode 0, 1-256 x2).
PREFILL_CHUNKS = (0, *(16 << i for i in range(8)))
KV_POINTS = (0, *(16 << i for i in range(11)))
N_DECODES = (0, *(1 << i for i in range(9)))
MAX_PREFILL_CHUNK = PREFILL_CHUNKS[-1]


LLAMA_DENSE_PER_LAYER = tuple(DENSE_PER_LAYER.items())
# Qwen3 (LLMServingSim's qwen3.yaml): layernorm twice, qkv_proj, qk_norm (q and k norms, one
# row), rotary_emb, o_proj once; the dense MLP [gate_up_proj, act_fn, down_proj] or, for
# Qwen3-MoE, the whole sparse MoE block (`moe`, from moe.csv).
QWEN3_ATTN_PER_LAYER = (("layernorm", 2), ("qkv_proj", 1), ("qk_norm", 1), ("rotary_emb", 1), ("o_proj", 1))
QWEN3_DENSE_PER_LAYER = (*QWEN3_ATTN_PER_LAYER, ("gate_up_proj", 1), ("act_fn", 1), ("down_proj", 1))
# Measured NCCL all-reduce (bf16, 2 ranks, RTX PRO 6000 over PCIe 5): bytes -> us.
ALLREDUCE_FILE = "llmservingsim_RTXPRO6000_allreduce_2gpu.csv"
# Bandwidth of the link between the two RTX PRO 6000 of a TP 2 deployment in a serving run:
# LLMServingSim's cluster config for this machine (bench/examples/RTXPRO6000/<model>/
# config.json: link_bw 16 GB/s), confirmed by the real TP 2 run (docs/fidelity.md).
ALLREDUCE_LINK_BYTES_PER_US = 16e9 / 1e6

# LLMServingSim's skew fit (skew_fit.csv; meta.yaml `skew_fit.bucket_axes`): buckets are
# (lo, hi] intervals of these edges, looked up by the label index.
SKEW_N_EDGES = (0, 2, 4, 8, 16, 32, 64, 128, 256, 1_000_000)
SKEW_N_LABELS = ("n<=2", "n<=4", "n<=8", "n<=16", "n<=32", "n<=64", "n<=128", "n<=256", "n>256")
SKEW_RATE_EDGES = (-0.01, 0.05, 0.15, 0.40, 0.70, 1.01)
SKEW_RATE_LABELS = ("sr<=5%", "sr<=15%", "sr<=40%", "sr<=70%", "sr>70%")
SKEW_KV_BIG_EDGES = (0, 1024, 4096, 16384, 1_000_000_000)
SKEW_KV_BIG_LABELS = ("kvB<=1k", "kvB<=4k", "kvB<=16k", "kvB>16k")
SKEW_KP_EDGES = (-1, 0, 512, 1024, 2048, 4096, 8192, 1_000_000_000)
SKEW_KP_LABELS = ("kp=0", "kp<=512", "kp<=1k", "kp<=2k", "kp<=4k", "kp<=8k", "kp>8k")


@dataclass(frozen=True)
class LLMServingSimProfile:
    """One shipped LLMServingSim profile: GPU label (folder name upstream), full GPU name,
    model, tensor parallelism and how the dense table's rows make up a decoder layer."""

    hardware: str
    gpu: str
    num_layers: int = LLAMA31_8B_LAYERS
    model: str = LLMSERVINGSIM_MODEL
    tp: int = 1
    dense_per_layer: tuple[tuple[str, int], ...] = LLAMA_DENSE_PER_LAYER
    hidden_size: int = 4096
    # MoE: experts, top-k, and the TP of the shipped moe.csv (upstream profiles TP 1 only).
    num_experts: int = 0
    experts_per_token: int = 0
    moe_tp: int = 1
    # The skew fit's pooled alpha for buckets it has no sample of (meta.yaml
    # `skew_fit.per_tp[tp].alpha_default`); None: no skew fit, no correction.
    skew_alpha_default: float | None = None

    def path(self, kind: str) -> Path:
        """The shipped copy of `kind` ("dense" | "attention" | "per_sequence" | "moe")."""
        tp = self.moe_tp if kind == "moe" else self.tp
        return DATA_DIR / f"llmservingsim_{self.hardware}_{self.model}_tp{tp}_{kind}.csv"

    def source(self, llmservingsim_dir: Path | str, kind: str) -> Path:
        """The file in the shared folder (`llmservingsim/` in the profiles folder)."""
        tp = self.moe_tp if kind == "moe" else self.tp
        return Path(llmservingsim_dir) / f"{self.hardware}_{self.model}_tp{tp}_{kind}.csv"

    @property
    def kinds(self) -> tuple[str, ...]:
        return ("dense", "attention", "per_sequence", *(("moe",) if self.num_experts else ()),
                *(("skew_fit",) if self.skew_alpha_default is not None else ()))


RTX4090 = LLMServingSimProfile("RTX4090", "NVIDIA GeForce RTX 4090")
# alpha_default per model and TP from the RTX PRO 6000 meta.yaml files (the RTX 4090 bundle
# has no skew fit in its meta, so LLMServingSim applies none there, and neither do we).
RTXPRO6000_SKEW_ALPHA_DEFAULT = {("Llama-3.1-8B", 1): 0.0543, ("Llama-3.1-8B", 2): 0.0654,
                                 ("Qwen3-32B", 1): 0.057, ("Qwen3-32B", 2): 0.0649,
                                 ("Qwen3-30B-A3B", 1): 0.0645, ("Qwen3-30B-A3B", 2): 0.0748}
RTXPRO6000 = LLMServingSimProfile("RTXPRO6000", "NVIDIA RTX PRO 6000 Blackwell Server Edition",
                                  skew_alpha_default=RTXPRO6000_SKEW_ALPHA_DEFAULT["Llama-3.1-8B", 1])
RTXPRO6000_LLAMA_TP2 = LLMServingSimProfile(RTXPRO6000.hardware, RTXPRO6000.gpu, tp=2,
                                            skew_alpha_default=RTXPRO6000_SKEW_ALPHA_DEFAULT["Llama-3.1-8B", 2])
RTXPRO6000_QWEN3_32B = {
    tp: LLMServingSimProfile(RTXPRO6000.hardware, RTXPRO6000.gpu, num_layers=64, model="Qwen3-32B", tp=tp,
                             dense_per_layer=QWEN3_DENSE_PER_LAYER, hidden_size=5120,
                             skew_alpha_default=RTXPRO6000_SKEW_ALPHA_DEFAULT["Qwen3-32B", tp])
    for tp in (1, 2)}
RTXPRO6000_QWEN3_30B_A3B = {
    tp: LLMServingSimProfile(RTXPRO6000.hardware, RTXPRO6000.gpu, num_layers=48, model="Qwen3-30B-A3B", tp=tp,
                             dense_per_layer=QWEN3_ATTN_PER_LAYER, hidden_size=2048, num_experts=128,
                             experts_per_token=8,
                             skew_alpha_default=RTXPRO6000_SKEW_ALPHA_DEFAULT["Qwen3-30B-A3B", tp])
    for tp in (1, 2)}
LLMSERVINGSIM_PROFILES = {p.hardware: p for p in (RTX4090, RTXPRO6000)}
# Every shipped LLMServingSim profile, by preset name.
LLMSERVINGSIM_PRESETS = {
    "llama3.1-8b-rtx4090": RTX4090,
    "llama3.1-8b-rtxpro6000": RTXPRO6000,
    "llama3.1-8b-rtxpro6000-tp2": RTXPRO6000_LLAMA_TP2,
    "qwen3-32b-rtxpro6000": RTXPRO6000_QWEN3_32B[1],
    "qwen3-32b-rtxpro6000-tp2": RTXPRO6000_QWEN3_32B[2],
    "qwen3-30b-a3b-rtxpro6000": RTXPRO6000_QWEN3_30B_A3B[1],
    "qwen3-30b-a3b-rtxpro6000-tp2": RTXPRO6000_QWEN3_30B_A3B[2],
}


def expected_activated_experts(tokens: float, num_experts: int, top_k: int) -> float:
    """Distinct experts a batch of `tokens` tokens activates under uniform top-k routing:
    E (1 - (1 - k/E)^T), at least k (one token) and at most E."""
    t = max(1.0, float(tokens))
    return min(float(num_experts), max(float(top_k), num_experts * (1.0 - (1.0 - top_k / num_experts) ** t)))


# ---------------------------------------------------------------- Vidur Llama-3-8B table

LLAMA3_8B = profiles.ModelSpec("Meta-Llama-3-8B", num_layers=32, hidden_size=4096, num_kv_heads=8,
                               head_dim=128, vocab_size=128256)
LLAMA3_8B_TP1 = profiles.LinearOpsTable("llama3-8b-tp1", LLAMA3_8B, "Meta-Llama-3-8B", 1, ("a100",),
                                        DATA_DIR / "vidur_llama3_8b_tp1_linear_ops.csv")


def write_tables(profiles_dir: Path | str, out_dir: Path | str | None = None) -> list[Path]:
    """Regenerate the shipped tables (into `out_dir`, default `DATA_DIR`) from `profiles_dir`
    (holding `llmservingsim/` and `vidur/`, copies of the upstream files): the LLMServingSim
    tables (dense, attention, per-sequence, MoE, skew fit) copied byte for byte, the Vidur
    Llama-3-8B operators summed per layer by
    `profiles.write_linear_table`. Returns the paths written."""
    profiles_dir = Path(profiles_dir)
    out = DATA_DIR if out_dir is None else Path(out_dir)
    src_dir = profiles_dir / "llmservingsim"
    written = []
    for prof in LLMSERVINGSIM_PRESETS.values():
        for kind in ("dense", "per_sequence", *(k for k in prof.kinds if k in ("moe", "skew_fit"))):
            dest = out / prof.path(kind).name
            shutil.copyfile(prof.source(src_dir, kind), dest)
            if dest not in written:
                written.append(dest)
        dest = out / prof.path("attention").name
        shutil.copyfile(prof.source(src_dir, "attention"), dest)  # both sweeps, every row
        written.append(dest)
    dest = out / LLAMA3_8B_TP1.path.name
    profiles.write_linear_table(profiles_dir / "vidur", dest, table=LLAMA3_8B_TP1)
    written.append(dest)
    return written


# ---------------------------------------------------------------- interpolation

# A bracket is (lo, hi, t): value = v[lo] + t * (v[hi] - v[lo]). t = 0 exactly at a grid
# point and below the first one (clamp); above the last point, lo is the last point and hi
# the top-octave partner, so t < 0 extrapolates along the secant.


def _partner(xs: Sequence[float]) -> int:
    """Index of the largest grid point <= x_max / 2 (at most n - 2): the secant partner."""
    n = len(xs)
    if n < 2:
        return 0
    return max(0, min(n - 2, bisect_right(xs, xs[-1] / 2) - 1))


@dataclass(frozen=True)
class _Axis:
    xs: tuple[float, ...]
    arr: np.ndarray
    partner: int

    @classmethod
    def of(cls, values: Sequence[float]) -> _Axis:
        xs = tuple(float(v) for v in values)
        if len(xs) == 0 or any(b <= a for a, b in itertools.pairwise(xs)):
            raise ValueError(f"grid axis must be non-empty and strictly increasing, got {xs[:5]}...")
        return cls(xs, np.asarray(xs, dtype=np.float64), _partner(xs))

    def bracket(self, q: float) -> tuple[int, int, float]:
        xs = self.xs
        n = len(xs)
        i = bisect_right(xs, q) - 1
        if i < 0 or n == 1:
            return 0, 0, 0.0
        if i >= n - 1:
            p = self.partner
            return n - 1, p, (q - xs[n - 1]) / (xs[p] - xs[n - 1])
        return i, i + 1, (q - xs[i]) / (xs[i + 1] - xs[i])

    def bracket_many(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`bracket` for an array of queries, with the same floating-point operations."""
        xs = self.arr
        n = len(xs)
        i = np.searchsorted(xs, q, side="right") - 1
        below = i < 0
        top = i >= n - 1
        lo = np.where(below, 0, np.minimum(i, n - 1))
        hi = np.where(below, 0, np.where(top, self.partner, np.minimum(lo + 1, n - 1)))
        same = (lo == hi) | (n == 1)
        num = np.where(same, 0.0, q - xs[lo])
        den = np.where(same, 1.0, xs[hi] - xs[lo])
        return lo, hi, num / den


def _lerp1(values: Sequence[float], br: tuple[int, int, float]) -> float:
    lo, hi, t = br
    a = values[lo]
    if lo == hi:
        return a
    return a + t * (values[hi] - a)


# ---------------------------------------------------------------- table sets


class _TableSet:
    """What a `TableCost` delegates to; all times in seconds."""

    description: str

    def step_time(self, shape: BatchShape) -> float:
        raise NotImplementedError

    def decode_times(self, num_seqs: int, kv: np.ndarray, max_kv: np.ndarray | None = None,
                     min_kv: np.ndarray | None = None) -> np.ndarray:
        """Pure-decode steps of `num_seqs` sequences holding `kv` (array) KV tokens; `max_kv` /
        `min_kv`: the longest / shortest decode's cached tokens per step, if known."""
        raise NotImplementedError


def _check_shape(shape: BatchShape) -> None:
    for name in ("num_seqs", "num_prefill_tokens", "num_decode_seqs", "num_kv_tokens", "prefill_attn_tokens"):
        if getattr(shape, name) < 0:
            raise ValueError(f"TableCost: BatchShape.{name} must be >= 0, got {shape}")
    if shape.num_decode_seqs > shape.num_seqs:
        raise ValueError(f"TableCost: num_decode_seqs > num_seqs in {shape}")


def _prefill_coords(shape: BatchShape) -> tuple[float, float]:
    """(kv_prefill, KV held by the prefill requests after the step); see the module docstring."""
    p = shape.num_prefill_tokens
    if p == 0:
        return 0.0, 0.0
    k = max(1, shape.num_seqs - shape.num_decode_seqs)
    m = shape.prefill_attn_tokens / p
    return max(0.0, m - p / (2 * k) - p / 2), max(float(p), k * m)


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _bucket(edges: Sequence[float], value: float) -> int:
    """Index of the (edges[i], edges[i+1]] bucket holding `value` (the first below, the last above)."""
    return min(len(edges) - 2, max(0, bisect_left(edges, value, 1) - 1))


def _bucket_many(edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left") - 1, 0, len(edges) - 2)


@dataclass(frozen=True)
class SkewFit:
    """LLMServingSim's heterogeneous-decode correction for one model and TP: alpha per bucket
    (prefill chunk, decodes, skew rate, longest decode, prefill history), `alpha_default`
    for a bucket the fit has no sample of (module docstring)."""

    alphas: dict[tuple[int, int, int, int, int], float]
    alpha_default: float

    @classmethod
    def load(cls, path: Path, alpha_default: float) -> SkewFit:
        labels = {"n_label": SKEW_N_LABELS, "skew_rate_label": SKEW_RATE_LABELS,
                  "kv_big_label": SKEW_KV_BIG_LABELS, "kp_label": SKEW_KP_LABELS}
        index = {col: {lab: i for i, lab in enumerate(labs)} for col, labs in labels.items()}
        alphas = {}
        for row_number, r in enumerate(_read_rows(path), start=2):
            try:
                key = (int(r["pc"]), *(index[col][r[col]] for col in labels))
                alphas[key] = float(r["alpha"])
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path.name} row {row_number}: bad bucket or alpha ({exc})") from None
        return cls(alphas, float(alpha_default))

    def alpha(self, pc: int, nd: int, rate: float, kv_big: float, kp: float) -> float:
        key = (int(pc), _bucket(SKEW_N_EDGES, nd), _bucket(SKEW_RATE_EDGES, rate),
               _bucket(SKEW_KV_BIG_EDGES, kv_big), _bucket(SKEW_KP_EDGES, int(kp)))
        return self.alphas.get(key, self.alpha_default)

    def alpha_many(self, nd: int, rate: np.ndarray, kv_big: np.ndarray) -> np.ndarray:
        """`alpha` of pure-decode steps (pc = kp = 0) at each (rate, kv_big)."""
        n = _bucket(SKEW_N_EDGES, nd)
        table = np.array([[self.alphas.get((0, n, s, k, 0), self.alpha_default)
                           for k in range(len(SKEW_KV_BIG_LABELS))] for s in range(len(SKEW_RATE_LABELS))])
        return table[_bucket_many(SKEW_RATE_EDGES, rate), _bucket_many(SKEW_KV_BIG_EDGES, kv_big)]


def _fill_between(grid: np.ndarray, axis: int, xs: np.ndarray) -> None:
    """In place: along `axis`, every NaN between two measured values becomes their linear
    interpolation at its coordinate (`xs`); NaNs outside the measured range stay."""
    lines = np.moveaxis(grid, axis, -1)  # a view: writes go to grid
    known = ~np.isnan(lines)
    for index in np.argwhere((known.sum(axis=-1) >= 2) & ~known.all(axis=-1)):
        line = lines[tuple(index)]
        have = known[tuple(index)]
        xk = xs[have]
        hole = ~have & (xs > xk[0]) & (xs < xk[-1])
        line[hole] = np.interp(xs[hole], xk, line[have])


class _LLMServingSimTables(_TableSet):
    def __init__(self, profile: LLMServingSimProfile) -> None:
        self.profile = profile
        self.num_layers = profile.num_layers
        self.description = f"LLMServingSim {profile.hardware} {profile.model} TP {profile.tp}"
        self.dense_tokens, self.dense_us = self._load_dense(profile.path("dense"))
        self.moe_tokens, self.moe_us = (self._load_moe(profile.path("moe")) if profile.num_experts
                                        else (None, None))
        self.allreduce_bytes, self.allreduce_us = (self._load_allreduce(DATA_DIR / ALLREDUCE_FILE)
                                                   if profile.tp > 1 else (None, None))
        # Latency of one all-reduce: the measured time of the smallest profiled message.
        self.allreduce_latency_us = self.allreduce_us[0] if self.allreduce_us is not None else 0.0
        self.skew = (SkewFit.load(profile.path("skew_fit"), profile.skew_alpha_default)
                     if profile.skew_alpha_default is not None else None)
        self.seq_axis, self.seq_us = self._load_per_sequence(profile.path("per_sequence"))
        attention_axes, self.grid = self._load_attention(profile.path("attention"))
        self.grid_list = self.grid.tolist()
        self.axes = tuple(_Axis.of(values) for values in attention_axes)

    # -- loading

    def _load_dense(self, path: Path) -> tuple[_Axis, list[float]]:
        table: dict[str, dict[int, float]] = {}
        for r in _read_rows(path):
            table.setdefault(r["layer"], {})[int(r["tokens"])] = float(r["time_us"])
        per_layer = dict(self.profile.dense_per_layer)
        expected = set(per_layer) | set(DENSE_ONCE)
        if set(table) != expected:
            raise ValueError(f"{path.name}: layers {sorted(table)}, expected {sorted(expected)}")
        tokens = sorted(table["embedding"])
        if any(sorted(rows) != tokens for rows in table.values()):
            raise ValueError(f"{path.name}: operators are profiled at different token counts")
        step_us = [
            self.num_layers * sum(calls * table[op][n] for op, calls in per_layer.items())
            + sum(table[op][n] for op in DENSE_ONCE)
            for n in tokens
        ]
        return _Axis.of(tokens), step_us

    def _load_moe(self, path: Path) -> tuple[_Axis, list[float]]:
        """Per-layer MoE block time (us) against tokens: moe.csv interpolated linearly in
        activated experts at the expected count for that many tokens (uniform top-k routing),
        divided by TP / moe_tp when the shipped table is of a smaller TP (each rank holds
        1/TP of every expert's intermediate dimension, so it reads 1/TP of the weights)."""
        table: dict[int, dict[int, float]] = {}
        for r in _read_rows(path):
            table.setdefault(int(r["tokens"]), {})[int(r["activated_experts"])] = float(r["time_us"])
        prof = self.profile
        scale = prof.moe_tp / prof.tp
        tokens = sorted(table)
        values = []
        for n in tokens:
            xs = sorted(table[n])
            a = expected_activated_experts(n, prof.num_experts, prof.experts_per_token)
            values.append(scale * _lerp1([table[n][x] for x in xs], _Axis.of(xs).bracket(a)))
        return _Axis.of(tokens), values

    def _load_allreduce(self, path: Path) -> tuple[_Axis, list[float]]:
        rows = _read_rows(path)
        return _Axis.of([int(r["bytes"]) for r in rows]), [float(r["time_us"]) for r in rows]

    def _load_per_sequence(self, path: Path) -> tuple[_Axis, list[float]]:
        table: dict[str, dict[int, float]] = {}
        for r in _read_rows(path):
            table.setdefault(r["layer"], {})[int(r["sequences"])] = float(r["time_us"])
        if set(table) != set(PER_SEQUENCE_OPS):
            raise ValueError(f"{path.name}: layers {sorted(table)}, expected {sorted(PER_SEQUENCE_OPS)}")
        seqs = sorted(table["lm_head"])
        if sorted(table["sampler"]) != seqs:
            raise ValueError(f"{path.name}: lm_head and sampler are profiled at different counts")
        return _Axis.of(seqs), [sum(table[op][s] for op in PER_SEQUENCE_OPS) for s in seqs]

    def _load_attention(self, path: Path) -> tuple[list[list[int]], np.ndarray]:
        """Per-layer attention time (us) on the grid of every profiled axis value [pc,
        kv_prefill, n_decode, kv_decode] (the doubling sweep, plus the x1.5 sweep where the
        profile has one), holes filled as the module docstring says; returns (axes, grid)."""
        columns = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode")
        rows = _read_rows(path)
        keys = [tuple(int(r[c]) for c in columns) for r in rows]
        axes = [sorted({k[a] for k in keys}) for a in range(4)]
        for a, (name, doubling) in enumerate(zip(columns, (PREFILL_CHUNKS, KV_POINTS, N_DECODES, KV_POINTS))):
            if not set(doubling) <= set(axes[a]) or axes[a][-1] != doubling[-1]:
                raise ValueError(f"{path.name}: {name} must cover the doubling grid {doubling[0]}..{doubling[-1]}")
        index = [{v: i for i, v in enumerate(axis)} for axis in axes]
        grid = np.full([len(a) for a in axes], np.nan)
        for key, r in zip(keys, rows):
            grid[tuple(ix[v] for ix, v in zip(index, key))] = float(r["time_us"])
        pc0, nd0 = 0, 0
        # Decodes only: independent of kv_prefill (profiled at kv_prefill = 0).
        grid[pc0, :, 1:, :] = grid[pc0, 0, 1:, :][None, :, :]
        grid[pc0, :, nd0, :] = 0.0  # an empty step: no attention
        # Prefill only: independent of kv_decode (profiled at kv_decode = 0).
        grid[1:, :, nd0, :] = grid[1:, :, nd0, 0][:, :, None]
        # Cells off both sweeps (e.g. a x1.5 chunk at a doubling history): linear between the
        # nearest measured neighbours along kv_decode, else kv_prefill, else the chunk. On a
        # doubling-only profile this fills nothing; off the x1.5 sweep it gives what
        # multilinear interpolation on the doubling grid gives.
        for _ in range(2):
            for axis in (3, 1, 0):
                _fill_between(grid, axis, np.asarray(axes[axis], dtype=np.float64))
        # A decode with < 16 cached tokens costs like 16 (kv_decode = 0 is not profiled).
        kd16 = index[3][16]
        grid[:, :, 1:, 0] = grid[:, :, 1:, kd16]
        # 257 sequences exceed max_num_seqs: n_decode = 256 beside a chunk is extrapolated
        # linearly from 64 and 128: v(256) = v(128) + 2 * (v(128) - v(64)).
        n64, n128, n256 = (index[2][v] for v in (64, 128, 256))
        grid[1:, :, n256, :] = 3.0 * grid[1:, :, n128, :] - 2.0 * grid[1:, :, n64, :]
        if np.isnan(grid).any():
            missing = np.argwhere(np.isnan(grid))[0]
            raise ValueError(f"{path.name}: the attention grid has a hole that cannot be filled, "
                             f"e.g. at {[axes[a][i] for a, i in enumerate(missing)]}")
        return axes, grid

    # -- evaluation (microseconds)

    def dense(self, tokens: int) -> float:
        """Token-wise part of a step (us): dense operators, MoE blocks and TP all-reduces."""
        n = max(1, tokens)
        us = _lerp1(self.dense_us, self.dense_tokens.bracket(n))
        if self.moe_us is not None:
            us += self.num_layers * _lerp1(self.moe_us, self.moe_tokens.bracket(n))
        if self.allreduce_us is not None:
            # Two all-reduces of the hidden state per decoder layer (after o_proj and after
            # the MLP / MoE block), bf16.
            us += 2 * self.num_layers * self.allreduce(n * self.profile.hidden_size * 2)
        return us

    def allreduce(self, nbytes: float) -> float:
        """One 2-rank all-reduce of `nbytes` (us): the measured latency of the smallest message
        plus the bytes over the serving link's bandwidth (a 2-rank ring sends each rank half
        the message twice: reduce-scatter then all-gather)."""
        return self.allreduce_latency_us + nbytes / ALLREDUCE_LINK_BYTES_PER_US

    def per_sequence(self, num_seqs: int) -> float:
        return _lerp1(self.seq_us, self.seq_axis.bracket(max(1, num_seqs)))

    def _attention_point(self, pc: float, kp: float, nd: float, kd: float) -> float:
        """Per-layer attention (us) at one point, pc <= 2048, multilinear over the grid."""
        brs = (self.axes[0].bracket(pc), self.axes[1].bracket(kp), self.axes[2].bracket(nd),
               self.axes[3].bracket(kd))
        g = self.grid_list

        def level(axis: int, node) -> float:
            lo, hi, t = brs[axis]
            if axis == 3:
                return _lerp1(node, brs[3])
            a = level(axis + 1, node[lo])
            if lo == hi:
                return a
            return a + t * (level(axis + 1, node[hi]) - a)

        return level(0, g)

    def attention(self, pc: int, kp: float, nd: int, kd: float) -> float:
        """Per-layer attention (us); chunks beyond the grid are split into 2048-token pieces."""
        if pc == 0 and nd == 0:
            return 0.0
        if pc <= MAX_PREFILL_CHUNK:
            return self._attention_point(max(pc, PREFILL_CHUNKS[1]) if pc else 0, kp, nd, kd)
        total = 0.0
        for start in range(0, pc, MAX_PREFILL_CHUNK):
            piece = min(MAX_PREFILL_CHUNK, pc - start)
            total += self._attention_point(max(piece, PREFILL_CHUNKS[1]), kp + start,
                                           nd if start == 0 else 0, kd)
        return total

    def coords(self, shape: BatchShape) -> tuple[int, float, int, float]:
        """(prefill_chunk, kv_prefill, n_decode, kv_decode) of `shape` on the attention grid."""
        kp, prefill_kv = _prefill_coords(shape)
        nd = shape.num_decode_seqs
        kd = max(0.0, (shape.num_kv_tokens - prefill_kv) / nd - 1.0) if nd else 0.0
        return shape.num_prefill_tokens, kp, nd, kd

    def skewed_attention(self, shape: BatchShape, pc: int, kp: float, nd: int, kd: float, attn: float) -> float:
        """Per-layer attention (us) with LLMServingSim's skew correction (module docstring):
        attn + alpha * (attention at the longest decode - attn) when the decodes' lengths differ."""
        kmax, kmin = shape.max_decode_kv_len, shape.min_decode_kv_len
        if self.skew is None or nd <= 1 or kmax <= kd:
            return attn
        gap = kmax - kmin
        rate = min(1.0, max(0.0, (kd - kmin) / gap)) if gap > 0 else 0.5
        alpha = self.skew.alpha(pc, nd, rate, kmax, kp)
        if alpha == 0.0:
            return attn
        at_max = self.attention(pc, kp, nd, kmax)
        if at_max <= attn:
            return attn
        return attn + alpha * (at_max - attn)

    def step_time(self, shape: BatchShape) -> float:
        _check_shape(shape)
        pc, kp, nd, kd = self.coords(shape)
        dense = self.dense(shape.num_prefill_tokens + nd)
        attn = self.skewed_attention(shape, pc, kp, nd, kd, self.attention(pc, kp, nd, kd))
        total_us = dense + self.num_layers * attn + self.per_sequence(shape.num_seqs)
        return total_us * 1e-6

    def _decode_attention(self, num_seqs: int, kd: np.ndarray) -> np.ndarray:
        """Per-layer attention (us) of pure-decode steps of `num_seqs` at mean cached lengths `kd`."""
        nd_lo, nd_hi, nd_t = self.axes[2].bracket(num_seqs)
        lo, hi, t = self.axes[3].bracket_many(kd)
        row = self.grid[0, 0]  # pc = 0, kv_prefill = 0

        def at(n: int) -> np.ndarray:
            a = row[n][lo]
            return a + t * (row[n][hi] - a)

        attn = at(nd_lo)
        if nd_lo != nd_hi:
            attn = attn + nd_t * (at(nd_hi) - attn)
        return attn

    def decode_times(self, num_seqs: int, kv: np.ndarray, max_kv: np.ndarray | None = None,
                     min_kv: np.ndarray | None = None) -> np.ndarray:
        # Mirrors step_time for BatchShape(s, 0, s, kv, 0, max_kv, min_kv) operation for operation.
        dense = self.dense(num_seqs)
        per_seq = self.per_sequence(num_seqs)
        if num_seqs == 0:
            attn = np.zeros(len(kv))
        else:
            kd = np.maximum(0.0, (kv - 0.0) / num_seqs - 1.0)
            attn = self._decode_attention(num_seqs, kd)
            if max_kv is not None and min_kv is not None and self.skew is not None and num_seqs > 1:
                attn = self._skewed_decode_attention(num_seqs, kd, attn, max_kv, min_kv)
        return (dense + self.num_layers * attn + per_seq) * 1e-6

    def _skewed_decode_attention(self, nd: int, kd: np.ndarray, attn: np.ndarray, kmax: np.ndarray,
                                 kmin: np.ndarray) -> np.ndarray:
        """`skewed_attention` for a run of pure-decode steps (pc = kp = 0), elementwise."""
        kmax = kmax.astype(np.float64)
        gap = kmax - kmin
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(gap > 0, np.minimum(1.0, np.maximum(0.0, (kd - kmin) / gap)), 0.5)
        alpha = self.skew.alpha_many(nd, rate, kmax)
        at_max = self._decode_attention(nd, kmax)
        apply = (kmax > kd) & (alpha != 0.0) & (at_max > attn)
        return np.where(apply, attn + alpha * (at_max - attn), attn)


class _VidurRooflineTables(_TableSet):
    """Vidur's token-linear operators (interpolated) + the `profiles` roofline for the rest."""

    def __init__(self, table: profiles.LinearOpsTable, device: str) -> None:
        self.table, self.device = table, device
        model, gpu = table.model, profiles.GPUS[device]
        self.description = f"Vidur {device} {table.vidur_model} + roofline"
        num_tokens, seconds = profiles.load_linear_table(device, table=table)
        self.linear_axis = _Axis.of(num_tokens.tolist())
        self.linear_s = [float(s) for s in seconds]
        # The roofline terms of `profiles.derive`, for one GPU (TP 1): lm_head read and the
        # attention-kernel floor per step, KV read/write per token, per-sequence overhead,
        # causal prefill attention at 50 % of peak.
        bandwidth = gpu.hbm_bytes_per_s * profiles.BANDWIDTH_EFFICIENCY
        self.d0_s = model.lm_head_bytes_per_gpu(table.tp) / bandwidth + model.num_layers * profiles.ATTN_KERNEL_FLOOR_S
        self.d1_s_per_token = model.kv_bytes_per_token_per_gpu(table.tp) / bandwidth
        self.d3_s_per_seq = gpu.per_seq_s * model.num_layers / profiles.PER_SEQ_REFERENCE_LAYERS
        self.d4_s_per_attn_token = (profiles.CAUSAL_FRACTION * model.attn_flops_per_pair_per_gpu(table.tp)
                                    / (gpu.peak_flops * profiles.FLOPS_EFFICIENCY))

    def linear(self, tokens: int) -> float:
        return _lerp1(self.linear_s, self.linear_axis.bracket(max(1, tokens)))

    def step_time(self, shape: BatchShape) -> float:
        _check_shape(shape)
        linear = self.linear(shape.num_prefill_tokens + shape.num_decode_seqs)
        return (linear + self.d0_s + self.d1_s_per_token * shape.num_kv_tokens + self.d3_s_per_seq * shape.num_seqs
                + self.d4_s_per_attn_token * shape.prefill_attn_tokens)

    def decode_times(self, num_seqs: int, kv: np.ndarray, max_kv: np.ndarray | None = None,
                     min_kv: np.ndarray | None = None) -> np.ndarray:
        linear = self.linear(num_seqs)
        return (linear + self.d0_s + self.d1_s_per_token * kv + self.d3_s_per_seq * num_seqs
                + self.d4_s_per_attn_token * 0)


# name -> (factory, description); the preset names of COST_MODELS.
TABLE_SETS: dict[str, tuple[Callable[[], _TableSet], str]] = {
    "llama3.1-8b-rtx4090": (
        lambda: _LLMServingSimTables(RTX4090),
        ("TableCost for Llama-3.1-8B bf16 on one RTX 4090 (vLLM 0.19, TP 1): LLMServingSim's profiled "
         "dense ops (x32 layers), 4-D attention grid and lm_head/sampler tables, interpolated linearly"),
    ),
    "llama3.1-8b-rtxpro6000": (
        lambda: _LLMServingSimTables(RTXPRO6000),
        ("TableCost for Llama-3.1-8B bf16 on one RTX PRO 6000 Blackwell (vLLM 0.19, TP 1): LLMServingSim's "
         "profiled dense ops (x32 layers), 4-D attention grid and lm_head/sampler tables, interpolated linearly; "
         "decode attention skew-corrected for mixed lengths (LLMServingSim's skew fit)"),
    ),
    "llama3.1-8b-rtxpro6000-tp2": (
        lambda: _LLMServingSimTables(RTXPRO6000_LLAMA_TP2),
        ("TableCost for Llama-3.1-8B bf16 on two RTX PRO 6000 Blackwell (vLLM 0.19, TP 2): LLMServingSim's "
         "per-rank profiles (x32 layers) + 2 all-reduces per layer (measured 12.7 us latency + bytes at the "
         "16 GB/s PCIe serving link); skew-corrected decode attention"),
    ),
    "qwen3-32b-rtxpro6000": (
        lambda: _LLMServingSimTables(RTXPRO6000_QWEN3_32B[1]),
        ("TableCost for Qwen3-32B bf16 (dense) on one RTX PRO 6000 Blackwell (vLLM 0.19, TP 1): "
         "LLMServingSim's profiled dense ops (x64 layers), 4-D attention grid, lm_head/sampler; "
         "skew-corrected decode attention"),
    ),
    "qwen3-32b-rtxpro6000-tp2": (
        lambda: _LLMServingSimTables(RTXPRO6000_QWEN3_32B[2]),
        ("TableCost for Qwen3-32B bf16 (dense) on two RTX PRO 6000 Blackwell (vLLM 0.19, TP 2): "
         "LLMServingSim's per-rank profiles (x64 layers) + 2 all-reduces per layer (measured 12.7 us latency + "
         "bytes at the 16 GB/s PCIe serving link); skew-corrected decode attention"),
    ),
    "qwen3-30b-a3b-rtxpro6000": (
        lambda: _LLMServingSimTables(RTXPRO6000_QWEN3_30B_A3B[1]),
        ("TableCost for Qwen3-30B-A3B bf16 (MoE, 128 experts, top 8) on one RTX PRO 6000 Blackwell (vLLM 0.19, "
         "TP 1): LLMServingSim's attention-side ops and fused-MoE table (x48 layers), attention grid, lm_head; "
         "skew-corrected decode attention"),
    ),
    "qwen3-30b-a3b-rtxpro6000-tp2": (
        lambda: _LLMServingSimTables(RTXPRO6000_QWEN3_30B_A3B[2]),
        ("TableCost for Qwen3-30B-A3B bf16 (MoE) on two RTX PRO 6000 Blackwell (vLLM 0.19, TP 2): per-rank "
         "profiles (x48 layers), the TP 1 fused-MoE table halved, 2 all-reduces per layer (measured latency + "
         "bytes at 16 GB/s); skew-corrected decode attention"),
    ),
    "llama3-8b-a100": (
        lambda: _VidurRooflineTables(LLAMA3_8B_TP1, "a100"),
        ("TableCost for Meta-Llama-3-8B fp16 on one A100-80GB (TP 1): Vidur-profiled linear ops "
         "(interpolated) + roofline attention and lm_head (70% of 2.0 TB/s, 50% of 312 TFLOP/s)"),
    ),
}


# Presets that describe a vLLM deployment (GPU, model, TP): their default KV capacity is
# derived as vLLM derives it (`kvsched.sim.capacity`). The older presets keep the CLI default.
DEPLOYMENTS: dict[str, tuple[capacity.ModelConfig, capacity.GPU, int]] = {
    "llama3.1-8b-rtxpro6000-tp2": (capacity.LLAMA31_8B, capacity.RTXPRO6000_GPU, 2),
    "qwen3-32b-rtxpro6000": (capacity.QWEN3_32B, capacity.RTXPRO6000_GPU, 1),
    "qwen3-32b-rtxpro6000-tp2": (capacity.QWEN3_32B, capacity.RTXPRO6000_GPU, 2),
    "qwen3-30b-a3b-rtxpro6000": (capacity.QWEN3_30B_A3B, capacity.RTXPRO6000_GPU, 1),
    "qwen3-30b-a3b-rtxpro6000-tp2": (capacity.QWEN3_30B_A3B, capacity.RTXPRO6000_GPU, 2),
}


def default_capacity(name: str, block_size: int = 16) -> int | None:
    """KV capacity (tokens) vLLM would allocate for preset `name` at its defaults
    (gpu_memory_utilization 0.9), or None for a preset that describes no deployment."""
    if name not in DEPLOYMENTS:
        return None
    model, gpu, tp = DEPLOYMENTS[name]
    return capacity.derive_kv_capacity(model, gpu, tp, block_size=block_size).tokens


@functools.cache
def load_table_set(name: str) -> _TableSet:
    """The loaded tables of preset `name` (cached: read once per process)."""
    if name not in TABLE_SETS:
        raise ValueError(f"TableCost.tables must be one of {sorted(TABLE_SETS)}, got {name!r}")
    return TABLE_SETS[name][0]()


@dataclass(frozen=True)
class TableCost(CostModel):
    """Step time looked up in profiled operator tables (`tables`: one of `TABLE_SETS`).

    See the module docstring for what is summed and how a `BatchShape` maps to the tables.
    """

    kind: ClassVar[str] = "table"
    tables: str

    def __post_init__(self) -> None:
        if not isinstance(self.tables, str) or self.tables not in TABLE_SETS:
            raise ValueError(f"TableCost.tables must be one of {sorted(TABLE_SETS)}, got {self.tables!r}")
        if not self.step_time(_ONE_DECODE) > 0:
            raise ValueError(f"TableCost({self.tables!r}): a one-token decode step must take > 0 s")

    @property
    def impl(self) -> _TableSet:
        return load_table_set(self.tables)

    def step_time(self, shape: BatchShape) -> float:
        return float(self.impl.step_time(shape))

    def decode_times(self, num_seqs: int, num_kv_tokens: int, num_steps: int) -> np.ndarray:
        kv = _decode_kv(num_seqs, num_kv_tokens, num_steps)
        return np.asarray(self.impl.decode_times(num_seqs, kv), dtype=np.float64)

    def decode_times_for(self, shape: BatchShape, num_steps: int) -> np.ndarray:
        if shape.max_decode_kv_len <= 0:
            return self.decode_times(shape.num_seqs, shape.num_kv_tokens, num_steps)
        kv = _decode_kv(shape.num_seqs, shape.num_kv_tokens, num_steps)
        steps = np.arange(num_steps, dtype=np.int64)
        return np.asarray(self.impl.decode_times(shape.num_seqs, kv, shape.max_decode_kv_len + steps,
                                                 shape.min_decode_kv_len + steps), dtype=np.float64)


# Register the kind so that
# `cost.from_config(TableCost(...).config())` works like for the models of cost.py.
cost.register_kind(TableCost)


def _register(name: str) -> None:
    description = TABLE_SETS[name][1]

    @COST_MODELS.register(name, description)
    def factory() -> TableCost:
        return TableCost(name)


for _name in TABLE_SETS:
    _register(_name)


def example_step_times(name: str) -> dict[str, float]:
    """Step times (ms) of preset `name` at the shapes of the docs table (decode batches 1, 32
    and 128 at 1k KV tokens each; fresh prefills of 512 and 2048 tokens)."""
    model = COST_MODELS.create(name)
    shapes = {
        "decode 1 x 1k": BatchShape(1, 0, 1, 1024),
        "decode 32 x 1k": BatchShape(32, 0, 32, 32 * 1024),
        "decode 128 x 1k": BatchShape(128, 0, 128, 128 * 1024),
        "prefill 512": BatchShape(1, 512, 0, 512, 512 * 512),
        "prefill 2048": BatchShape(1, 2048, 0, 2048, 2048 * 2048),
    }
    return {label: round(model.step_time(s) * 1e3, 3) for label, s in shapes.items()}


__all__ = ["DEPLOYMENTS", "LLAMA3_8B", "LLAMA3_8B_TP1", "TABLE_SETS", "TableCost", "default_capacity",
           "example_step_times", "load_table_set", "write_tables"]
