"""Bad inputs to the loss get clear errors; edge cases give documented, finite results."""

from __future__ import annotations

import warnings

import pytest
import torch

from entropy_reg.losses import (
    AntiCopyPenalty,
    ConfidencePenalty,
    EntropyFloor,
    EntropyRegularizedLoss,
    LabelSmoothing,
    TailMassFloor,
)


def _batch(B=2, T=5, V=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    return torch.randn(B, T, V, generator=g), ids.clone(), ids


def test_mismatched_shapes_are_rejected_with_the_shapes():
    logits, labels, ids = _batch()
    loss = EntropyRegularizedLoss()
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\].*\(2, 5\)"):
        loss(logits=logits[:, :4], labels=labels)
    with pytest.raises(ValueError, match="input_ids must have the shape of labels"):
        loss(logits=logits, labels=labels, input_ids=ids[:, :3])
    with pytest.raises(ValueError, match="lm_head_weight must be"):
        loss(hidden=torch.randn(2, 5, 4), lm_head_weight=torch.randn(7, 3), labels=labels)
    with pytest.raises(ValueError, match="exactly one of"):
        loss(labels=labels)
    with pytest.raises(ValueError, match="needs `lm_head_weight`"):
        loss(hidden=torch.randn(2, 5, 4), labels=labels)


def test_labels_outside_vocab_name_the_position():
    logits, labels, _ = _batch()
    labels[1, 3] = 7
    with pytest.raises(ValueError, match=r"labels\[1, 3\] = 7 is outside \[0, 7\)"):
        EntropyRegularizedLoss()(logits=logits, labels=labels)
    labels[1, 3] = -5
    with pytest.raises(ValueError, match=r"labels\[1, 3\] = -5"):
        EntropyRegularizedLoss()(logits=logits, labels=labels)


def test_input_ids_outside_vocab_but_padded_are_fine():
    logits, labels, ids = _batch()
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    ids[0, -1] = 99  # a pad id outside the vocabulary: never counted, never an error
    labels[0, -1] = -100
    out = EntropyRegularizedLoss([AntiCopyPenalty(1.0)])(logits=logits, labels=labels, input_ids=ids, attention_mask=mask)
    assert torch.isfinite(out.loss)
    mask[0, -1] = 1
    with pytest.raises(ValueError, match=r"input_ids\[0, 4\] = 99"):
        EntropyRegularizedLoss()(logits=logits, labels=labels, input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_raise_naming_the_row(bad):
    # (-inf is a masked token, valid: tests/test_loss_masked.py)
    logits, labels, _ = _batch()
    logits[1, 2, 3] = bad
    with pytest.raises(FloatingPointError, match="batch 1, position 3"):
        EntropyRegularizedLoss()(logits=logits.requires_grad_(), labels=labels)


def test_bad_regularizer_arguments():
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        TailMassFloor(top_k=0)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        TailMassFloor(top_k=2, weight=-1)
    with pytest.raises(ValueError, match="floor must be"):
        TailMassFloor(top_k=2, floor=-0.1)
    with pytest.raises(ValueError, match="floor is a probability mass"):
        TailMassFloor(top_k=2, floor=1.5)
    with pytest.raises(ValueError, match="min_entropy must be"):
        EntropyFloor(min_entropy=-1)
    with pytest.raises(ValueError, match="weight must be"):
        ConfidencePenalty(weight=float("nan"))
    with pytest.raises(ValueError, match="mode must be"):
        AntiCopyPenalty(mode="bogus")
    with pytest.raises(ValueError, match="epsilon must be <= 1"):
        LabelSmoothing(2.0)
    with pytest.raises(TypeError, match=r"regularizers\[0\] is a str"):
        EntropyRegularizedLoss(["tail"])
    with pytest.raises(ValueError, match="copy_context"):
        EntropyRegularizedLoss(copy_context="prompt")
    with pytest.raises(ValueError, match="copy_window"):
        EntropyRegularizedLoss(copy_window=0)
    with pytest.raises(ValueError, match="stats_top_k"):
        EntropyRegularizedLoss(stats_top_k=0)


def test_anti_copy_without_input_ids_is_an_error():
    logits, labels, _ = _batch()
    with pytest.raises(ValueError, match="needs `input_ids`"):
        EntropyRegularizedLoss([AntiCopyPenalty(1.0)])(logits=logits, labels=labels)


@pytest.mark.parametrize("path", ["logits", "hidden"])
def test_all_ignored_batch_gives_zero_loss_with_grad_and_no_nan(path):
    logits, labels, ids = _batch()
    labels[:] = -100
    loss_fn = EntropyRegularizedLoss([TailMassFloor(2, 0.5, 1.0), AntiCopyPenalty(1.0)])
    if path == "logits":
        x = logits.requires_grad_()
        out = loss_fn(logits=x, labels=labels, input_ids=ids)
        params = [x]
    else:
        h, w = torch.randn(2, 5, 3, requires_grad=True), torch.randn(7, 3, requires_grad=True)
        out = loss_fn(hidden=h, lm_head_weight=w, labels=labels, input_ids=ids)
        params = [h, w]
    assert out.loss.requires_grad and float(out.loss) == 0.0
    out.loss.backward()
    for p in params:
        assert torch.equal(p.grad, torch.zeros_like(p))
    assert int(out.count) == 0
    assert all(torch.isfinite(v) for v in out.metrics.values())


def test_top_k_at_or_above_vocab_gives_zero_tail():
    logits, labels, _ = _batch(V=4)
    out = EntropyRegularizedLoss([TailMassFloor(top_k=10, floor=0.3, weight=1.0)], stats_top_k=50)(logits=logits, labels=labels)
    assert float(out.metrics["tail_mass"]) == 0.0
    assert abs(float(out.metrics["tail_mass_floor"]) - 0.3) < 1e-6  # hinge at floor - 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_float32_statistics_and_input_dtype_grads(dtype):
    logits, labels, ids = _batch(T=16, V=33)
    x = logits.to(dtype).requires_grad_()
    out = EntropyRegularizedLoss([EntropyFloor(2.0, 1.0)])(logits=x, labels=labels, input_ids=ids)
    ref = EntropyRegularizedLoss([EntropyFloor(2.0, 1.0)])(logits=x.detach().float(), labels=labels, input_ids=ids)
    assert out.loss.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out.metrics.values())
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()
    assert x.grad.dtype == dtype


