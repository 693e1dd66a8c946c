"""The fast one-pass loss equals the plain-autograd reference in float64: values and gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_loss import assert_metrics_match, reference_loss

from entropy_reg.losses import (
    AntiCopyPenalty,
    ConfidencePenalty,
    ContrastiveToken,
    EntropyFloor,
    EntropyRegularizedLoss,
    LabelSmoothing,
    TailMassFloor,
)


@st.composite
def cases(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 7))
    V = draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    # A small id range forces duplicate tokens in the context.
    id_hi = draw(st.integers(1, V))
    input_ids = torch.randint(0, id_hi, (B, T), generator=g)
    labels = input_ids.clone()
    ignore_p = draw(st.sampled_from([0.0, 0.3, 1.0]))
    labels[torch.rand(B, T, generator=g) < ignore_p] = -100
    attention_mask = None
    if draw(st.booleans()):
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
        labels[attention_mask == 0] = -100
        input_ids[attention_mask == 0] = draw(st.sampled_from([0, V - 1]))  # no pad-id assumption
    scale_logits = draw(st.sampled_from([0.5, 3.0, 12.0]))  # 12: peaked, near-collapsed rows
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale_logits)
    regs = draw(
        st.lists(
            st.one_of(
                st.builds(TailMassFloor, top_k=st.integers(1, V + 2), floor=st.floats(0, 1), weight=st.floats(0, 2)),
                st.builds(EntropyFloor, min_entropy=st.floats(0, 3), weight=st.floats(0, 2)),
                st.builds(AntiCopyPenalty, weight=st.floats(0, 2), mode=st.sampled_from(["unlikelihood", "mass"])),
                st.builds(ConfidencePenalty, weight=st.floats(0, 1)),
                st.builds(LabelSmoothing, epsilon=st.floats(0, 0.5)),
                st.builds(ContrastiveToken, weight=st.floats(0, 2), window=st.one_of(st.none(), st.integers(1, 4)),
                          context=st.sampled_from(["all", "response"])),
            ),
            max_size=4,
        )
    )
    kw = dict(
        regularizers=regs,
        stats_top_k=draw(st.integers(1, V + 3)),
        copy_context=draw(st.sampled_from(["all", "response"])),
        copy_window=draw(st.one_of(st.none(), st.integers(1, 4))),
    )
    chunk = draw(st.one_of(st.none(), st.integers(1, 5)))
    scale = draw(st.sampled_from([0.0, 0.5, 1.0]))
    return logits, labels, input_ids, attention_mask, kw, chunk, scale


@settings(max_examples=150, deadline=None)
@given(cases())
def test_logits_path_matches_reference(case):
    logits, labels, input_ids, attention_mask, kw, chunk, scale = case
    fast = EntropyRegularizedLoss(chunk_size=chunk, **kw)
    fast.scale = scale
    x1 = logits.clone().requires_grad_()
    out = fast(logits=x1, labels=labels, input_ids=input_ids, attention_mask=attention_mask)
    out.loss.backward()
    x2 = logits.clone().requires_grad_()
    ref, ref_metrics, count = reference_loss(x2, labels, input_ids, attention_mask, scale=scale, **kw)
    if ref.requires_grad:
        ref.backward()
    torch.testing.assert_close(out.loss, ref.detach(), atol=1e-9, rtol=1e-9)
    g2 = x2.grad if x2.grad is not None else torch.zeros_like(x2)
    torch.testing.assert_close(x1.grad, g2, atol=1e-9, rtol=1e-7)
    assert int(out.count) == count
    assert_metrics_match(out, ref_metrics)


@settings(max_examples=60, deadline=None)
@given(cases(), st.integers(1, 6), st.booleans())
def test_hidden_path_matches_reference(case, H, with_bias):
    logits, labels, input_ids, attention_mask, kw, chunk, scale = case
    B, T, V = logits.shape
    g = torch.Generator().manual_seed(B * 100 + T * 10 + V)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    W = torch.randn(V, H, generator=g, dtype=torch.float64) * 2
    bias = torch.randn(V, generator=g, dtype=torch.float64) if with_bias else None
    fast = EntropyRegularizedLoss(chunk_size=chunk, **kw)
    fast.scale = scale
    h1, w1 = hidden.clone().requires_grad_(), W.clone().requires_grad_()
    b1 = bias.clone().requires_grad_() if with_bias else None
    out = fast(hidden=h1, lm_head_weight=w1, lm_head_bias=b1, labels=labels, input_ids=input_ids, attention_mask=attention_mask)
    out.loss.backward()
    h2, w2 = hidden.clone().requires_grad_(), W.clone().requires_grad_()
    b2 = bias.clone().requires_grad_() if with_bias else None
    z = h2 @ w2.t() + (b2 if with_bias else 0)
    ref, ref_metrics, _ = reference_loss(z, labels, input_ids, attention_mask, scale=scale, **kw)
    if ref.requires_grad:
        ref.backward()
    torch.testing.assert_close(out.loss, ref.detach(), atol=1e-9, rtol=1e-9)
    for fast_t, ref_t in ((h1, h2), (w1, w2)) + (((b1, b2),) if with_bias else ()):
        expected = ref_t.grad if ref_t.grad is not None else torch.zeros_like(ref_t)
        torch.testing.assert_close(fast_t.grad, expected, atol=1e-9, rtol=1e-7)
    assert_metrics_match(out, ref_metrics)


def test_zero_weights_equal_plain_shifted_cross_entropy():
    torch.manual_seed(0)
    B, T, V = 3, 9, 17
    logits = torch.randn(B, T, V, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[0, :4] = -100
    regs = [TailMassFloor(top_k=2, floor=0.5, weight=0.0), AntiCopyPenalty(weight=0.0), EntropyFloor(2.0, 0.0)]
    out = EntropyRegularizedLoss(regs, chunk_size=4)(logits=logits, labels=labels, input_ids=labels.clamp_min(0))
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, plain)
    g_fast, = torch.autograd.grad(out.loss, logits)
    g_plain, = torch.autograd.grad(plain, logits)
    torch.testing.assert_close(g_fast, g_plain)


def test_label_smoothing_matches_torch():
    torch.manual_seed(1)
    B, T, V = 2, 6, 11
    logits = torch.randn(B, T, V, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T))
    out = EntropyRegularizedLoss([LabelSmoothing(0.2)])(logits=logits, labels=labels)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), label_smoothing=0.2)
    torch.testing.assert_close(out.loss, plain)


def test_copy_set_is_per_sequence_not_flattened():
    # Sequence 1 contains token 5 but sequence 0 never does: row 0's copy mass must not include it.
    V = 8
    input_ids = torch.tensor([[1, 2, 3, 4], [5, 5, 5, 5]])
    labels = input_ids.clone()
    logits = torch.full((2, 4, V), -10.0)
    logits[:, :, 5] = 10.0  # nearly all mass on token 5
    out = EntropyRegularizedLoss()(logits=logits, labels=labels, input_ids=input_ids)
    # Sequence 0: no row has 5 in its context -> copy mass ~0 there; sequence 1: 5 is the gold token
    # of every row, so it is removed from C too -> copy mass ~0 everywhere.
    assert float(out.metrics["copy_mass"]) < 1e-6


def test_copy_mass_counts_context_tokens_once_and_excludes_gold():
    V = 6
    input_ids = torch.tensor([[2, 2, 3, 1]])
    labels = input_ids.clone()
    logits = torch.zeros(1, 4, V, dtype=torch.float64)  # uniform: p = 1/6 per token
    out = EntropyRegularizedLoss()(logits=logits, labels=labels, input_ids=input_ids)
    # rows t=0 (gold 2): C={2}-{2}={} -> 0; t=1 (gold 3): C={2} -> 1/6; t=2 (gold 1): C={2,3} -> 2/6.
    assert abs(float(out.metrics["copy_mass"]) - (0 + 1 / 6 + 2 / 6) / 3) < 1e-7
    windowed = EntropyRegularizedLoss(copy_window=1)(logits=logits, labels=labels, input_ids=input_ids)
    # window 1: only the input at t: t=0 {2}-{2}={}; t=1 {2}; t=2 {3} -> (0 + 1/6 + 1/6) / 3
    assert abs(float(windowed.metrics["copy_mass"]) - (2 / 6) / 3) < 1e-7
