"""Hand-computed checks of the repetition / diversity metrics (DESIGN.md definitions)."""

import math

import pytest
import torch

from entropy_reg.metrics import (
    distinct_n,
    ditto_sentences,
    diversity,
    rep_n,
    sentence_repetition,
    seq_rep_n,
    split_sentences,
    uniq_seq,
)


def test_seq_rep_n_per_continuation_then_mean():
    # A = [1,2,1,2,1,2]: bigrams 12,21,12,21,12 -> 5 total, 2 unique -> 1 - 2/5 = 0.6
    # B = [1,2,3,4]:     bigrams 12,23,34        -> 3 total, 3 unique -> 0.0
    # mean = 0.3
    assert seq_rep_n([[1, 2, 1, 2, 1, 2], [1, 2, 3, 4]], 2) == pytest.approx(0.3)


def test_seq_rep_n_skips_short_sequences_and_accepts_tensors():
    # [7] has no bigram -> skipped, the mean is over A only = 0.6
    seqs = [torch.tensor([1, 2, 1, 2, 1, 2]), [7]]
    assert seq_rep_n(seqs, 2) == pytest.approx(0.6)
    # nothing long enough -> 0.0 (documented), never NaN
    assert seq_rep_n([[1, 2], [3]], 4) == 0.0
    # 2-D tensor = rows
    assert seq_rep_n(torch.tensor([[5, 5, 5, 5]]), 1) == pytest.approx(0.75)  # 1 - 1/4


def test_rep_n_is_pooled_over_the_set():
    # A = [1,2,3], B = [1,2,4]: bigrams 12,23,12,24 -> 4 total, unique {12,23,24} = 3
    # rep-2 = 100 * (1 - 3/4) = 25 ; seq-rep-2 would be 0 for both (no repeat inside either)
    seqs = [[1, 2, 3], [1, 2, 4]]
    assert rep_n(seqs, 2) == pytest.approx(25.0)
    assert seq_rep_n(seqs, 2) == 0.0
    assert distinct_n(seqs, 2) == pytest.approx(0.75)


def test_rep_n_simctg_convention_drops_the_last_ngram_and_adds_per_text_counts():
    # the example: two identical texts. Pooled: bigrams 12,23,12,23 -> 4 total, 2 unique -> 50.
    # SimCTG: per text only "12" (the last n-gram "23" is dropped) -> unique 1 + 1, total 1 + 1 -> 0.
    same = [[1, 2, 3], [1, 2, 3]]
    assert rep_n(same, 2) == pytest.approx(50.0)
    assert rep_n(same, 2, convention="simctg") == 0.0
    # [1,1,1,1,1]: SimCTG bigrams 11,11,11 (4th dropped) -> 1 unique / 3 -> 66.67; pooled 1/4 -> 75
    assert rep_n([[1, 1, 1, 1, 1]], 2, convention="simctg") == pytest.approx(100 * (1 - 1 / 3))
    assert rep_n([[1, 1, 1, 1, 1]], 2) == pytest.approx(75.0)
    # a text with exactly n tokens has no n-gram under SimCTG's loop -> nothing counted -> 0.0
    assert rep_n([[4, 4]], 2, convention="simctg") == 0.0
    # diversity follows the convention: [1,1,1,1,1] SimCTG: (1/3) * (1/2) * (1/1) = 1/6
    assert diversity([[1, 1, 1, 1, 1]], convention="simctg") == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="convention must be one of 'pooled', 'simctg'"):
        rep_n(same, 2, convention="SimCTG")


def test_sentence_repetition_ditto_convention():
    text = "a b . c d . a b . c d ."
    # split: [a b, c d, a b, c d] -> (4 - 2) / 4 = 0.5
    assert sentence_repetition([text]) == pytest.approx(0.5)
    # DITTO: text before the first "." ignored, last sentence drops the last token -> ["c d", "a b", "c d", ""]
    assert ditto_sentences(text) == ["c d", "a b", "c d", ""]
    assert sentence_repetition([text], convention="ditto") == pytest.approx(0.25)
    # no "." token (raw text keeps "." attached): no sentence, counted as 0 in DITTO's mean
    assert ditto_sentences("one. two. one.") == []
    assert sentence_repetition(["x y z", "a . b . b . c"], convention="ditto") == pytest.approx(
        (0 + 1 / 3) / 2)  # second: ["b", "b", ""] -> (3 - 2) / 3
    with pytest.raises(ValueError, match="convention must be one of 'split', 'ditto'"):
        sentence_repetition([text], convention="DITTO")


def test_diversity_is_product_over_n_2_to_4():
    seqs = [[1, 1, 1, 1, 1]]
    # bigrams: 4 total, 1 unique -> rep-2 = 75; trigrams 3/1 -> 66.67; 4-grams 2/1 -> 50
    # diversity = (1/4) * (1/3) * (1/2) = 1/24
    assert diversity(seqs) == pytest.approx(1 / 24)
    assert diversity([[1, 2, 3, 4, 5]]) == pytest.approx(1.0)


def test_distinct_and_uniq_seq():
    seqs = [[1, 2, 2], [2, 3]]
    # unigrams: 1,2,2,2,3 -> 5 total, 3 unique -> distinct-1 = 0.6 ; uniq-seq = |{1,2,3}| = 3
    assert distinct_n(seqs, 1) == pytest.approx(0.6)
    assert uniq_seq(seqs) == 3
    assert distinct_n([[1]], 2) == 0.0  # no bigram at all -> 0.0 (documented)


def test_works_on_cjk_token_ids():
    # token ids of "我 爱 我 爱" style sequences: ids are ids, script does not matter
    seqs = [[25105, 29233, 25105, 29233]]
    # bigrams (a,b),(b,a),(a,b): 3 total, 2 unique -> 1/3
    assert seq_rep_n(seqs, 2) == pytest.approx(1 / 3)


def test_sentence_repetition_both_scripts():
    # "a. a. b!" -> sentences [a, a, b] -> (3 - 2) / 3 = 1/3
    # "你好。你好。你好？" -> [你好]*3 -> (3 - 1)/3 = 2/3 ; mean = 0.5
    texts = ["a. a. b!", "你好。你好。你好？"]
    assert split_sentences(texts[1]) == ["你好", "你好", "你好"]
    assert sentence_repetition(texts) == pytest.approx(0.5)
    # trailing fragment counts; "..." is one boundary: [x, x, y] -> 1/3
    assert sentence_repetition(["x... x. y"]) == pytest.approx(1 / 3)
    # text without sentence is skipped -> only the second counts (0.0)
    assert sentence_repetition(["...", "one. two."]) == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: seq_rep_n([], 2),
        lambda: rep_n([1, 2, 3], 2),  # flat list: single sequence not wrapped
        lambda: seq_rep_n([[1, 2]], 0),
        lambda: distinct_n([["a", "b"]], 1),
        lambda: uniq_seq(torch.zeros(2, 2, 2, dtype=torch.long)),
        lambda: sentence_repetition("a. b."),
        lambda: sentence_repetition([]),
    ],
)
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_no_nan_anywhere():
    for f in (seq_rep_n, rep_n, distinct_n):
        assert not math.isnan(f([[1]], 3))
