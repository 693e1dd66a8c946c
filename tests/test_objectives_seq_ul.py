"""SequenceUnlikelihood: n-gram marking on hand-worked examples, the loss vs a float64 reference, exact zeros."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_reg.objectives import ObjectiveContext, SequenceUnlikelihood
from entropy_reg.objectives.sequence_unlikelihood import mark_repeats
from tests.tiny_models import tiny_llama

EOS = 2


# -- marking ------------------------------------------------------------------------------------------
def test_ngram_spanning_the_prefix_continuation_boundary():
    # prefix [5 6 7 8 | continuation 6 7 8 9]: "6 7 8" (n=3) ends at t=3 in the prefix and again at t=6
    tokens = [5, 6, 7, 8, 6, 7, 8, 9]
    assert mark_repeats(tokens, start=4, ngram=3) == [False] * 6 + [True, False]
    # the 3-gram "8 6 7" that straddles the boundary is new; "7 8 6" too; nothing in the prefix is marked
    assert mark_repeats([1, 2, 3, 1, 2, 3, 1, 2], start=3, ngram=3) == [False] * 5 + [True] * 3
    assert mark_repeats([1, 2, 3, 1, 2, 3, 1, 2], start=6, ngram=3) == [False] * 6 + [True] * 2


def test_cjk_token_ids_and_overlapping_repeats():
    # Byte-level/CJK vocabularies use large ids; marking works on ids only.
    zhong, wen, ju, hao = 20013, 25991, 21477, 12290
    tokens = [zhong, wen, ju, hao, zhong, wen, ju, hao, zhong]
    assert mark_repeats(tokens, start=4, ngram=2) == [False] * 5 + [True] * 4
    assert mark_repeats([7, 7, 7, 7, 7], start=1, ngram=2) == [False, False, True, True, True]
    assert mark_repeats([7, 7, 7, 7, 7], start=1, ngram=1) == [False, True, True, True, True]


def test_eos_mid_continuation_stops_marking():
    tokens = [1, 2, 1, 2, EOS, 1, 2, 1, 2]
    assert mark_repeats(tokens, start=2, ngram=2, eos_ids=[EOS]) == [False, False, False, True] + [False] * 5
    # the EOS itself is marked when it completes a repeat; everything after it is not
    tokens = [1, EOS, 1, EOS, 1, EOS]
    assert mark_repeats(tokens, start=2, ngram=2, eos_ids=[EOS]) == [False, False, False, True, False, False]
    # an EOS inside the prefix does not stop the continuation
    assert mark_repeats([EOS, 3, 3], start=1, ngram=1, eos_ids=[EOS]) == [False, False, True]


def test_no_repeats_marks_nothing():
    assert not any(mark_repeats(list(range(40)), start=10, ngram=4))
    assert not any(mark_repeats([1, 2, 3], start=1, ngram=4))  # shorter than n


# -- the loss -----------------------------------------------------------------------------------------
def batch_of(prefixes: list[list[int]], prompt: int = 3) -> dict[str, torch.Tensor]:
    """Rows ``[prompt tokens] + prefix``, labels only on the prefix part (the response)."""
    ids = torch.tensor([[1] * prompt + p for p in prefixes])
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def fixed_continuations(monkeypatch, obj, continuations):
    def fake(model, prefixes, step):
        return torch.cat([prefixes, torch.tensor(continuations)], dim=1)

    monkeypatch.setattr(obj, "continue_prefixes", fake)


@pytest.mark.parametrize("hidden_path", [True, False])
def test_loss_and_gradient_equal_float64_reference(monkeypatch, hidden_path):
    model = tiny_llama(seed=2).double()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    obj = SequenceUnlikelihood(rate=1.0, prefix_length=4, continuation_length=6, ngram=2)
    obj.setup(None)
    continuations = [[10, 11, 10, 11, 10, EOS], [30, 31, 32, 33, 34, 35]]
    fixed_continuations(monkeypatch, obj, continuations)
    batch = batch_of([[10, 11, 12, 13], [20, 21, 22, 23]])
    out = obj.compute(model, batch, ObjectiveContext(hidden_path=hidden_path))
    grads = torch.autograd.grad(out.loss, list(model.parameters()))

    # reference: row 0 = [10 11 12 13 | 10 11 10 11 10 EOS]: 2-grams (10,11) at t=5, (11,10) at t=6,
    # (10,11) t=7, (11,10) t=8 are repeats -> marked t = 5, 7, 8 ((11,10) first seen at t=6, EOS not a repeat)
    seq = torch.tensor([[10, 11, 12, 13] + continuations[0]])
    logp = torch.log_softmax(model(input_ids=seq).logits.double()[0], dim=-1)
    terms = [-torch.log1p(-logp[t - 1, seq[0, t]].exp()) for t in (5, 7, 8)]
    ref = torch.stack(terms).mean()
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12)
    total, count = out.stats["marked_share"]
    assert (total.item(), count.item()) == (3, 6 + 6)  # 3 marked of 6 + 6 considered positions


def test_no_repeats_gives_exact_zero_reaching_every_parameter(monkeypatch):
    model = tiny_llama(seed=0)
    obj = SequenceUnlikelihood(rate=1.0, prefix_length=4, continuation_length=6, ngram=4)
    obj.setup(None)
    fixed_continuations(monkeypatch, obj, [[30, 31, 32, 33, 34, 35]])
    out = obj.compute(model, batch_of([[10, 11, 12, 13]]), ObjectiveContext())
    assert out.loss.item() == 0.0 and not math.isnan(out.loss.item())
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.all(param.grad == 0), name
    assert out.stats["marked_share"][0].item() == 0 and out.stats["loss"][1].item() == 0


def test_short_responses_are_skipped_and_counted():
    obj = SequenceUnlikelihood(prefix_length=5, continuation_length=4, ngram=2)
    batch = batch_of([[10, 11, 12, 13]])  # 4 response tokens < 5
    prefixes, skipped = obj.prefixes(batch)
    assert prefixes.shape == (0, 5) and skipped == 1
    out = obj.compute(tiny_llama(), batch, ObjectiveContext())
    assert out.loss.item() == 0.0 and out.stats["skipped_share"][0].item() == 1


def test_prefix_is_the_start_of_the_response_under_right_padding():
    obj = SequenceUnlikelihood(prefix_length=3, continuation_length=4, ngram=2)
    ids = torch.tensor([[1, 1, 7, 8, 9, 10, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, 10, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    prefixes, skipped = obj.prefixes({"input_ids": ids, "labels": labels, "attention_mask": mask})
    assert prefixes.tolist() == [[7, 8, 9]] and skipped == 0


def test_real_generation_restores_train_mode_and_marks_the_greedy_continuation():
    model = tiny_llama(seed=3)
    model.train()
    obj = SequenceUnlikelihood(rate=1.0, prefix_length=4, continuation_length=12, ngram=2)
    obj.setup(None)
    batch = batch_of([[10, 11, 12, 13], [20, 21, 22, 23]])
    built = obj.build(model, batch, step=0)
    assert model.training
    assert built.input_ids.shape[0] == 2 and built.input_ids.shape[1] <= 4 + 12
    # the continuation is greedy: each token is the argmax of the model given everything before it
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=built.input_ids).logits
    model.train()
    eos = obj.eos_ids(model)
    for row, row_logits in zip(built.input_ids.tolist(), logits, strict=True):
        for t in range(4, len(row)):
            if row[t - 1] in eos:
                break
            assert row[t] == int(row_logits[t - 1].argmax())
    expected = [mark_repeats(r, 4, 2, eos) for r in built.input_ids.tolist()]
    assert built.marked.tolist() == expected


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"ngram": 0}, "ngram"),
        ({"continuation_length": 3, "ngram": 4}, "continuation_length"),
        ({"prefix_length": 0}, "prefix_length"),
        ({"rate": 2.0}, "rate"),
        ({"weight": -0.1}, "weight"),
        ({"decoding": "beam"}, "decoding"),
        ({"eps": 1.0}, "eps"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SequenceUnlikelihood(**kwargs)
