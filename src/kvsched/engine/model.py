"""A Llama-architecture decoder that reads and writes a paged KV cache.

This is the real-model half of the engine: the loop decides which requests run in a
step and how many new tokens each computes; `Llama.forward_step` computes exactly
that, for all of them at once, against K/V stored in fixed-size blocks whose ids
come from kvsched's `KVCache(track_block_ids=True)`. The model never allocates
blocks: memory policy belongs to the scheduler, not to the model.

One file, nanoGPT style: RMSNorm, rotary embeddings (HF "rotate_half" layout),
grouped-query attention and a SwiGLU MLP. `forward_dense` is a cache-free
reference used by the tests to check the paged path token for token.

Shapes: T = new tokens in the step (all sequences flattened), H = query heads,
H_kv = KV heads, D = head_dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary pairs), got {self.head_dim}")


@dataclass(slots=True)
class SeqInput:
    """One sequence's share of an engine step.

    token_ids:   the new tokens computed this step (a prefill chunk, or 1 for a decode).
    start_pos:   tokens of this sequence already in the cache = position of token_ids[0].
    block_table: block ids covering positions 0 .. start_pos + len(token_ids) - 1,
                 in order (block_table[p // block_size] holds position p).
    """

    token_ids: Sequence[int] | torch.Tensor
    start_pos: int
    block_table: Sequence[int]


class PagedKVCache:
    """K and V for every layer, stored in `num_blocks` blocks of `block_size` token slots.

    `k` and `v` are shaped [num_layers, num_blocks, block_size, num_kv_heads, head_dim].
    The cache is only storage; which block belongs to which request is decided outside
    (kvsched.kvcache.KVCache) and handed in through `SeqInput.block_table`.
    """

    def __init__(
        self,
        config: LlamaConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.config = config
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (config.num_layers, num_blocks, block_size, config.num_kv_heads, config.head_dim)
        # Zeros rather than empty: a bug that reads an unwritten slot then gives finite,
        # reproducible garbage instead of NaNs that differ run to run.
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    @staticmethod
    def bytes_per_token(config: LlamaConfig, dtype: torch.dtype = torch.float32) -> int:
        """KV bytes one cached token costs (all layers, K and V): sizes capacity_tokens from memory."""
        element_size = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_layers * config.num_kv_heads * config.head_dim * element_size


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 as HF Llama does, so half-precision runs do not lose the mean square.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sin tables [T, D] for absolute `positions` [T] (HF layout: each half repeats the frequencies)."""
    # Angles in float32 even for half-precision models: positions times frequencies loses
    # too many digits in bf16 at long contexts.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half_len = x.shape[-1] // 2
    return torch.cat((-x[..., half_len:], x[..., :half_len]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, heads, D] by the per-token tables cos/sin [T, D]."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start_pos: int) -> torch.Tensor:
    """Attention of q [n, H, D] at positions q_start_pos.. over k, v [m, H_kv, D] at positions 0..m-1.

    Query i may see key j iff j <= q_start_pos + i: causal in absolute positions, which is
    what makes a prefill chunk that starts mid-prompt see everything cached before it.
    Returns [n, H, D].
    """
    num_new_tokens, num_heads, _ = q.shape
    num_ctx_tokens, num_kv_heads, _ = k.shape
    # GQA: query head h reads KV head h // group_size (HF's repeat_kv order).
    group_size = num_heads // num_kv_heads
    if group_size > 1:
        k = k.repeat_interleave(group_size, dim=1)
        v = v.repeat_interleave(group_size, dim=1)
    mask = None
    if num_new_tokens > 1:
        q_pos = torch.arange(q_start_pos, q_start_pos + num_new_tokens, device=q.device)
        k_pos = torch.arange(num_ctx_tokens, device=q.device)
        mask = k_pos[None, :] <= q_pos[:, None]  # [n, m], True = may attend
    # A lone query is the last position, so it sees every key and needs no mask.
    # SDPA's default scale is 1/sqrt(D), Llama's.
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


# attend(layer_idx, q [T, H, D], k [T, H_kv, D], v [T, H_kv, D]) -> [T, H, D]: how a layer
# sees context. The dense reference and the paged step differ only here.
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, layer_idx: int, attend: AttendFn) -> torch.Tensor:
        num_tokens = x.shape[0]
        q = self.q_proj(x).view(num_tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(layer_idx, q, k, v)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, layer_idx: int, attend: AttendFn) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, layer_idx, attend)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    """Decoder-only Llama. Parameter names (see `weights.py` for the GGUF/HF mapping):
    embed_tokens, layers.N.{attn_norm, attn.{q,k,v,o}_proj, mlp_norm, mlp.{gate,up,down}_proj},
    norm, and lm_head unless the output projection is tied to the embeddings."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Tied models have no lm_head at all (rather than a shared parameter), so a
        # state dict has exactly one copy of the embedding matrix.
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def new_kv_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        """A paged cache with this model's shapes, dtype and device."""
        return PagedKVCache(self.config, num_blocks, block_size, dtype=self.dtype, device=self.device)

    # --- shared trunk ----------------------------------------------------------------
    def _hidden(self, token_ids: torch.Tensor, positions: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        """Final-norm hidden states [T, hidden] for flattened tokens at absolute positions."""
        x = self.embed_tokens(token_ids)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer_idx, block in enumerate(self.layers):
            x = block(x, cos, sin, layer_idx, attend)
        return self.norm(x)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        # float32 logits whatever the model dtype: callers argmax/sample them, and a
        # [num_seqs, vocab] upcast costs nothing next to the layers.
        return F.linear(hidden, weight).float()

    def _ids_on_cpu(self, token_ids) -> torch.Tensor:
        """Token ids as a flat CPU LongTensor, range-checked. Checked on the CPU so that a
        CUDA model does not pay a device sync per sequence for the check."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1).cpu()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {ids.min()}..{ids.max()}")
        return ids

    # --- reference: no cache ------------------------------------------------------------
    @torch.inference_mode()
    def forward_dense(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Logits [T, vocab] for one whole sequence, full causal attention, no cache."""
        ids = self._ids_on_cpu(token_ids)
        if ids.numel() == 0:
            raise ValueError("forward_dense needs at least one token")
        positions = torch.arange(ids.numel(), device=self.device)
        hidden = self._hidden(ids.to(self.device), positions, lambda _layer_idx, q, k, v: causal_attention(q, k, v, 0))
        return self._logits(hidden)

    def forward(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        return self.forward_dense(token_ids)

    # --- one engine step over the paged cache -------------------------------------------
    @torch.inference_mode()
    def forward_step(self, seqs: Sequence[SeqInput], kv: PagedKVCache) -> torch.Tensor:
        """Compute every sequence's new tokens in one batched pass; logits [num_seqs, vocab]
        of each sequence's LAST new token.

        Projections and MLPs run once over all new tokens flattened (one matmul per weight
        per layer); attention runs per sequence, because each has its own context length.
        New K/V are written into the cache before attention so a prefill chunk sees itself.
        """
        if not seqs:
            raise ValueError("forward_step needs at least one sequence")
        self._check_cache(kv)
        block_size = kv.block_size
        device = self.device

        # Index bookkeeping is built on the CPU and moved to the device once per kind,
        # so a CUDA step does not sync per sequence.
        ids_parts, pos_parts, new_slot_parts, ctx_slot_parts = [], [], [], []
        # Per sequence: (first row in the flat batch, num new tokens, start_pos, first ctx slot row).
        plan: list[tuple[int, int, int, int]] = []
        num_tokens = num_ctx_slots = 0
        for seq_idx, seq in enumerate(seqs):
            ids = self._ids_on_cpu(seq.token_ids)
            num_new_tokens = ids.numel()
            end_pos = seq.start_pos + num_new_tokens
            if num_new_tokens == 0:
                raise ValueError(f"sequence {seq_idx}: no new tokens")
            if seq.start_pos < 0:
                raise ValueError(f"sequence {seq_idx}: start_pos must be >= 0, got {seq.start_pos}")
            num_blocks_needed = -(-end_pos // block_size)
            if len(seq.block_table) < num_blocks_needed:
                raise ValueError(
                    f"sequence {seq_idx}: positions 0..{end_pos - 1} need {num_blocks_needed} blocks of "
                    f"{block_size}, block_table has {len(seq.block_table)}"
                )
            table = torch.as_tensor(list(seq.block_table[:num_blocks_needed]), dtype=torch.long)
            if int(table.min()) < 0 or int(table.max()) >= kv.num_blocks:
                raise ValueError(
                    f"sequence {seq_idx}: block ids must lie in [0, {kv.num_blocks}), got {table.tolist()}"
                )
            positions = torch.arange(end_pos)
            # Flat slot index into a [num_blocks * block_size] view of one layer's cache.
            slots = table[positions // block_size] * block_size + positions % block_size
            ids_parts.append(ids)
            pos_parts.append(positions[seq.start_pos :])
            new_slot_parts.append(slots[seq.start_pos :])
            ctx_slot_parts.append(slots)
            plan.append((num_tokens, num_new_tokens, seq.start_pos, num_ctx_slots))
            num_tokens += num_new_tokens
            num_ctx_slots += end_pos

        new_slots = torch.cat(new_slot_parts)
        if new_slots.unique().numel() != new_slots.numel():
            raise ValueError("two new tokens in this step map to the same cache slot (overlapping block tables)")
        new_slots = new_slots.to(device)
        ctx_slots = torch.cat(ctx_slot_parts).to(device)
        last_rows = torch.tensor([first + n - 1 for first, n, _, _ in plan]).to(device)
        cfg = self.config
        # [num_layers, num_blocks * block_size, H_kv, D] views: no copy, writes land in kv.k / kv.v.
        k_cache = kv.k.view(cfg.num_layers, kv.num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)
        v_cache = kv.v.view(cfg.num_layers, kv.num_blocks * block_size, cfg.num_kv_heads, cfg.head_dim)

        def attend(layer_idx: int, q, k, v):
            k_cache[layer_idx, new_slots] = k
            v_cache[layer_idx, new_slots] = v
            out = torch.empty_like(q)
            for first_row, num_new_tokens, start_pos, first_slot in plan:
                rows = slice(first_row, first_row + num_new_tokens)
                slots = ctx_slots[first_slot : first_slot + start_pos + num_new_tokens]  # positions 0..end-1
                out[rows] = causal_attention(q[rows], k_cache[layer_idx, slots], v_cache[layer_idx, slots], start_pos)
            return out

        token_ids = torch.cat(ids_parts).to(device)
        hidden = self._hidden(token_ids, torch.cat(pos_parts).to(device), attend)
        return self._logits(hidden[last_rows])

    def _check_cache(self, kv: PagedKVCache) -> None:
        cfg = self.config
        expected = (cfg.num_layers, kv.num_blocks, kv.block_size, cfg.num_kv_heads, cfg.head_dim)
        if tuple(kv.k.shape) != expected:
            raise ValueError(f"KV cache shape {tuple(kv.k.shape)} does not fit this model (expected {expected})")
        if kv.k.dtype != self.dtype or kv.k.device != self.device:
            raise ValueError(
                f"KV cache is {kv.k.dtype} on {kv.k.device}, model is {self.dtype} on {self.device}"
            )


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def init_random_(model: Llama, seed: int = 0, std: float = 0.02) -> Llama:
    """Small random weights (tests of shapes and paging without a checkpoint)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(std * torch.randn(param.shape, generator=generator))
    return model


__all__ = [
    "Llama",
    "LlamaConfig",
    "PagedKVCache",
    "RMSNorm",
    "SeqInput",
    "apply_rope",
    "causal_attention",
    "init_random_",
    "num_parameters",
    "rope_cos_sin",
]
