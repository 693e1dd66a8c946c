"""The tiny BPE tokenizer and tiny Llama built in code."""


import pytest
import torch

from entropy_reg.models import tiny
from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_special_tokens_and_size(tokenizer):
    assert len(tokenizer) == 2048
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer("hello").input_ids == tokenizer("hello", add_special_tokens=False).input_ids


def test_roundtrip_any_text(tokenizer):
    # Byte-level: nothing is unknown, decoding restores the exact text (whitespace and CJK included).
    text = "def f(x):\n    return x  # 注释 ✓"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|user|>\nhi<|endoftext|><|assistant|>\nyo<|endoftext|>"
    )
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert tokenizer.convert_tokens_to_ids("<|user|>") == ids[0]


def test_training_is_deterministic():
    corpus = tiny.embedded_text_corpus("train")[:200]
    a = tiny._train_tokenizer(corpus, 600).backend_tokenizer.to_str()
    b = tiny._train_tokenizer(corpus, 600).backend_tokenizer.to_str()
    assert a == b


def test_disk_and_memory_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPY_REG_CACHE", str(tmp_path))
    first = build_tiny_tokenizer(vocab_size=700)
    (saved,) = tmp_path.iterdir()
    assert saved.name.startswith("tiny-bpe-v700-")
    assert (saved / "tokenizer.json").is_file()
    monkeypatch.setattr(tiny, "_train_tokenizer", lambda *a: pytest.fail("a cached tokenizer was trained again"))
    again = build_tiny_tokenizer(vocab_size=700)
    assert again is not first  # a copy: callers may mutate it
    again.padding_side = "left"
    assert build_tiny_tokenizer(vocab_size=700).padding_side == first.padding_side
    # A fresh process (simulated: empty memory cache) reads the disk copy.
    tiny._cached_tokenizer.cache_clear()
    assert build_tiny_tokenizer(vocab_size=700).get_vocab() == first.get_vocab()


def test_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_tokenizer(vocab_size=100)


def test_tiny_llama(tokenizer):
    model = build_tiny_llama(tokenizer)
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (
        2048,
        128,
        3,
        4,
    )
    assert (cfg.pad_token_id, cfg.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    same = build_tiny_llama(tokenizer)
    assert torch.equal(model.lm_head.weight, same.lm_head.weight)  # seeded
    assert not torch.equal(model.lm_head.weight, build_tiny_llama(tokenizer, seed=1).lm_head.weight)
    batch = tokenizer(["a b c", "def"], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch.input_ids)
    assert out.logits.shape == (2, batch.input_ids.shape[1], 2048)
    assert torch.isfinite(out.loss)


def test_tiny_llama_seed_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    build_tiny_llama(tokenizer, n_layer=1)
    assert torch.equal(torch.rand(1), expected)
