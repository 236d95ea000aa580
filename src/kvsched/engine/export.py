"""Write an engine model as a Hugging Face Llama folder (what transformers and vLLM load).

`export_model(model, tokenizer, out_dir)` writes any `Llama` + `Tokenizer`;
`export_checkpoint(source, out_dir)` loads a checkpoint first (None = the shipped
SmolLM2-135M-Instruct GGUF) and exports it; `export_random_model` writes a tiny
random Llama around a real tokenizer, for tests that need a fast model folder.

The folder holds:
  config.json             LlamaForCausalLM config (shapes, rope_theta, eps, tied head, special ids, dtype)
  model.safetensors       HF tensor names (model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight,
                          ..., model.norm.weight, lm_head.weight only when untied)
  tokenizer.json          the engine tokenizer's `tokenizers` pipeline as is (for SmolLM2: byte-level BPE,
                          digits split one by one, the control tokens as special added tokens)
  tokenizer_config.json   tokenizer class, special tokens, the checkpoint's chat template
  special_tokens_map.json
  generation_config.json  special ids only: no sampling defaults, so vLLM/transformers keep their own

Weight layout: `model.Llama` already uses HF's rotate-half rotary layout (weights.py
undoes llama.cpp's interleaved Q/K rows when it reads a GGUF), so the tensors are
written unchanged; only the names change.

Precision: float32 by default. A GGUF's quantized tensors were dequantized to float32
on load, so a float32 export reproduces the engine's logits bit for bit; bfloat16 or
float16 halve the size but round every weight.

Vocabulary: the model's vocab_size must be at least the tokenizer's (every id the
tokenizer can produce needs an embedding row). A larger model vocabulary (padded
embeddings) is written as is. A smaller one is refused: there is no sound way to cut a
BPE vocabulary, since merges produce the high ids. A tiny random model therefore keeps
the tokenizer's vocab_size (49152 for SmolLM2: 49152 x hidden floats, 3 MB at hidden 16).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kvsched.engine.model import Llama, LlamaConfig, init_random_
from kvsched.engine.tokenizer import Tokenizer

EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Llama parameter names (model.py) -> Hugging Face Llama names, the inverse of weights.py's tables.
_GLOBAL_TO_HF = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LAYER_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
EXPORTED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "generation_config.json")


def hf_tensor_name(name: str) -> str:
    """The Hugging Face name of a `Llama` parameter name."""
    if name in _GLOBAL_TO_HF:
        return _GLOBAL_TO_HF[name]
    prefix, sep, rest = name.partition(".")
    if prefix == "layers" and sep:
        index, _, param = rest.partition(".")
        if index.isdigit() and param in _LAYER_TO_HF:
            return f"model.layers.{index}.{_LAYER_TO_HF[param]}"
    raise ValueError(f"no Hugging Face name for parameter {name!r}")


def hf_config(config: LlamaConfig, tokenizer: Tokenizer | None = None, *, dtype: str = "float32") -> dict:
    """config.json contents for `config` (LlamaForCausalLM)."""
    special = _special_ids(tokenizer)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_word_embeddings,
        "use_cache": True,
        **special,
        # transformers 4.x reads torch_dtype, 5.x dtype; both are written.
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def _special_ids(tokenizer: Tokenizer | None) -> dict:
    if tokenizer is None:
        return {}
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    return {key: value for key, value in ids.items() if value is not None}


def _token(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    if token_id is None:
        return None
    return tokenizer.id_to_token(token_id)


def tokenizer_files(tokenizer: Tokenizer) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json contents (text)."""
    names = {
        "bos_token": _token(tokenizer, tokenizer.bos_token_id),
        "eos_token": _token(tokenizer, tokenizer.eos_token_id),
        "pad_token": _token(tokenizer, tokenizer.pad_token_id),
        "unk_token": _token(tokenizer, tokenizer.unk_token_id),
    }
    names = {key: value for key, value in names.items() if value is not None}
    # Every special added token (e.g. ChatML's <|im_start|>/<|im_end|>), in id order.
    added = sorted(tokenizer.backend.get_added_tokens_decoder().items())
    specials = [token.content for _, token in added if token.special]
    tok_config = {
        # The generic fast class loads tokenizer.json exactly as written; a model-specific
        # class (GPT2Tokenizer, ...) may rebuild parts of the pipeline from its own defaults.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **names,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        "additional_special_tokens": [t for t in specials if t not in names.values()],
        "added_tokens_decoder": {
            str(token_id): {"content": token.content, "lstrip": token.lstrip, "rstrip": token.rstrip,
                            "normalized": token.normalized, "single_word": token.single_word,
                            "special": token.special}
            for token_id, token in added
        },
    }
    if tokenizer.chat_template is not None:
        tok_config["chat_template"] = tokenizer.chat_template
    special_map = {**names, "additional_special_tokens": tok_config["additional_special_tokens"]}
    return {
        "tokenizer.json": tokenizer.to_json(),
        "tokenizer_config.json": _dump(tok_config),
        "special_tokens_map.json": _dump(special_map),
    }


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def export_model(model: Llama, tokenizer: Tokenizer, out_dir: str | Path, *, dtype: str = "float32",
                 overwrite: bool = False) -> Path:
    """Write `model` and `tokenizer` as a Hugging Face Llama folder `out_dir`; returns it.

    `dtype` is one of EXPORT_DTYPES. Refuses a non-empty `out_dir` unless `overwrite`
    (which replaces only the files listed in EXPORTED_FILES).
    """
    from safetensors.torch import save_file

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {dtype!r}")
    config = model.config
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} embedding "
            "rows; export a model whose vocab_size is at least the tokenizer's"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (pass overwrite=True / --force to replace the model files)")
    out.mkdir(parents=True, exist_ok=True)

    torch_dtype = EXPORT_DTYPES[dtype]
    tensors = {hf_tensor_name(name): t.detach().to(device="cpu", dtype=torch_dtype).contiguous()
               for name, t in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(_dump(hf_config(config, tokenizer, dtype=dtype)), encoding="utf-8")
    for name, text in tokenizer_files(tokenizer).items():
        (out / name).write_text(text, encoding="utf-8")
    (out / "generation_config.json").write_text(_dump(_special_ids(tokenizer)), encoding="utf-8")
    return out


def export_checkpoint(source: str | Path | None, out_dir: str | Path, *, dtype: str = "float32",
                      overwrite: bool = False) -> Path:
    """Load `source` (None: the shipped SmolLM2-135M-Instruct GGUF; or a .gguf / HF folder) and export it."""
    from kvsched.engine.weights import load_model

    model, tokenizer = load_model(source)
    return export_model(model, tokenizer, out_dir, dtype=dtype, overwrite=overwrite)


def random_model(vocab_size: int, *, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                 num_heads: int = 4, num_kv_heads: int = 2, head_dim: int | None = None,
                 max_position_embeddings: int = 2048, tie_word_embeddings: bool = True,
                 rope_theta: float = 10000.0, seed: int = 0) -> Llama:
    """A tiny randomly initialised Llama (init_random_) of the given shape."""
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         head_dim=head_dim or hidden_size // num_heads, rope_theta=rope_theta,
                         max_position_embeddings=max_position_embeddings,
                         tie_word_embeddings=tie_word_embeddings)
    return init_random_(Llama(config), seed=seed)


