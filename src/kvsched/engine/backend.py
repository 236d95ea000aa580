"""EngineBackend: the loop's steps executed by a real model on a paged KV cache.

The same loop and schedulers as the simulator (docs/architecture.md): the loop validates a
decision, allocates the KV blocks in its `KVCache` (with block ids tracked), then calls
`execute(batch, shape)`. Here that runs one batched forward pass of `Llama.forward_step`
over every scheduled request's new tokens, writing their K/V into those blocks, picks the
next token greedily for every request whose step emits one, and returns the measured
wall time of the step. Preemption needs nothing here: the loop frees the blocks, and the
next admission recomputes prompt + kept output from the token ids this backend keeps; a
restart (kill) drops the generated ids beyond what the loop says the request still has.

Trace requests carry lengths, not text: unless `prompt_token_ids` gives a request's
prompt, it is `prompt_len` token ids drawn from a generator seeded by (seed, request id),
so a replay is reproducible. Output lengths are the trace's: the loop finishes a request
after `output_len` tokens whatever the model emits (EOS is ignored, as in vLLM's
`ignore_eos` replays).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from kvsched.backend import BatchShape
from kvsched.kvcache import KVCache
from kvsched.request import Request

FIRST_ORDINARY_TOKEN = 100  # synthetic prompts avoid the low ids, where special tokens live


class EngineBackend:
    """Runs each step on `model` (a `kvsched.engine.model.Llama`) and measures it."""

    max_repeat = 1  # every step is a real forward pass; nothing to fast-forward

    def __init__(self, model, kv: KVCache, *, prompt_token_ids: Mapping[int, Sequence[int]] | None = None,
                 seed: int = 0, device: str = "cpu") -> None:
        import torch

        from kvsched.engine.model import PagedKVCache

        if not kv.track_block_ids:
            raise ValueError("EngineBackend needs KVCache(track_block_ids=True): it indexes K/V by block id")
        self.model, self.kv, self.seed, self.device = model, kv, seed, device
        self._torch = torch
        self.paged = PagedKVCache(model.config, kv.num_blocks, kv.block_size, dtype=next(model.parameters()).dtype,
                                  device=device)
        self._prompts: dict[int, list[int]] = {k: list(v) for k, v in (prompt_token_ids or {}).items()}
        self._generated: dict[int, list[int]] = {}
        self.step_times_s: list[float] = []
        self.step_shapes: list[BatchShape] = []  # with step_times_s: measured (shape, seconds) pairs

    def prompt_ids(self, r: Request) -> list[int]:
        ids = self._prompts.get(r.request_id)
        if ids is None:
            rng = np.random.default_rng([self.seed, r.request_id])
            vocab = self.model.config.vocab_size
            ids = rng.integers(FIRST_ORDINARY_TOKEN, vocab, r.prompt_len).tolist()
            self._prompts[r.request_id] = ids
        elif len(ids) != r.prompt_len:
            raise ValueError(f"request {r.request_id}: prompt_len={r.prompt_len} but {len(ids)} prompt token ids given")
        return ids

    def generated_ids(self, request_id: int) -> list[int]:
        """The output token ids a request has now (after restarts, only the current ones)."""
        return list(self._generated.get(request_id, ()))

    def execute(self, batch: Sequence[tuple[Request, int]], shape: BatchShape) -> float:
        from kvsched.engine.model import SeqInput

        seqs, emits = [], []
        for r, n in batch:
            tokens = self._token_ids(r)
            start = r.num_computed_tokens
            seqs.append(SeqInput(tokens[start:start + n], start, self.kv.block_ids(r.request_id)))
            emits.append(start + n == r.prompt_len + r.num_output_tokens)
        t0 = time.perf_counter()
        logits = self.model.forward_step(seqs, self.paged)
        next_ids = self._choose(batch, emits, logits)  # a list: waits for the device
        duration = time.perf_counter() - t0
        for (r, _), emit, token in zip(batch, emits, next_ids, strict=True):
            if emit:
                self._emit(r, int(token))
        self.step_times_s.append(duration)
        self.step_shapes.append(shape)
        return duration

    # --- what a serving backend changes (kvsched.engine.serving) ---------------------
    def _token_ids(self, r: Request) -> list[int]:
        """Prompt plus the output the loop says `r` has (a restart discarded the rest)."""
        generated = self._generated.setdefault(r.request_id, [])
        del generated[r.num_output_tokens:]
        return self.prompt_ids(r) + generated

    def _choose(self, batch, emits: Sequence[bool], logits) -> list[int]:
        """The next token of every row: greedy."""
        return self._torch.argmax(logits, dim=-1).tolist()

    def _emit(self, r: Request, token: int) -> None:
        self._generated[r.request_id].append(token)

    def decode_durations(self, shape: BatchShape, num_steps: int):  # pragma: no cover - max_repeat is 1
        raise NotImplementedError("the engine executes every step; the loop never fast-forwards it")
