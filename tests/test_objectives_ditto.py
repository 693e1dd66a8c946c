"""RepetitionConsistency (DITTO): pseudo-repetitive batches, loss and gradient vs a float64 autograd reference."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_reg.objectives import ObjectiveContext, RepetitionConsistency
from entropy_reg.objectives.repetition_consistency import repetition_token_loss
from tests.tiny_models import tiny_llama

END = 9  # the sentence-end token of the hand-built batches
T = 16
PAD = 0


def hand_batch() -> dict[str, torch.Tensor]:
    """Three examples: one usable sentence, none, and one (the other candidate is too short)."""
    rows = [
        # prompt [1,2,3] | response [10,11,12,END, 30,31]: one complete sentence; [30,31] is unfinished
        ([1, 2, 3], [10, 11, 12, END, 30, 31]),
        # no sentence end at all: skipped
        ([5], [6, 7, 8, 6, 7, 8]),
        # prompt [4] | response [40,41,END, 42,43,44,END]: [40,41,END] is below min_sentence_tokens=4
        ([4], [40, 41, END, 42, 43, 44, END]),
    ]
    input_ids = torch.full((3, T), PAD)
    labels = torch.full((3, T), -100)
    mask = torch.zeros(3, T, dtype=torch.long)
    for b, (prompt, response) in enumerate(rows):
        ids = prompt + response
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, len(prompt) : len(ids)] = torch.tensor(response)
        mask[b, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


# What the objective must build from hand_batch(): (sequence, prefix length, sentence length).
EXPECTED = [
    ([1, 2, 3] + [10, 11, 12, END] * 4)[:T],
    ([4, 40, 41, END] + [42, 43, 44, END] * 3)[:T],
]
EXPECTED_SHAPE = [(3, 4), (4, 4)]


def objective(**kwargs) -> RepetitionConsistency:
    return RepetitionConsistency(**{"rate": 1.0, "min_sentence_tokens": 4, "max_sentence_tokens": 8,
                                    "sentence_end_ids": [END], **kwargs})


def reference_loss(model, lam: float, one_sided: bool, eps: float = 1e-6) -> torch.Tensor:
    """Plain float64 autograd: full logits, loops over the copies n >= 2, mean over penalised tokens."""
    terms = []
    for row, (prefix, period) in zip(EXPECTED, EXPECTED_SHAPE, strict=True):
        ids = torch.tensor([row])
        logp = torch.log_softmax(model(input_ids=ids).logits.double()[0], dim=-1)
        p = [None] + [logp[t - 1, row[t]].exp() for t in range(1, T)]  # p[t]: probability of token t
        for t in range(prefix + period, T):  # copy 1 (t < prefix + period) is only a reference
            gap = p[t] - lam * p[t - period].detach()
            gap = torch.clamp(gap, min=0.0) if one_sided else gap.abs()
            terms.append(-torch.log(torch.clamp(1 - gap, min=eps)))
    return torch.stack(terms).mean()


def test_build_matches_hand_worked_sequences():
    built = objective().build(hand_batch(), step=0)
    assert built.input_ids.tolist() == EXPECTED
    assert built.examples == 3 and built.skipped == 1
    assert built.period.tolist() == [4, 4]
    for b, (prefix, period) in enumerate(EXPECTED_SHAPE):
        # first copy (and prefix) never penalised; every token of copies >= 2 is
        assert built.penalised[b].tolist() == [t >= prefix + period for t in range(T)]


@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize("hidden_path", [True, False])
@pytest.mark.parametrize("lam", [0.5, 0.0, 1.0])
def test_loss_and_gradient_equal_float64_reference(one_sided, hidden_path, lam):
    model = tiny_llama(seed=1).double()
    # Sharper distributions than the random init gives, so p_n - lam * p_{n-1} takes both signs.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    obj = objective(lam=lam, one_sided=one_sided)
    out = obj.compute(model, hand_batch(), ObjectiveContext(hidden_path=hidden_path))
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    ref = reference_loss(model, lam, one_sided)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-12)
    assert out.loss.item() > 0
    # statistics: (sum, count) over the penalised tokens, examples for skipped_share
    total, count = out.stats["loss"]
    assert count.item() == (T - 7) + (T - 8)
    assert total.item() / count.item() == pytest.approx(ref.item(), rel=1e-10)
    assert out.stats["skipped_share"][0].item() == 1 and out.stats["skipped_share"][1].item() == 3


def test_previous_copy_is_detached_and_first_copy_gets_no_gradient():
    # Gradient w.r.t. the log-probabilities: zero on prefix and copy-1 tokens (they are only references),
    # and the value equals the formula with sg(p_{n-1}).
    torch.manual_seed(0)
    logp = torch.log(torch.rand(1, T - 1, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    period = torch.tensor([4])
    penalised = (torch.arange(T) >= 3 + 4)[None]
    loss, p, p_prev = repetition_token_loss(logp, period, penalised, lam=0.5, one_sided=False, eps=1e-6)
    loss.sum().backward()
    grad = logp.grad[0]  # grad[t - 1] belongs to token t
    assert torch.all(grad[: 3 + 4 - 1] == 0)
    assert torch.all(grad[3 + 4 - 1 :] != 0)
    q = logp.detach().exp()[0]
    t = 10
    expected = -math.log(1 - abs(q[t - 1].item() - 0.5 * q[t - 1 - 4].item()))
    assert loss[0, t].item() == pytest.approx(expected, rel=1e-12)
    assert p_prev[0, t].item() == pytest.approx(q[t - 1 - 4].item())


def test_one_sided_only_penalises_growth():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.9, 0.1]], dtype=torch.float64))  # tokens 1..5
    period, penalised = torch.tensor([2]), torch.tensor([[False, False, False, True, True, True]])
    # token 3: p 0.5 vs lam*p(1)=0.25 (growth); token 4: 0.9 vs 0.25; token 5: 0.1 vs 0.25 (a drop)
    loss, _, _ = repetition_token_loss(logp, period, penalised, lam=0.5, one_sided=True, eps=1e-6)
    assert loss[0, 5].item() == 0.0
    assert loss[0, 4].item() == pytest.approx(-math.log(1 - 0.65))
    two_sided, _, _ = repetition_token_loss(logp, period, penalised, lam=0.5, one_sided=False, eps=1e-6)
    assert two_sided[0, 5].item() == pytest.approx(-math.log(1 - 0.15))


def test_no_usable_sentence_gives_exact_zero_reaching_every_parameter():
    model = tiny_llama(seed=0)
    batch = hand_batch()
    batch = {k: v[1:2] for k, v in batch.items()}  # the example without a sentence
    out = objective().compute(model, batch, ObjectiveContext())
    assert out.loss.item() == 0.0
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.all(param.grad == 0), name
    assert out.stats["skipped_share"][0].item() == 1 and out.stats["loss"][1].item() == 0


def test_sentence_choice_depends_on_content_not_batch_position():
    obj = objective(min_sentence_tokens=3)  # now row 2 has two candidate sentences
    batch = hand_batch()
    flipped = {k: v.flip(0) for k, v in batch.items()}
    for step in range(8):
        a = obj.build(batch, step).input_ids.tolist()
        b = obj.build(flipped, step).input_ids.tolist()
        assert a == b[::-1]
    chosen = {tuple(obj.build(batch, step).input_ids[1].tolist()) for step in range(16)}
    assert len(chosen) == 2  # both sentences get picked over steps


def test_sentence_ends_found_from_a_real_tokenizer_including_chinese():
    from entropy_reg.models.tiny import build_tiny_tokenizer
    from entropy_reg.objectives.sentences import sentence_end_ids

    tok = build_tiny_tokenizer()
    ends = sentence_end_ids(tok)
    assert tok.convert_tokens_to_ids(".") in ends
    assert all(tok.decode([i]).rstrip(" \t")[-1] in ".!?。！？\n" for i in ends)
    assert tok.eos_token_id not in ends


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lam": 1.5}, "lam"),
        ({"lam": -0.1}, "lam"),
        ({"rate": 1.1}, "rate"),
        ({"rate": -0.5}, "rate"),
        ({"weight": -1.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"min_sentence_tokens": 10, "max_sentence_tokens": 5}, "max_sentence_tokens"),
        ({"min_sentence_tokens": 0}, "min_sentence_tokens"),
        ({"max_length": 1}, "max_length"),
        ({"eps": 0.0}, "eps"),
        ({"sentence_end_ids": []}, "sentence_end_ids"),
        ({"one_sided": "yes"}, "one_sided"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RepetitionConsistency(**kwargs)


def test_setup_without_tokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match="tokenizer"):
        RepetitionConsistency().setup(None)