def export_random_model(out_dir: str | Path, tokenizer: Tokenizer | None = None, *, dtype: str = "float32",
                        overwrite: bool = False, **shape) -> Path:
    """Export a tiny random Llama (shape keywords as `random_model`) around `tokenizer`
    (default: the shipped SmolLM2 tokenizer); its vocab_size is the tokenizer's."""
    if tokenizer is None:
        tokenizer = default_tokenizer()
    model = random_model(tokenizer.vocab_size, **shape)
    return export_model(model, tokenizer, out_dir, dtype=dtype, overwrite=overwrite)


def default_tokenizer() -> Tokenizer:
    """The shipped SmolLM2 GGUF's tokenizer, read without dequantizing any weight."""
    import gguf

    from kvsched.engine.weights import _field_value, default_gguf_path

    path = default_gguf_path()
    reader = gguf.GGUFReader(str(path))
    meta = {name: _field_value(field, gguf.GGUFValueType) for name, field in reader.fields.items()
            if name.startswith("tokenizer.")}
    return Tokenizer.from_gguf_metadata(meta, source=str(path))


__all__ = ["EXPORTED_FILES", "EXPORT_DTYPES", "default_tokenizer", "export_checkpoint", "export_model",
           "export_random_model", "hf_config", "hf_tensor_name", "random_model", "tokenizer_files"]