def test_extreme_distributions_are_finite():
    V = 300
    labels = torch.randint(0, V, (2, 8))
    peaked = torch.full((2, 8, V), -1e4)
    peaked[..., 0] = 1e4  # fully collapsed: p underflows to exactly 0 off the spike
    flat = torch.zeros(2, 8, V)
    loss_fn = EntropyRegularizedLoss([EntropyFloor(1.0, 1.0), TailMassFloor(1, 0.1, 1.0), AntiCopyPenalty(1.0)])
    for logits in (peaked, flat):
        x = logits.requires_grad_()
        out = loss_fn(logits=x, labels=labels, input_ids=labels)
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all()
    assert abs(float(loss_fn(logits=flat, labels=labels, input_ids=labels).metrics["entropy"]) - torch.log(torch.tensor(300.0)).item()) < 1e-4


def test_vocab_of_two():
    logits, labels, ids = _batch(V=2)
    out = EntropyRegularizedLoss([TailMassFloor(1, 0.2, 1.0)])(logits=logits.requires_grad_(), labels=labels, input_ids=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_include_ce_false_returns_only_the_regularizer_part():
    logits, labels, ids = _batch()
    regs = [EntropyFloor(3.0, 0.5)]
    full = EntropyRegularizedLoss(regs)(logits=logits, labels=labels, input_ids=ids)
    only = EntropyRegularizedLoss(regs)(logits=logits, labels=labels, input_ids=ids, include_ce=False)
    torch.testing.assert_close(only.loss + full.metrics["ce"], full.loss)
    assert torch.equal(only.metrics["ce"], full.metrics["ce"])


def test_num_tokens_normaliser_and_sums():
    logits, labels, ids = _batch()
    a = EntropyRegularizedLoss()(logits=logits, labels=labels, input_ids=ids)
    b = EntropyRegularizedLoss()(logits=logits, labels=labels, input_ids=ids, num_tokens=2 * int(a.count))
    torch.testing.assert_close(b.loss * 2, a.loss)
    torch.testing.assert_close(a.sums["ce"] / a.count, a.metrics["ce"].double())
    with pytest.raises(ValueError, match="num_tokens"):
        EntropyRegularizedLoss()(logits=logits, labels=labels, num_tokens=0)


SET_AFTER_CONSTRUCTION = [
    (lambda: TailMassFloor(top_k=2), "weight", "TailMassFloor: weight must be a finite number >= 0"),
    (lambda: TailMassFloor(top_k=2), "top_k", "TailMassFloor: top_k must be an integer >= 1"),
    (lambda: TailMassFloor(top_k=2), "floor", "TailMassFloor: floor must be"),
    (lambda: EntropyFloor(), "weight", "EntropyFloor: weight must be a finite number >= 0"),
    (lambda: EntropyFloor(), "min_entropy", "EntropyFloor: min_entropy must be a finite number >= 0"),
    (lambda: AntiCopyPenalty(), "weight", "AntiCopyPenalty: weight must be a finite number >= 0"),
    (lambda: AntiCopyPenalty(), "eps", r"AntiCopyPenalty: eps must be in \(0, 1\)"),
    (lambda: ConfidencePenalty(), "weight", "ConfidencePenalty: weight must be a finite number >= 0"),
    (lambda: LabelSmoothing(), "epsilon", "LabelSmoothing: epsilon must be a finite number >= 0"),
    (lambda: LabelSmoothing(), "weight", "LabelSmoothing: weight must be a finite number >= 0"),
    (lambda: EntropyRegularizedLoss(), "scale", "EntropyRegularizedLoss: scale must be a finite number >= 0"),
]


@pytest.mark.parametrize(("make", "attr", "message"), SET_AFTER_CONSTRUCTION)
@pytest.mark.parametrize("value", [float("nan"), -5.0, float("inf")])
def test_parameters_set_after_construction_are_validated_like_the_constructor(make, attr, message, value):
    obj = make()
    before = getattr(obj, attr)
    with pytest.raises(ValueError, match=message):
        setattr(obj, attr, value)
    assert getattr(obj, attr) == before  # a rejected value leaves the old one


def test_constructor_and_attribute_give_the_same_error():
    with pytest.raises(ValueError) as ctor:
        TailMassFloor(top_k=2, weight=float("nan"))
    reg = TailMassFloor(top_k=2)
    with pytest.raises(ValueError) as attr:
        reg.weight = float("nan")
    assert str(ctor.value) == str(attr.value)
    loss = EntropyRegularizedLoss()
    for name, bad in (("copy_window", 0), ("chunk_size", -1), ("stats_top_k", 0), ("copy_context", "prompt")):
        with pytest.raises(ValueError, match=name):
            setattr(loss, name, bad)
    with pytest.raises(TypeError, match=r"regularizers\[1\] is a str"):
        loss.regularizers = [EntropyFloor(), "tail"]


def test_valid_attribute_changes_take_effect():
    logits, labels, _ = _batch()
    reg = EntropyFloor(min_entropy=1.5, weight=0.0)
    loss_fn = EntropyRegularizedLoss([reg])
    plain = float(loss_fn(logits=logits, labels=labels).loss)
    reg.weight = 2.0
    assert float(loss_fn(logits=logits, labels=labels).loss) > plain
    loss_fn.scale = 0.0  # what a schedule does at its start
    assert float(loss_fn(logits=logits, labels=labels).loss) == pytest.approx(plain)
    smoothing = LabelSmoothing(0.1)
    smoothing.epsilon = 0.3
    assert smoothing.weight == 0.3 and repr(smoothing) == "LabelSmoothing(epsilon=0.3)"


def test_entropy_floor_above_ln_vocab_warns_once_naming_ln_v():
    logits, labels, _ = _batch(V=7)  # ln 7 = 1.946 nats
    loss_fn = EntropyRegularizedLoss([EntropyFloor(min_entropy=50.0)])
    with pytest.warns(UserWarning, match=r"min_entropy=50 nats is above ln V = ln\(7\) = 1\.946 nats"):
        loss_fn(logits=logits, labels=labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(logits=logits, labels=labels)  # once, not every step
        EntropyRegularizedLoss([EntropyFloor(min_entropy=1.9)])(logits=logits, labels=labels)  # below ln 7
