"""generate_with_entropy on a tiny Llama built from a config with a char-level tokenizer built in code."""

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from entropy_reg.generation import (
    DECODING_PRESETS,
    DecodingConfig,
    generate_with_entropy,
    parse_decoding,
)
from entropy_reg.metrics import token_entropy

CHARS = list("abcdefghijklmnopqrstuvwxyz .,!?") + list("你好世界。")


def char_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for c in CHARS:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def tiny_llama(vocab_size=64, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


PROMPTS = ["hello world", "ab", "the cat sat on", "你好世界"]


def test_shapes_alignment_and_conventions(model, tok):
    res = generate_with_entropy(model, tok, PROMPTS, "greedy", max_new_tokens=12, batch_size=3)
    assert res.prompts == PROMPTS and len(res.token_ids) == len(PROMPTS)
    for ids, ent, lp, eos in zip(res.token_ids, res.entropies, res.logprobs, res.hit_eos, strict=True):
        assert 1 <= len(ids) <= 12 and len(ent) == len(ids) == len(lp)
        assert all(0 <= h <= math.log(64) + 1e-4 for h in ent)
        assert all(x <= 1e-6 for x in lp)
        # EOS is kept as the last token iff the model stopped on its own, and nothing follows it
        assert eos == (ids[-1] == tok.eos_token_id)
        assert tok.eos_token_id not in ids[:-1]
        assert tok.pad_token_id not in ids or eos


def rescored_logits(model, res):
    """Raw logits of a plain forward over prompt + continuation at the generated positions ([n, V])."""
    full = torch.tensor([res.prompt_ids[0] + res.token_ids[0]])
    with torch.no_grad():
        logits = model(full).logits[0]
    P = len(res.prompt_ids[0])
    # position P-1+k predicts generated token k
    return logits[P - 1 : P - 1 + len(res.token_ids[0])]


def test_entropy_is_from_raw_logits_and_matches_a_manual_forward(model, tok):
    res = generate_with_entropy(model, tok, ["hello"], "greedy", max_new_tokens=5)
    logits = rescored_logits(model, res)
    torch.testing.assert_close(torch.tensor(res.entropies[0]), token_entropy(logits), atol=1e-4, rtol=1e-4)
    # greedy: the chosen token is the argmax of the raw logits
    assert res.token_ids[0] == logits.argmax(-1).tolist()


def test_entropy_invariant_to_temperature_given_the_same_tokens(model, tok):
    # Same seed, different temperature -> different samples; re-scoring each sample with a plain forward
    # must give the captured entropies, i.e. the capture ignores the temperature warper.
    hot = generate_with_entropy(model, tok, ["abc"], DecodingConfig("hot", do_sample=True, temperature=5.0),
                                max_new_tokens=6, seed=1)
    cold = generate_with_entropy(model, tok, ["abc"], DecodingConfig("cold", do_sample=True, temperature=0.05),
                                 max_new_tokens=6, seed=1)
    for res in (hot, cold):
        expected = token_entropy(rescored_logits(model, res))
        torch.testing.assert_close(torch.tensor(res.entropies[0]), expected, atol=1e-4, rtol=1e-4)
    # the first position has the same context in both runs -> identical entropy despite T=5 vs T=0.05
    assert hot.entropies[0][0] == pytest.approx(cold.entropies[0][0], abs=1e-5)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(model, tok):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate_with_entropy(model, tok, PROMPTS, "top_p", max_new_tokens=8, seed=7)
    after = torch.rand(1)
    b = generate_with_entropy(model, tok, PROMPTS, "top_p", max_new_tokens=8, seed=7)
    assert a.token_ids == b.token_ids and a.entropies == b.entropies
    assert torch.equal(before, after)  # the caller's RNG stream is untouched


def test_batched_equals_unbatched_greedy(model, tok):
    batched = generate_with_entropy(model, tok, PROMPTS, "greedy", max_new_tokens=6, batch_size=4)
    single = generate_with_entropy(model, tok, PROMPTS, "greedy", max_new_tokens=6, batch_size=1)
    assert batched.token_ids == single.token_ids
    for x, y in zip(batched.entropies, single.entropies, strict=True):
        assert x == pytest.approx(y, abs=1e-4)


def test_token_id_prompts_training_mode_restored_and_tokenizer_untouched(model, tok):
    model.train()
    side = tok.padding_side
    res = generate_with_entropy(model, tok, [[5, 6, 7], [8]], "rep_penalty", max_new_tokens=4)
    assert model.training and tok.padding_side == side
    assert res.prompt_ids == [[5, 6, 7], [8]]
    model.eval()


@pytest.mark.parametrize("name", sorted(DECODING_PRESETS))
def test_every_preset_runs(model, tok, name):
    res = generate_with_entropy(model, tok, ["ab"], name, max_new_tokens=3)
    assert res.decoding.name == name and len(res.entropies[0]) == len(res.token_ids[0])


def test_parse_decoding():
    assert parse_decoding("greedy") is DECODING_PRESETS["greedy"]
    cfg = parse_decoding("top_p:top_p=0.95,temperature=0.8")
    assert (cfg.top_p, cfg.temperature, cfg.do_sample) == (0.95, 0.8, True)
    assert cfg.name != "top_p"
    assert DECODING_PRESETS["rep_penalty"].repetition_penalty == 1.2
    assert DECODING_PRESETS["min_p"].min_p == 0.1 and DECODING_PRESETS["temperature"].temperature == 0.7
    for bad in ("nucleus", "top_p:p=0.9", "top_p:top_p=abc", 3):
        with pytest.raises(ValueError):
            parse_decoding(bad)
    with pytest.raises(ValueError):
        DecodingConfig("x", temperature=0)


def test_bad_arguments(model, tok):
    for kwargs in ({"prompts": []}, {"prompts": "hello"}, {"prompts": ["a", [1]]}, {"max_new_tokens": 0},
                   {"batch_size": 0}):
        args = {"prompts": ["a"], **kwargs}
        with pytest.raises(ValueError):
            generate_with_entropy(model, tok, **args)
    with pytest.raises(ValueError):
        generate_with_entropy(model, None, ["a"])
