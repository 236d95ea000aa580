"""KV-cache capacity derived the way vLLM derives it: from GPU, model and tensor parallelism.

vLLM (V1 worker, `determine_available_memory`) sizes the KV cache as

    KV bytes per GPU = total GPU memory x gpu_memory_utilization
                       - model weights - peak activation of a profiling forward pass
                       - non-torch memory (CUDA context, cuBLAS / NCCL workspaces)

and divides by the KV bytes one token needs on that GPU,
2 (K and V) x layers x KV heads per GPU x head_dim x dtype bytes, rounded down to whole
blocks. `derive_kv_capacity` follows that recipe; the parts vLLM *measures* (activation peak,
non-torch memory) are estimated:

- weights: parameter count from the model config (embedding, lm_head unless tied, per layer
  q/k/v/o projections, the MLP or every expert plus the router, RMSNorm weights) x dtype
  bytes / TP (vLLM shards embedding, lm_head, projections and experts over TP ranks);
- activation peak: vLLM's profiling pass runs `max_num_batched_tokens` dummy tokens through
  the model, then the sampler on `max_num_seqs` rows. Estimate: per token the residual
  stream, the q/k/v output, the gate_up output and the activation output live at once
  (H + (q + 2 kv)/TP + 3 I/TP elements; for MoE, I -> top_k x moe_intermediate plus
  top_k x H for the fused-MoE output cache), in dtype bytes, plus max_num_seqs x vocab
  float32 logits twice (logits and probabilities);
- non-torch memory: 1 GiB (an assumption; vLLM measures it).

Model configs below are copied from the Hugging Face configs that LLMServingSim ships
(casys-kaist/LLMServingSim @ configs/model/<org>/<model>.json, MIT). The RTX PRO 6000's
memory is what torch reports for it (94.97 GiB, `memory_total_gib` of LLMServingSim's
profiler/perf/RTXPRO6000/hardware.yaml; the card is sold as 96 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
DEFAULT_NON_TORCH_BYTES = 1 * GIB
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048  # the LLMServingSim profiles and ground-truth runs
DEFAULT_MAX_NUM_SEQS = 256  # vLLM's default


@dataclass(frozen=True)
class ModelConfig:
    """The fields of a Hugging Face config that memory sizing needs."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    dtype_bytes: int = 2  # bf16

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def num_params(self) -> int:
        h, hd = self.hidden_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attn = h * (q + 2 * kv) + q * h
        if self.is_moe:
            mlp = self.num_experts * 3 * h * self.moe_intermediate_size + h * self.num_experts
        else:
            mlp = 3 * h * self.intermediate_size
        norms = 2 * h + (2 * hd if self.qk_norm else 0)
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_layers * (attn + mlp + norms) + h

    def weight_bytes_per_gpu(self, tp: int = 1) -> int:
        return self.num_params() * self.dtype_bytes // tp

    def kv_heads_per_gpu(self, tp: int = 1) -> int:
        return max(1, self.num_kv_heads // tp)  # vLLM replicates KV heads when tp > kv heads

    def kv_bytes_per_token(self, tp: int = 1) -> int:
        """KV bytes one token holds on one GPU: 2 x layers x KV heads per GPU x head_dim x dtype."""
        return 2 * self.num_layers * self.kv_heads_per_gpu(tp) * self.head_dim * self.dtype_bytes

    def activation_peak_bytes(self, tp: int = 1, max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                              max_num_seqs: int = DEFAULT_MAX_NUM_SEQS) -> int:
        """Estimated peak activation of vLLM's profiling pass (see the module docstring)."""
        h = self.hidden_size
        qkv = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim // tp
        if self.is_moe:
            mlp = self.experts_per_token * (3 * self.moe_intermediate_size // tp + h)
        else:
            mlp = 3 * self.intermediate_size // tp
        per_token = (h + qkv + mlp) * self.dtype_bytes
        logits = 2 * max_num_seqs * self.vocab_size * 4
        return max_num_batched_tokens * per_token + logits


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int


RTXPRO6000_GPU = GPU("NVIDIA RTX PRO 6000 Blackwell Server Edition", int(94.97 * GIB))

LLAMA31_8B = ModelConfig("Llama-3.1-8B", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                         head_dim=128, intermediate_size=14336, vocab_size=128256)
QWEN3_32B = ModelConfig("Qwen3-32B", num_layers=64, hidden_size=5120, num_heads=64, num_kv_heads=8,
                        head_dim=128, intermediate_size=25600, vocab_size=151936, qk_norm=True)
QWEN3_30B_A3B = ModelConfig("Qwen3-30B-A3B-Instruct-2507", num_layers=48, hidden_size=2048, num_heads=32,
                            num_kv_heads=4, head_dim=128, intermediate_size=6144, vocab_size=151936,
                            num_experts=128, experts_per_token=8, moe_intermediate_size=768, qk_norm=True)


@dataclass(frozen=True)
class KVCapacity:
    """The terms of one derivation (bytes per GPU) and its result in tokens."""

    tokens: int
    kv_bytes: int
    requested_bytes: int
    weight_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    kv_bytes_per_token: int


def derive_kv_capacity(model: ModelConfig, gpu: GPU, tp: int = 1, *,
                       gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
                       block_size: int = 16, max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                       max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                       non_torch_bytes: int = DEFAULT_NON_TORCH_BYTES) -> KVCapacity:
    """KV capacity in tokens of a TP group (every rank holds its heads' share of each token,
    so the group holds as many tokens as one rank), rounded down to whole blocks."""
    if tp < 1 or not 0 < gpu_memory_utilization <= 1 or block_size < 1:
        raise ValueError(f"derive_kv_capacity: bad tp={tp}, utilization={gpu_memory_utilization}, "
                         f"block_size={block_size}")
    requested = int(gpu.memory_bytes * gpu_memory_utilization)
    weights = model.weight_bytes_per_gpu(tp)
    act = model.activation_peak_bytes(tp, max_num_batched_tokens, max_num_seqs)
    kv_bytes = requested - weights - act - non_torch_bytes
    per_token = model.kv_bytes_per_token(tp)
    blocks = max(0, kv_bytes) // (per_token * block_size)
    if blocks == 0:
        raise ValueError(f"{model.name} at TP {tp} does not fit {gpu.name} at utilization "
                         f"{gpu_memory_utilization}: {kv_bytes / GIB:.2f} GiB left for the KV cache")
    return KVCapacity(int(blocks * block_size), kv_bytes, requested, weights, act, non_torch_bytes, per_token)


__all__ = [
    "GPU",
    "LLAMA31_8B",
    "QWEN3_30B_A3B",
    "QWEN3_32B",
    "RTXPRO6000_GPU",
    "KVCapacity",
    "ModelConfig",
    "derive_kv_capacity",
]
