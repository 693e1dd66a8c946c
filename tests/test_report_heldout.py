"""Teacher-forced held-out sums, prompt encoding and probe-sentence choice of the compare report."""

import math

import pytest
import torch

from entropy_reg.metrics import rep_l
from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer
from entropy_reg.report.heldout import encode_heldout, teacher_forced
from entropy_reg.report.prompts import DEFAULT_PROMPTS, encode_prompts, probe_sentences


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_llama(tok, n_layer=1, n_embd=32, n_head=2, intermediate_size=64).eval()


def test_per_text_sums_match_hf_loss_and_ignore_padding(model, tok):
    texts = ["The for statement iterates.", "x", "A much longer text about dictionaries and their keys, values."]
    rows = encode_heldout(tok, texts, max_length=64)
    assert len(rows) == 2  # "x" is one token: nothing to predict, dropped
    one = teacher_forced(model, rows, batch_size=1, window=4)
    padded = teacher_forced(model, rows, batch_size=len(rows), window=4)  # right padding in one batch
    torch.testing.assert_close(torch.tensor(one.ce_sum), torch.tensor(padded.ce_sum), rtol=1e-4, atol=1e-4)
    assert list(one.rep_hits) == list(padded.rep_hits)
    for i, row in enumerate(rows):
        ids = torch.tensor([row])
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        assert one.n_tokens[i] == len(row) - 1
        assert one.ce_sum[i] / one.n_tokens[i] == pytest.approx(float(out.loss), rel=1e-4)
        assert one.rep_hits[i] / one.n_tokens[i] == pytest.approx(rep_l(out.logits, ids, l=4))
    total_ce = sum(one.ce_sum) / sum(one.n_tokens)
    assert one.perplexity() == pytest.approx(math.exp(total_ce))


def test_prompts_are_formatted_with_the_chat_template(tok):
    ids = encode_prompts(tok, list(DEFAULT_PROMPTS[:2]))
    text = tok.decode(ids[0])
    assert text.startswith("<|user|>\n") and text.endswith("<|assistant|>\n")
    assert any("\u4e00" <= ch <= "\u9fff" for p in DEFAULT_PROMPTS for ch in p)  # built-in set has Chinese


def test_probe_sentences_length_window_and_limit(tok):
    texts = ["Prompt line\nShort. This sentence is long enough to be a probe sentence for the test. More text here.",
             "Prompt\nAnother fine sentence that the probe can repeat several times."]
    got = probe_sentences(tok, texts, limit=5)
    assert len(got) == 2 and all(6 <= len(s) <= 40 for s in got)
    assert tok.decode(got[0]).startswith(" This sentence")
    assert len(probe_sentences(tok, texts, limit=1)) == 1
    assert probe_sentences(tok, texts, limit=0) == []  # --probe-sentences 0: no probe (one sentence slipped through)
