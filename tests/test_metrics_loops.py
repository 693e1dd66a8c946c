"""Loop detection, EOS statistics and the collapse class."""

import pytest
import torch

from entropy_reg.metrics import (
    COLLAPSE_CLASSES,
    CollapseThresholds,
    collapse_class,
    detect_loop,
    eos_rate,
    hit_max_length_rate,
)


def test_detect_loop_period_and_tail():
    # 9 10 | 1 2 3 1 2 3 1 2 3 : period 3, tail of 9 tokens starting at index 2
    loop = detect_loop([9, 10, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert (loop.period, loop.length, loop.start) == (3, 9, 2)
    assert loop.repeats == 3
    # a partial last copy still belongs to the tail: 1 2 3 1 2 3 1 2 -> period 3, length 8
    loop = detect_loop([5, 1, 2, 3, 1, 2, 3, 1, 2])
    assert (loop.period, loop.length) == (3, 8)


def test_detect_loop_prefers_smallest_period_and_handles_none():
    assert detect_loop([4, 4, 4, 4, 4]).period == 1  # not 2
    assert detect_loop([1, 2, 3, 4, 5, 6]) is None
    assert detect_loop([1, 1]) is None  # below min_length=4
    assert detect_loop([]) is None
    assert detect_loop(torch.tensor([7, 8, 7, 8])).period == 2


def test_eos_and_max_length_rates():
    seqs = [[1, 2, 0], [1, 2, 3], [1]]  # eos = 0 ; max_new_tokens = 3
    # EOS in 1 of 3 ; cut by length: only [1,2,3] (len 3, no EOS) -> 1/3 ; [1] is neither
    assert eos_rate(seqs, 0) == pytest.approx(1 / 3)
    assert hit_max_length_rate(seqs, 3, 0) == pytest.approx(1 / 3)
    assert eos_rate(seqs, [0, 3]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        eos_rate(seqs, [])


def test_collapse_class_rules():
    t = CollapseThresholds(min_loop_fraction=0.5, degenerate_max_entropy=1.0, divergent_min_entropy=4.0)
    looping = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] + [11, 12] * 5  # loop covers 10 of 20 tokens = 0.5
    low = [3.0] * 10 + [0.2] * 10  # tail mean 0.2 <= 1.0
    assert collapse_class(looping, low, thresholds=t) == "degenerate"
    # same loop, but the model is not confident inside it: repetitive, never healthy
    assert collapse_class(looping, [3.0] * 20, thresholds=t) == "repetitive"
    assert collapse_class(looping, [5.0] * 20, logprobs=[-9.0] * 20, thresholds=t) == "repetitive"
    # a tail covering less than min_loop_fraction does not count as a loop under these thresholds
    short = list(range(30)) + [11, 12] * 3
    assert collapse_class(short, [3.0] * 36, thresholds=t) == "healthy"
    assert collapse_class(short, [3.0] * 36) == "repetitive"  # default: any repeating tail loops
    # no loop and high entropy -> divergent (no logprobs: high entropy alone decides)
    noise = list(range(20))
    assert collapse_class(noise, [5.0] * 20, thresholds=t) == "divergent"
    # with log-probs: high entropy but likely tokens (mean logprob -1 > -4) -> healthy
    assert collapse_class(noise, [5.0] * 20, logprobs=[-1.0] * 20, thresholds=t) == "healthy"
    assert collapse_class(noise, [5.0] * 20, logprobs=[-6.0] * 20, thresholds=t) == "divergent"


@pytest.fixture(scope="module")
def tok():
    from entropy_reg.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


def test_one_continuation_of_each_class_including_cjk(tok):
    """Real texts through the tiny BPE tokenizer (CJK falls back to byte tokens): one per class."""

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    # the black hole, in Chinese: a sentence repeated, confidently
    cjk = ids("我们今天去公园。" + "我爱你。" * 6)
    loop = CollapseThresholds().loop(cjk)
    assert loop is not None and loop.length >= len(ids("我爱你。" * 5))
    cjk_ent = [3.0] * loop.start + [0.1] * loop.length
    # the example: argmax over a flat distribution, `Return a[i][i][i][[[[[[[[`
    rep = ids("Return a[i][i][i][[[[[[[[[[[[[[[[")
    healthy = ids("The function returns a list of the keys, sorted by their first occurrence in the file.")
    gibberish = ids("zq xv kjw pfl mrb ytc dhg nwk sjv qzx lbm")
    cases = {
        "degenerate": (cjk, cjk_ent, None),
        "repetitive": (rep, [3.5] * len(rep), [-1.5] * len(rep)),
        "divergent": (gibberish, [6.0] * len(gibberish), [-7.0] * len(gibberish)),
        "healthy": (healthy, [2.5] * len(healthy), [-1.2] * len(healthy)),
    }
    for expected, (i, e, lp) in cases.items():
        assert collapse_class(i, e, lp) == expected, (expected, tok.decode(i))
    assert set(cases) == set(COLLAPSE_CLASSES)
    # the same looping texts at a high entropy swap degenerate <-> repetitive; never healthy
    assert collapse_class(cjk, [3.0] * len(cjk)) == "repetitive"
    assert collapse_class(rep, [0.2] * len(rep)) == "degenerate"


def test_collapse_class_errors():
    with pytest.raises(ValueError):
        collapse_class([], [])
    with pytest.raises(ValueError):
        collapse_class([1, 2], [0.1])
    with pytest.raises(ValueError):
        collapse_class([1, 2], [0.1, 0.1], logprobs=[0.0])
    for bad in (dict(min_loop_fraction=1.5), dict(min_loop_repeats=1), dict(divergent_max_logprob=1.0),
                dict(degenerate_max_entropy=-1.0)):
        with pytest.raises(ValueError):
            CollapseThresholds(**bad)


def test_degenerate_is_judged_on_the_copies_not_the_text_being_repeated():
    # Loop of period 4 starting at 2: the first period (positions 2-5) is the sentence the model wrote
    # while still uncertain (3 nats); its two copies are near-certain (0.2 nats). Tail mean 1.13 nats,
    # copies' mean 0.2: the black hole, although the whole tail averages above the 1-nat threshold.
    ids = [9, 8, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]
    entropies = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0] + [0.2] * 8
    assert collapse_class(ids, entropies) == "degenerate"
    # The same loop whose copies stay uncertain is repetitive.
    assert collapse_class(ids, [3.0] * 6 + [1.5] * 8) == "repetitive"
