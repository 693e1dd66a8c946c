"""rep/l, wrep/l, human rep/l with hand-made logits (shift: logits[:, t] predicts labels[:, t+1])."""

import pytest
import torch

from entropy_reg.metrics import human_rep_l, rep_l, wrep_l

V = 10


def one_hot_logits(preds):
    """[B, T] predicted ids -> [B, T, V] logits whose argmax is that id."""
    return torch.nn.functional.one_hot(torch.tensor(preds), V).float() * 5


def test_rep_wrep_human_by_hand():
    labels = torch.tensor([[-100, 1, 2, 1, 3, 2]])
    # logits[:, t] predicts labels[:, t+1]; the prediction at t=5 is never scored.
    logits = one_hot_logits([[9, 1, 1, 2, 2, 0]])
    # scored j = 1..5 (labels[1..5] != -100); window l=2 over gold labels[j-2:j] (-100 dropped):
    # j=1: pred 9, window {} (only -100)  -> rep 0 ; gold 1 in {}   -> 0
    # j=2: pred 1, window {1}            -> rep 1, pred != gold 2 -> wrep 1 ; gold 2 in {1} -> 0
    # j=3: pred 1, window {1,2}          -> rep 1, pred == gold 1 -> wrep 0 ; gold 1 in {1,2} -> 1
    # j=4: pred 2, window {2,1}          -> rep 1, pred != gold 3 -> wrep 1 ; gold 3 -> 0
    # j=5: pred 2, window {1,3}          -> rep 0                            ; gold 2 in {1,3} -> 0
    assert rep_l(logits, labels, l=2) == pytest.approx(3 / 5)
    assert wrep_l(logits, labels, l=2) == pytest.approx(2 / 5)
    assert human_rep_l(labels, l=2) == pytest.approx(1 / 5)
    # a wider window: j=5 window {1,2,1,3} now contains gold 2 -> human 2/5, rep j=5 pred 2 -> 4/5
    assert human_rep_l(labels, l=4) == pytest.approx(2 / 5)
    assert rep_l(logits, labels, l=4) == pytest.approx(4 / 5)


def test_batch_does_not_leak_across_rows():
    # row 0 context never sees row 1 tokens
    labels = torch.tensor([[1, 2], [2, 2]])
    logits = one_hot_logits([[2, 0], [2, 0]])
    # row 0: j=1 pred 2, window {1} -> 0 ; row 1: j=1 pred 2, window {2} -> 1 => 1/2
    assert rep_l(logits, labels, l=4) == pytest.approx(0.5)


def test_errors():
    with pytest.raises(ValueError):
        rep_l(torch.zeros(1, 3, V), torch.full((1, 3), -100), l=2)  # nothing scored
    with pytest.raises(ValueError):
        rep_l(torch.zeros(1, 3, V), torch.zeros(1, 4, dtype=torch.long), l=2)
    with pytest.raises(ValueError):
        human_rep_l(torch.zeros(1, 3, dtype=torch.long), l=0)
