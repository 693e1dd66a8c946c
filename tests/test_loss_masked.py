"""-inf logits (masked vocabulary) are probability 0 on both paths: values and gradients equal a float64
reference that drops the masked columns; NaN, +inf, an all -inf row and a -inf gold logit are errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_loss import assert_metrics_match, reference_loss

from entropy_reg.losses import (
    AntiCopyPenalty,
    ConfidencePenalty,
    EntropyFloor,
    EntropyRegularizedLoss,
    LabelSmoothing,
    TailMassFloor,
)

ALL_TERMS = (
    TailMassFloor(top_k=3, floor=0.5, weight=0.7),
    EntropyFloor(min_entropy=1.0, weight=0.5),
    AntiCopyPenalty(weight=0.8),
    AntiCopyPenalty(weight=0.3, mode="mass"),
    ConfidencePenalty(weight=0.2),
    LabelSmoothing(epsilon=0.1),
)


@st.composite
def masked_cases(draw):
    B, T, V = draw(st.integers(1, 3)), draw(st.integers(2, 7)), draw(st.integers(3, 12))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    input_ids = torch.randint(0, max(2, V // 2), (B, T), generator=g)  # repeats -> copy sets
    labels = input_ids.clone()
    labels[torch.rand(B, T, generator=g) < 0.2] = -100
    labels[0, -1] = input_ids[0, -1]  # at least one row with a target
    # Mask: some whole columns (padded LM-head rows) and/or random per-row entries (constrained decoding).
    mask = torch.zeros(B, T, V, dtype=torch.bool)
    if draw(st.booleans()):
        mask[..., torch.randperm(V, generator=g)[: draw(st.integers(1, V - 1))]] = True
    if draw(st.booleans()):
        mask |= torch.rand(B, T, V, generator=g) < draw(st.sampled_from([0.3, 0.8]))
    # Never mask a gold token (that is an error, tested below); keep >= 1 finite logit per row.
    gold = labels[:, 1:].clamp_min(0)
    valid = labels[:, 1:] != -100
    rows = mask[:, :-1]
    rows.scatter_(2, gold[..., None], rows.gather(2, gold[..., None]) & ~valid[..., None])
    mask[..., 0] &= ~mask.all(-1)
    scale = draw(st.sampled_from([0.5, 4.0]))
    terms = draw(st.lists(st.sampled_from(range(len(ALL_TERMS))), min_size=1, max_size=3, unique=True))
    kw = dict(regularizers=[ALL_TERMS[i] for i in terms], stats_top_k=draw(st.integers(1, V + 2)),
              copy_window=draw(st.one_of(st.none(), st.integers(1, 4))))
    return input_ids, labels, mask, scale, kw, draw(st.one_of(st.none(), st.integers(1, 4))), g


def _close(a, b, what):
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-10), (what, (a - b).abs().max())


@settings(max_examples=60, deadline=None)
@given(masked_cases())
def test_masked_logits_match_the_reference_without_the_masked_columns(case):
    input_ids, labels, mask, scale, kw, chunk, g = case
    B, T, V = mask.shape
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale).masked_fill(mask, float("-inf"))
    x1 = logits.clone().requires_grad_()
    out = EntropyRegularizedLoss(chunk_size=chunk, **kw)(logits=x1, labels=labels, input_ids=input_ids)
    out.loss.backward()
    x2 = logits.clone().requires_grad_()
    ref, ref_metrics, _ = reference_loss(x2, labels, input_ids, **kw)
    ref.backward()
    assert torch.isfinite(out.loss)
    _close(out.loss.detach(), ref.detach(), "loss")
    assert_metrics_match(out, ref_metrics)
    assert torch.isfinite(x1.grad).all()
    _close(x1.grad, x2.grad, "grad")
    assert (x1.grad[mask] == 0).all()


@settings(max_examples=40, deadline=None)
@given(masked_cases())
def test_hidden_path_with_minus_inf_bias_matches_the_reference(case):
    input_ids, labels, mask, scale, kw, chunk, g = case
    B, T, V = mask.shape
    H = 5
    column_mask = mask.all(0).all(0)  # a bias masks whole columns only
    if column_mask.all():
        column_mask[0] = False
    gold_cols = labels[labels != -100].unique()
    column_mask[gold_cols] = False
    h = torch.randn(B, T, H, generator=g, dtype=torch.float64) * scale
    w = torch.randn(V, H, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64).masked_fill(column_mask, float("-inf"))
    leaves1 = [t.clone().requires_grad_() for t in (h, w, b)]
    out = EntropyRegularizedLoss(chunk_size=chunk, **kw)(
        hidden=leaves1[0], lm_head_weight=leaves1[1], lm_head_bias=leaves1[2], labels=labels, input_ids=input_ids
    )
    out.loss.backward()
    leaves2 = [t.clone().requires_grad_() for t in (h, w, b)]
    ref, ref_metrics, _ = reference_loss(F.linear(leaves2[0], leaves2[1], leaves2[2]), labels, input_ids, **kw)
    ref.backward()
    _close(out.loss.detach(), ref.detach(), "loss")
    assert_metrics_match(out, ref_metrics)
    for name, a, r in zip(("hidden", "weight", "bias"), leaves1, leaves2, strict=True):
        assert torch.isfinite(a.grad).all(), name
        _close(a.grad, r.grad, name)
    assert (leaves1[2].grad[column_mask] == 0).all() and (leaves1[1].grad[column_mask] == 0).all()


def test_masked_float32_logits_match_cross_entropy_and_stay_finite():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 50, generator=g)
    logits[..., 40:] = float("-inf")  # a padded LM head: 10 dead rows
    labels = torch.randint(0, 40, (2, 6), generator=g)
    x = logits.clone().requires_grad_()
    out = EntropyRegularizedLoss([EntropyFloor(3.0, 1.0), LabelSmoothing(0.1)])(logits=x, labels=labels)
    out.loss.backward()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1))
    assert float(out.metrics["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert torch.isfinite(x.grad).all() and (x.grad[..., 40:] == 0).all()
    # entropy equals the entropy over the 40 live tokens
    live = torch.distributions.Categorical(logits=logits[:, :-1, :40]).entropy().mean()
    assert float(out.metrics["entropy"]) == pytest.approx(float(live), rel=1e-5)


@pytest.mark.parametrize("path", ["logits", "hidden"])
@pytest.mark.parametrize(
    ("poison", "message"),
    [
        ("nan", r"logit nan \(token 3\) in the row predicting batch 1, position 3.*not NaN or \+inf"),
        ("+inf", r"logit inf \(token 3\) in the row predicting batch 1, position 3"),
        ("row", r"every logit is -inf in the row predicting batch 1, position 3"),
        ("gold", r"gold token \d+ has logit -inf .* batch 1, position 3"),
    ],
)
def test_invalid_logits_raise_naming_the_row(path, poison, message):
    g = torch.Generator().manual_seed(1)
    B, T, V, H = 2, 5, 7, 4
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[1, 3] = 5
    if path == "logits":
        logits = torch.randn(B, T, V, generator=g)
        row = logits[1, 2]
        if poison == "nan":
            row[3] = float("nan")
        elif poison == "+inf":
            row[3] = float("inf")
        elif poison == "row":
            row[:] = float("-inf")
        else:
            row[5] = float("-inf")
        kwargs = {"logits": logits.requires_grad_()}
    else:
        if poison in ("+inf", "row"):
            pytest.skip("a bias cannot make one row +inf or all -inf without making every row so")
        h = torch.randn(B, T, H, generator=g)
        bias = torch.zeros(V)
        if poison == "nan":
            h[1, 2, 0] = float("nan")
            message = r"logit nan \(token 0\) in the row predicting batch 1, position 3"
        else:
            bias[5] = float("-inf")
            labels[0, 1:] = 0
            labels[1, 1:3] = 0
            labels[1, 4] = 0
        kwargs = {"hidden": h.requires_grad_(), "lm_head_weight": torch.randn(V, H, generator=g), "lm_head_bias": bias}
    with pytest.raises(FloatingPointError, match=message):
        EntropyRegularizedLoss([EntropyFloor(1.0)])(labels=labels, **kwargs)
