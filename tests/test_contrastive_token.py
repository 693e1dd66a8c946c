"""ContrastiveToken (CT, Jiang et al. 2022): the reference formula where the definitions agree, its
softmax-over-negatives behaviour, and its errors. Values and gradients against the float64 autograd
reference on random batches are in test_loss_equivalence.py (logits and hidden paths)."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_reg.losses import ContrastiveToken, EntropyRegularizedLoss


def ct_from_labels(logits, targets, window, pad_id=0, first=0):
    """The CT-Loss repository's definition, written out: negatives are the previous ``window`` *targets*
    (one per position, duplicates counted, pad id and the label itself excluded), mean over targets
    ``first..T-1``."""
    B, T, _ = logits.shape
    total, count = logits.new_zeros(()), 0
    for b in range(B):
        for t in range(first, T):
            y = int(targets[b, t])
            negs = [int(targets[b, s]) for s in range(max(0, t - window), t)
                    if int(targets[b, s]) not in (y, pad_id)]
            z = logits[b, t]
            total = total + torch.log(1 + sum((torch.exp(z[n] - z[y]) for n in negs), z.new_zeros(())))
            count += 1
    return total / count


def test_equals_the_reference_definition_where_they_agree():
    # They agree when every input is also a target (no prompt masking, no padding), no id repeats inside
    # a window (the reference counts a repeated id once per occurrence, CT here once) and id 0 (the
    # reference's pad id) does not occur. The reference's targets are our labels shifted by one, so its
    # first `window` rows lack input_ids[0] (not a target) among their negatives: compare from row `window`.
    torch.manual_seed(0)
    B, T, V, window = 2, 9, 40, 3
    input_ids = torch.stack([torch.randperm(V - 1)[:T] + 1 for _ in range(B)])
    logits = torch.randn(B, T, V, dtype=torch.float64) * 3
    ours = EntropyRegularizedLoss([ContrastiveToken(weight=1.0, window=window)], include_ce=False)
    labels = input_ids.clone()
    labels[:, 1 : window + 1] = -100  # rows predicting positions 1..window are skipped (still negatives)
    out = ours(logits=logits, labels=labels, input_ids=input_ids)
    ref = ct_from_labels(logits[:, :-1], input_ids[:, 1:], window, first=window)
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.metrics["contrastive_token"], ref.float())


def test_gradient_follows_the_label_vs_repeat_ranking_not_the_probabilities():
    # One row: context [3, 4], gold 5. CT is a softmax of the label against its negatives only, so its
    # push depends on z_n - z_y: ~0 once the label outranks the repeats, ~1 where a repeat outranks the
    # label even when both hold almost no probability (mass elsewhere), where unlikelihood's push ~ p_n.
    V = 8
    ids = torch.tensor([[3, 4, 5]])

    def grads(gold_logit, neg_logit, other_logit):
        logits = torch.full((1, 3, V), float(other_logit), dtype=torch.float64)
        logits[0, 1, 5], logits[0, 1, 3], logits[0, 1, 4] = gold_logit, neg_logit, -30.0
        x = logits.requires_grad_()
        labels = torch.tensor([[-100, -100, 5]])  # the one row predicting the gold 5
        EntropyRegularizedLoss([ContrastiveToken(window=None)], include_ce=False)(
            logits=x, labels=labels, input_ids=ids).loss.backward()
        return x.grad[0, 1], torch.softmax(logits[0, 1].detach(), 0)

    faded, _ = grads(gold_logit=12.0, neg_logit=0.0, other_logit=0.0)
    assert 0 < float(faded[3]) < 1e-5
    pushed, p = grads(gold_logit=0.0, neg_logit=3.0, other_logit=10.0)
    assert float(pushed[3]) > 0.9 and float(p[3]) < 0.01
    torch.testing.assert_close(pushed.sum(), torch.zeros((), dtype=torch.float64))  # -sum_n s_n at the gold
    assert set(pushed.nonzero().view(-1).tolist()) == {3, 4, 5}


def test_prompt_tokens_are_negatives_but_padding_is_not():
    V = 10
    ids = torch.tensor([[7, 2, 3, 9]])
    labels = torch.tensor([[-100, -100, 3, 9]])  # 7 and 2 are prompt
    logits = torch.zeros(1, 4, V, dtype=torch.float64)
    loss = EntropyRegularizedLoss([ContrastiveToken(window=None)], include_ce=False)
    # Row predicting position 2 (gold 3): negatives {7, 2}; row predicting 3 (gold 9): {7, 2, 3}.
    out = loss(logits=logits, labels=labels, input_ids=ids)
    expected = (math.log(3.0) + math.log(4.0)) / 2
    assert abs(float(out.loss) - float(expected)) < 1e-9
    masked = loss(logits=logits, labels=labels, input_ids=ids, attention_mask=torch.tensor([[0, 1, 1, 1]]))
    expected = (math.log(2.0) + math.log(3.0)) / 2
    assert abs(float(masked.loss) - float(expected)) < 1e-9
    # context="response": the prompt's 7 and 2 are not negatives; row predicting 9 has {3}
    response = EntropyRegularizedLoss([ContrastiveToken(window=None, context="response")], include_ce=False)
    out = response(logits=logits, labels=labels, input_ids=ids)
    assert abs(float(out.loss) - (math.log(1.0) + math.log(2.0)) / 2) < 1e-9


def test_bad_arguments_and_missing_input_ids_are_named():
    with pytest.raises(ValueError, match="ContrastiveToken: window must be an integer >= 1"):
        ContrastiveToken(window=0)
    with pytest.raises(ValueError, match="ContrastiveToken: context must be 'all' or 'response'"):
        ContrastiveToken(context="prompt")
    reg = ContrastiveToken()
    with pytest.raises(ValueError, match="ContrastiveToken: weight"):
        reg.weight = float("nan")
    with pytest.raises(ValueError, match="ContrastiveToken needs `input_ids`"):
        EntropyRegularizedLoss([reg])(logits=torch.zeros(1, 3, 5), labels=torch.zeros(1, 3, dtype=torch.long))
