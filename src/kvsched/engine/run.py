"""`run_engine`: serve a workload on the real model through kvsched's one loop.

The engine counterpart of `kvsched.sim.simulate`: same requests, same scheduler, same
`Run` and result files; the step times are measured instead of modelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvsched.decision import Scheduler
from kvsched.engine.backend import EngineBackend
from kvsched.kvcache import KVCache
from kvsched.loop import ProgressFn, Run, run
from kvsched.request import Request


def run_engine(
    requests: Sequence[Request],
    scheduler: Scheduler,
    *,
    capacity_tokens: int,
    block_size: int = 16,
    model=None,
    model_source: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    prompt_token_ids: Mapping[int, Sequence[int]] | None = None,
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
) -> tuple[Run, EngineBackend]:
    """Run `requests` on a real model. `model` (a loaded `Llama`) wins over
    `model_source` (a .gguf file or a Hugging Face folder; None = SmolLM2-135M-Instruct).

    Raises ValueError naming the request when one would exceed the model's context."""
    if model is None:
        from kvsched.engine.weights import load_model

        model, _ = load_model(model_source, device=device)
    limit = model.config.max_position_embeddings
    for r in requests:
        if r.prompt_len + r.output_len > limit:
            raise ValueError(
                f"request {r.request_id}: prompt_len + output_len = {r.prompt_len + r.output_len} exceeds the "
                f"model's context of {limit} tokens (scale or clip the trace's lengths: --length-scale, --max-prompt-len, --max-output-len)"
            )
    kv = KVCache(capacity_tokens, block_size, track_block_ids=True)
    backend = EngineBackend(model, kv, prompt_token_ids=prompt_token_ids, seed=seed, device=device)
    return run(requests, scheduler, backend, kv, progress=progress, max_steps=max_steps), backend
