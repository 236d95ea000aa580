"""Single-sequence greedy generation: reference helpers for tests and smoke runs.

The real engine drives `Llama.forward_step` from kvsched's loop with many requests
and scheduler-owned blocks. These helpers run one sequence alone: `greedy_generate`
through the paged path with a trivial allocator (blocks 0, 1, 2, ... in order), and
`dense_greedy_generate` through the cache-free reference, recomputing the whole
sequence every token. Equal outputs from the two check the paged path end to end.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvsched.engine.model import Llama, SeqInput
from kvsched.engine.tokenizer import Tokenizer
from kvsched.kvcache import blocks_for


def _check_args(prompt_ids: Sequence[int], max_new_tokens: int) -> None:
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: generation needs at least one prompt token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def greedy_generate(
    model: Llama,
    tokenizer: Tokenizer | None,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    stop_at_eos: bool = True,
    block_size: int = 16,
    prefill_chunk_len: int | None = None,
) -> list[int]:
    """Greedy continuation of `prompt_ids` via the paged KV cache.

    Returns only the new ids; when `stop_at_eos`, generation stops right after the
    tokenizer's eos id, which is included (it is a generated token). The prompt is
    prefilled in one step, or in chunks of `prefill_chunk_len` tokens.
    """
    _check_args(prompt_ids, max_new_tokens)
    prompt_ids = [int(t) for t in prompt_ids]
    if max_new_tokens == 0:
        return []
    # The last generated token is never fed back, so the cache holds at most prompt + new - 1.
    total_len = len(prompt_ids) + max_new_tokens - 1
    kv = model.new_kv_cache(num_blocks=blocks_for(total_len, block_size), block_size=block_size)
    block_table = list(range(kv.num_blocks))  # trivial allocator: one sequence owns every block
    eos_token_id = tokenizer.eos_token_id if (tokenizer is not None and stop_at_eos) else None

    chunk_len = prefill_chunk_len or len(prompt_ids)
    start_pos = 0
    while start_pos < len(prompt_ids):
        chunk = prompt_ids[start_pos : start_pos + chunk_len]
        logits = model.forward_step([SeqInput(chunk, start_pos, block_table)], kv)
        start_pos += len(chunk)

    new_ids: list[int] = []
    while True:
        next_id = int(logits[0].argmax())
        new_ids.append(next_id)
        if len(new_ids) == max_new_tokens or next_id == eos_token_id:
            return new_ids
        logits = model.forward_step([SeqInput([next_id], start_pos, block_table)], kv)
        start_pos += 1


def dense_greedy_generate(
    model: Llama,
    tokenizer: Tokenizer | None,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    stop_at_eos: bool = True,
) -> list[int]:
    """As `greedy_generate`, but recomputing the full sequence with `forward_dense` each token."""
    _check_args(prompt_ids, max_new_tokens)
    ids = [int(t) for t in prompt_ids]
    eos_token_id = tokenizer.eos_token_id if (tokenizer is not None and stop_at_eos) else None
    new_ids: list[int] = []
    while len(new_ids) < max_new_tokens:
        next_id = int(model.forward_dense(ids)[-1].argmax())
        new_ids.append(next_id)
        ids.append(next_id)
        if next_id == eos_token_id:
            break
    return new_ids


def chat(
    model: Llama,
    tokenizer: Tokenizer,
    user_message: str,
    *,
    max_new_tokens: int = 64,
    system_prompt: str | None = None,
) -> str:
    """One greedy chat turn: the assistant's reply text (smoke tests and the CLI)."""
    messages = [{"role": "user", "content": user_message}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages))
    new_ids = greedy_generate(model, tokenizer, prompt_ids, max_new_tokens)
    return tokenizer.decode(new_ids, skip_special_tokens=True).strip()


__all__ = ["chat", "dense_greedy_generate", "greedy_generate"]
