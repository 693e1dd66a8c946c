"""LoopEntropyFloor and ReferenceAnchor: losses and gradients against float64 autograd references on a
tiny Llama, the reference model's rules (a frozen copy at step 0, adapters off, a resumed run refused),
reuse of continuations, and their argument checks."""

from __future__ import annotations

import copy

import pytest
import torch

from entropy_reg.objectives import LoopEntropyFloor, ObjectiveContext, ReferenceAnchor
from tests.test_objectives_ditto import END, hand_batch
from tests.tiny_models import tiny_llama


def _grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("statistic", ["entropy", "tail"])
@pytest.mark.parametrize("hidden_path", [True, False])
def test_loop_entropy_floor_matches_an_autograd_reference(statistic, hidden_path):
    model = tiny_llama(seed=3).double()
    objective = LoopEntropyFloor(rate=1.0, statistic=statistic, top_k=3, min_sentence_tokens=4,
                                 max_sentence_tokens=8, sentence_end_ids=[END])
    objective.setup(None)
    batch = hand_batch()
    out = objective.compute(model, batch, ObjectiveContext(step=0, hidden_path=hidden_path))
    out.loss.backward()
    fast = _grads(model)
    model.zero_grad()

    built = objective.build(batch, 0)
    logp = torch.log_softmax(model(input_ids=built.input_ids).logits.double(), dim=-1)  # [N, T, V]
    if statistic == "entropy":
        value = -(logp.exp() * logp).sum(-1)
    else:
        value = 1 - logp.exp().topk(3, dim=-1).values.sum(-1)
    total, count = 0.0, 0
    for i in range(built.input_ids.shape[0]):
        P, L = int(built.prefix[i]), int(built.period[i])
        for t in range(built.input_ids.shape[1]):
            if not bool(built.penalised[i, t]):
                continue
            first = P + (t - P) % L
            if first < 1:
                continue
            # the distribution predicting token t is the logits at t - 1
            total = total + torch.relu(value[i, first - 1].detach() - value[i, t - 1])
            count += 1
    ref = total / count
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    for a, b in zip(fast, _grads(model), strict=True):
        torch.testing.assert_close(a, b)
    assert set(out.stats) == {"loss", "first", "repeat", "fall_share", "skipped_share"}


def _anchor(**kw):
    return ReferenceAnchor(**{"rate": 1.0, "response_tokens": 2, "prefix_length": 4, "continuation_length": 6, **kw})


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("hidden_path", [True, False])
def test_reference_anchor_matches_an_autograd_reference(direction, hidden_path):
    base = tiny_llama(seed=1, vocab_size=64).double()
    model = copy.deepcopy(base)
    anchor = _anchor(direction=direction)
    anchor.setup(None)
    anchor.observe(model, 0)  # the frozen copy: the model before fine-tuning
    with torch.no_grad():  # "fine-tuning" moves the model away from its reference
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = hand_batch()
    out = anchor.compute(model, batch, ObjectiveContext(step=0, hidden_path=hidden_path))
    out.loss.backward()
    fast = _grads(model)
    model.zero_grad()

    built = anchor.build(model, batch, 0)  # reused: the same continuations
    logp = torch.log_softmax(model(input_ids=built.input_ids).logits[:, :-1], -1)[built.rows]
    ref_logp = torch.log_softmax(base(input_ids=built.input_ids).logits[:, :-1], -1)[built.rows].detach()
    if direction == "reverse":
        kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    else:
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    ref = kl.mean()
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    for a, b in zip(fast, _grads(model), strict=True):
        torch.testing.assert_close(a, b)
    assert float(out.loss) > 0
    # the KL is taken on continuation tokens only: rows start at the prefix's last token
    assert not bool(built.rows[:, : built.input_ids.shape[1] - 1 - 6].any())


def test_reference_anchor_is_zero_at_the_first_step_and_reuses_continuations():
    model = tiny_llama(seed=2)
    anchor = _anchor(reuse_steps=2)
    anchor.setup(None)
    anchor.observe(model, 0)
    out = anchor.compute(model, hand_batch(), ObjectiveContext(step=0))
    assert float(out.loss) == pytest.approx(0.0, abs=1e-6)  # the model is still its own reference
    generated = anchor._cache[1]
    assert anchor.build(model, hand_batch(), 1) is generated  # reused once (reuse_steps=2) ...
    assert anchor.build(model, hand_batch(), 2) is not generated  # ... then generated again


def test_reference_anchor_batch_source_needs_no_generation():
    model = tiny_llama(seed=2)
    anchor = _anchor(source="batch")
    assert not anchor.needs_generation and _anchor().needs_generation
    anchor.observe(model, 0)
    built = anchor.build(model, hand_batch(), 0)
    torch.testing.assert_close(built.rows, hand_batch()["labels"][:, 1:] != -100)


def test_reference_anchor_refuses_a_resumed_run_without_a_reference_source():
    with pytest.raises(RuntimeError, match="first training step seen is 7.*reference="):
        _anchor().observe(tiny_llama(), 7)


def test_reference_anchor_uses_disabled_adapters_with_lora():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(seed=4), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    anchor = _anchor()
    anchor.observe(model, 5)  # no copy needed, so no step-0 requirement
    assert anchor._reference_model is None
    out = anchor.compute(model, hand_batch(), ObjectiveContext(step=5))
    assert float(out.loss) == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at 0: model == base


@pytest.mark.parametrize("kwargs, match", [
    ({"source": "data"}, "source must be one of"),
    ({"direction": "both"}, "direction must be one of"),
    ({"reuse_steps": 0}, "reuse_steps must be an integer >= 1"),
    ({"continuation_length": 0}, "continuation_length must be an integer >= 1"),
    ({"reference": ""}, "reference must be a model source"),
])
def test_reference_anchor_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"ReferenceAnchor: {match}"):
        ReferenceAnchor(**kwargs)


def test_loop_entropy_floor_bad_arguments():
    with pytest.raises(ValueError, match="LoopEntropyFloor: statistic must be one of"):
        LoopEntropyFloor(statistic="mass")
    with pytest.raises(ValueError, match="LoopEntropyFloor: top_k must be an integer >= 1"):
        LoopEntropyFloor(top_k=0)
    with pytest.raises(ValueError, match="LoopEntropyFloor needs a tokenizer"):
        LoopEntropyFloor().setup(None)
