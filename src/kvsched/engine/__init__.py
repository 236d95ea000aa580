"""The real-model engine: a Llama decoder over a paged KV cache, its loaders and tokenizer.

`model` computes one scheduler step (`Llama.forward_step`) for a mixed batch of
prefill chunks and decodes, reading and writing K/V in blocks whose ids come from
`kvsched.kvcache.KVCache(track_block_ids=True)`; `weights` loads GGUF files or
Hugging Face folders; `tokenizer` turns chat messages into ids; `generate` holds
single-sequence greedy references. Needs the `engine` extra (torch, gguf, tokenizers,
safetensors).

The names below are imported on first use, so `import kvsched.engine.<submodule>`
of a module that needs no torch (or torch-free tooling such as `--help`) does not
pay for, or require, torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what type checkers and IDEs see; at runtime __getattr__ imports on demand
    from kvsched.engine.generate import chat, dense_greedy_generate, greedy_generate
    from kvsched.engine.model import Llama, LlamaConfig, PagedKVCache, SeqInput
    from kvsched.engine.tokenizer import Tokenizer
    from kvsched.engine.weights import (
        build_model,
        default_gguf_path,
        load_gguf,
        load_model,
        load_safetensors_dir,
    )

_EXPORTS = {
    "Llama": "model",
    "LlamaConfig": "model",
    "PagedKVCache": "model",
    "SeqInput": "model",
    "Tokenizer": "tokenizer",
    "build_model": "weights",
    "default_gguf_path": "weights",
    "load_gguf": "weights",
    "load_model": "weights",
    "load_safetensors_dir": "weights",
    "chat": "generate",
    "dense_greedy_generate": "generate",
    "greedy_generate": "generate",
}

__all__ = [  # the keys of _EXPORTS, spelled out so linters see them
    "Llama",
    "LlamaConfig",
    "PagedKVCache",
    "SeqInput",
    "Tokenizer",
    "build_model",
    "chat",
    "default_gguf_path",
    "dense_greedy_generate",
    "greedy_generate",
    "load_gguf",
    "load_model",
    "load_safetensors_dir",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
