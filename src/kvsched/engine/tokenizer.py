"""Text <-> token ids for the engine, and the chat prompt format.

Wraps a `tokenizers.Tokenizer`, built either from the vocabulary and merges that a
GGUF file carries (`tokenizer.ggml.*`) or from a Hugging Face `tokenizer.json`.
Only byte-level BPE (GPT-2 style, as SmolLM2 uses) is rebuilt from GGUF; anything
else is refused with a clear error instead of tokenizing subtly wrong.

The chat format is ChatML (SmolLM2's template), written out directly rather than by
running the checkpoint's Jinja template, so there is no template engine dependency.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

# SmolLM2's default system prompt, used when a conversation brings none.
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# GGUF token types (llama.cpp's llama_token_type): which vocabulary entries must be
# matched whole in text instead of going through BPE.
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# tokenizer.ggml.pre values whose pre-tokenization is the GPT-2 regex, optionally
# preceded by splitting every digit on its own ("smollm").
_GPT2_PRE = {"default", "gpt2"}
_DIGIT_SPLIT_PRE = {"smollm"}


class Tokenizer:
    """encode/decode plus the special ids the engine needs (eos to stop, bos if any)."""

    def __init__(
        self,
        hf_tokenizer: _HFTokenizer,
        *,
        eos_token_id: int | None,
        bos_token_id: int | None = None,
        chat_template: str | None = None,
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
    ) -> None:
        self._tok = hf_tokenizer
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id
        # pad/unk are not used by the engine; kept so that an export (engine/export.py) can name them.
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        # Kept for reference (what the checkpoint ships); apply_chat_template writes ChatML itself.
        self.chat_template = chat_template

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, object], *, source: str = "GGUF file") -> Tokenizer:
        """From the `tokenizer.*` fields of a GGUF file (as returned by weights.load_gguf)."""
        model_kind = meta.get("tokenizer.ggml.model")
        if model_kind != "gpt2":
            raise ValueError(
                f"{source}: tokenizer.ggml.model={model_kind!r}; only byte-level BPE ('gpt2') can be rebuilt "
                "from GGUF. Use a Hugging Face folder with tokenizer.json instead."
            )
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in _GPT2_PRE | _DIGIT_SPLIT_PRE:
            raise ValueError(
                f"{source}: pre-tokenizer tokenizer.ggml.pre={pre!r} is not supported "
                f"(supported: {sorted(_GPT2_PRE | _DIGIT_SPLIT_PRE)}). Use a folder with tokenizer.json instead."
            )
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in meta:
                raise ValueError(f"{source}: missing tokenizer metadata {key!r}")
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        token_types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        merges: list[tuple[str, str]] = []
        for merge in meta["tokenizer.ggml.merges"]:
            left, sep, right = merge.partition(" ")
            if not sep:
                raise ValueError(f"{source}: malformed merge {merge!r} (expected 'left right')")
            merges.append((left, right))

        vocab = {token: token_id for token_id, token in enumerate(tokens)}
        hf = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in _DIGIT_SPLIT_PRE:
            hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            hf.pre_tokenizer = byte_level
        hf.decoder = decoders.ByteLevel()
        # Control tokens (<|im_start|>, <|endoftext|>, ...) must match whole, never via BPE.
        specials = [
            AddedToken(token, special=True, normalized=False)
            for token, token_type in zip(tokens, token_types)
            if token_type in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
        ]
        hf.add_special_tokens(specials)

        bos_token_id = _optional_int(meta.get("tokenizer.ggml.bos_token_id"))
        eos_token_id = _optional_int(meta.get("tokenizer.ggml.eos_token_id"))
        if meta.get("tokenizer.ggml.add_bos_token") and bos_token_id is not None:
            bos = tokens[bos_token_id]
            hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_token_id)])
        return cls(
            hf,
            eos_token_id=eos_token_id,
            bos_token_id=bos_token_id,
            chat_template=meta.get("tokenizer.chat_template"),
            pad_token_id=_optional_int(meta.get("tokenizer.ggml.padding_token_id")),
            unk_token_id=_optional_int(meta.get("tokenizer.ggml.unknown_token_id")),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """From a Hugging Face folder: tokenizer.json, plus tokenizer_config.json / config.json for special ids."""
        path = Path(path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json (needed to tokenize for this model)")
        try:
            hf = _HFTokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{tokenizer_file}: not a valid tokenizers JSON file: {exc}") from exc
        tok_config = _read_json(path / "tokenizer_config.json")
        model_config = _read_json(path / "config.json")

        def special_id(name: str) -> int | None:
            token = tok_config.get(f"{name}_token")
            if isinstance(token, dict):  # {"content": "<|im_end|>", ...}
                token = token.get("content")
            if isinstance(token, str) and hf.token_to_id(token) is not None:
                return hf.token_to_id(token)
            value = model_config.get(f"{name}_token_id")
            if isinstance(value, list):  # some configs list several stop ids; the first is the canonical one
                value = value[0] if value else None
            return _optional_int(value)

        return cls(
            hf,
            eos_token_id=special_id("eos"),
            bos_token_id=special_id("bos"),
            chat_template=tok_config.get("chat_template") if isinstance(tok_config.get("chat_template"), str) else None,
            pad_token_id=special_id("pad"),
            unk_token_id=special_id("unk"),
        )

    # --- use ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    @property
    def backend(self) -> _HFTokenizer:
        """The wrapped `tokenizers.Tokenizer` (its added tokens, for exporting)."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text (e.g. <|im_start|>) map to their single ids."""
        return self._tok.encode(text).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool = True,
        *,
        default_system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> str:
        """The ChatML prompt for `messages` ([{"role": ..., "content": ...}, ...]).

        As SmolLM2's template: a system turn with `default_system_prompt` comes first when
        the conversation does not start with one (pass None to leave it out), and
        `add_generation_prompt` ends with an open assistant turn for the model to complete.
        """
        if self.token_to_id(IM_START) is None or self.token_to_id(IM_END) is None:
            raise ValueError(f"this tokenizer has no {IM_START}/{IM_END} tokens, so it cannot use the ChatML format")
        parts = []
        for idx, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise TypeError(f"message {idx} needs string 'role' and 'content', got {dict(message)!r}")
            if idx == 0 and role != "system" and default_system_prompt is not None:
                parts.append(f"{IM_START}system\n{default_system_prompt}{IM_END}\n")
            parts.append(f"{IM_START}{role}\n{content}{IM_END}\n")
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)

    def to_json(self) -> str:
        """The underlying tokenizer as tokenizer.json text (e.g. to save next to safetensors)."""
        return self._tok.to_str()


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from exc


__all__ = ["DEFAULT_SYSTEM_PROMPT", "Tokenizer"]
