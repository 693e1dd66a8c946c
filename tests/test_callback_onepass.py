"""EntropyRegularizer's paths: one pass (the model skips its own CE), hidden states, additive fallback.

Each comparison trains the same user module from the same weights on the same batches with SGD (so the
parameters after training are a linear image of the gradients) and compares the parameters.
"""

from __future__ import annotations

import logging

import pytest
import torch
from lightning.pytorch import Callback
from test_callback import B, T, UserModule, V, combined_loss, logged, make_trainer, random_batches
from tiny_models import tiny_llama
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader
from transformers import Gemma2Config, Gemma2ForCausalLM

from entropy_reg.callbacks import EntropyRegularizer
from entropy_reg.losses import EntropyRegularizedLoss

STEPS = 3


def params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def train(tmp_path, callback=None, module=None, batches=None, max_steps=STEPS, **trainer_kwargs):
    module = module or UserModule(sgd=True, lr=0.5)
    trainer = make_trainer(tmp_path, [callback] if callback else [], max_steps=max_steps, **trainer_kwargs)
    trainer.fit(module, train_dataloaders=batches or random_batches())
    return module


def assert_same_params(a, b, atol=2e-6):
    moved = (params(a) - params(UserModule())).abs().max()
    assert moved > 1e-2  # training did move the weights
    torch.testing.assert_close(params(a), params(b), rtol=0, atol=atol)


def test_one_pass_equals_additive_path(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    one = EntropyRegularizer(combined_loss())
    a = train(tmp_path / "one", one)
    additive = EntropyRegularizer(combined_loss(), one_pass=False)
    b = train(tmp_path / "add", additive)
    assert (one.path, additive.path) == ("one-pass", "additive")
    assert "one-pass path" in caplog.text and "additive path because one_pass=False" in caplog.text
    assert_same_params(a, b)


def test_zero_weights_equal_no_callback(tmp_path):
    a = train(tmp_path / "cb", EntropyRegularizer(combined_loss(weight=0.0)))
    b = train(tmp_path / "plain")
    assert a.user_losses == pytest.approx(b.user_losses, rel=1e-6)
    assert_same_params(a, b)


def test_logged_out_loss_is_ce_plus_regularizers(tmp_path):
    train(tmp_path, EntropyRegularizer(combined_loss()))
    user = logged(tmp_path, "user_loss")  # the user's self.log("user_loss", out.loss)
    ce, reg = logged(tmp_path, "train/ce"), logged(tmp_path, "train/reg_loss")
    assert len(user) == STEPS and min(reg) > 1e-3
    for u, c, r in zip(user, ce, reg, strict=True):
        assert u == pytest.approx(c + r, rel=1e-6)


class CountingModule(UserModule):
    """Passes the batch's `num_items_in_batch` to the model, as transformers' Trainer does."""

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.user_losses.append(loss.item())
        return loss


def _tokens(batch) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def test_num_items_in_batch_normalises_like_the_model(tmp_path):
    batch = dict(next(iter(random_batches())), num_items_in_batch=torch.tensor(7.0))
    with torch.no_grad():
        own = UserModule().model(**batch).loss  # transformers: summed CE / 7
    module = train(tmp_path, EntropyRegularizer(combined_loss(weight=0.0)), module=CountingModule(sgd=True),
                   batches=DataLoader([batch], batch_size=None), max_steps=1)
    assert module.user_losses[0] == pytest.approx(own.item(), rel=1e-6)


def test_gradient_accumulation_equals_big_batch(tmp_path):
    # Micro-batches with different numbers of labelled tokens; num_items_in_batch = the accumulated
    # batch's count / 2 (Lightning divides each micro-batch loss by accumulate_grad_batches).
    first, second = list(random_batches(2, seed=3))
    second["labels"][:, :6] = -100
    total = _tokens(first) + _tokens(second)
    assert _tokens(first) != _tokens(second)
    micro = [dict(b, num_items_in_batch=torch.tensor(total / 2)) for b in (first, second)]
    big = {k: torch.cat([first[k], second[k]]) for k in first} | {"num_items_in_batch": torch.tensor(float(total))}
    a = train(tmp_path / "acc", EntropyRegularizer(combined_loss()), module=CountingModule(sgd=True, lr=0.5),
              batches=DataLoader(micro, batch_size=None), max_steps=1, accumulate_grad_batches=2)
    b = train(tmp_path / "big", EntropyRegularizer(combined_loss()), module=CountingModule(sgd=True, lr=0.5),
              batches=DataLoader([big], batch_size=None), max_steps=1)
    assert_same_params(a, b)


def test_hidden_path_equals_logits_path(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    class NoLogits(UserModule):
        def training_step(self, batch, batch_idx):
            out = self.model(**batch)
            assert out.logits is None  # the hidden path never builds [tokens, V] logits
            self.user_losses.append(out.loss.item())
            return out.loss

    hidden = EntropyRegularizer(combined_loss(), hidden_path=True)
    a = train(tmp_path / "hidden", hidden, module=NoLogits(sgd=True, lr=0.5))
    b = train(tmp_path / "logits", EntropyRegularizer(combined_loss()))
    assert hidden.path == "hidden" and "hidden-state path" in caplog.text
    assert a.user_losses == pytest.approx(b.user_losses, rel=1e-5)
    assert_same_params(a, b)
    assert "forward" not in vars(a.model.lm_head)  # the head is restored after fit


def test_loss_that_ignores_out_loss_gets_the_regularizers_added(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    class OwnCE(UserModule):
        def training_step(self, batch, batch_idx):
            out = self.model(**batch)  # labels passed, but the loss is computed here
            logits = out.logits[:, :-1].reshape(-1, V)
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1))
            self.user_losses.append(loss.item())
            return loss

    cb = EntropyRegularizer(combined_loss())
    a = train(tmp_path / "own", cb, module=OwnCE(sgd=True, lr=0.5))
    b = train(tmp_path / "add", EntropyRegularizer(combined_loss(), one_pass=False))
    assert cb.path == "additive" and "does not use the model's out.loss" in caplog.text
    assert_same_params(a, b)


def tiny_gemma2(softcap: float | None) -> Gemma2ForCausalLM:
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, final_logit_softcapping=softcap,
    )
    return Gemma2ForCausalLM(config)


@pytest.mark.parametrize("case", ["softcap", "custom_loss_function"])
def test_fallback_to_additive_path(tmp_path, caplog, case):
    caplog.set_level(logging.INFO)
    module = UserModule()
    if case == "softcap":
        module.model = tiny_gemma2(softcap=30.0)
        reason = "final_logit_softcapping=30.0"
    else:
        def label_smoothed(logits, labels, vocab_size, **kwargs):
            return torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, vocab_size).float(), labels[:, 1:].reshape(-1), label_smoothing=0.1
            )

        module.model.loss_function = label_smoothed
        reason = "loss_function is test_fallback_to_additive_path.<locals>.label_smoothed"
    cb = EntropyRegularizer(combined_loss())
    train(tmp_path, cb, module=module, max_steps=2)
    assert cb.path == "additive" and reason in caplog.text
    # the model's own loss is kept and the regularizers are added to it
    for user, returned in zip(module.user_losses, module.returned, strict=True):
        assert returned > user + 1e-3
    assert logged(tmp_path, "train/loss") == pytest.approx(module.returned, rel=1e-6)


def test_gemma2_without_softcap_takes_the_hidden_path(tmp_path):
    module = UserModule()
    module.model = tiny_gemma2(softcap=None)
    cb = EntropyRegularizer(combined_loss(), hidden_path=True)
    train(tmp_path, cb, module=module, max_steps=1)
    assert cb.path == "hidden"


class Poisoned(UserModule):
    """NaN logits at global step 1 (a forward hook on the head, as a fault would)."""

    def on_train_start(self):
        self.model.lm_head.register_forward_hook(
            lambda m, a, out: out.fill_(float("nan")) if self.global_step == 1 else out
        )


def test_nonfinite_logits_raise_naming_the_step(tmp_path):
    module = Poisoned(sgd=True)
    with pytest.raises(FloatingPointError, match="global step 1"):
        train(tmp_path, EntropyRegularizer(combined_loss()), module=module)
    assert "training_step" not in vars(module)


def test_nonfinite_logits_skip_step(tmp_path):
    class RecordParams(Poisoned):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.returned.append(params(self))

    module = RecordParams(sgd=True)
    cb = EntropyRegularizer(combined_loss(), on_nonfinite="skip")
    with pytest.warns(UserWarning, match="skipping global step 1"):
        train(tmp_path, cb, module=module)
    assert cb.nonfinite_skipped == 1
    assert len(module.returned) == STEPS
    torch.testing.assert_close(module.returned[1], module.returned[0], rtol=0, atol=0)
    assert torch.isfinite(module.returned[-1]).all()



def test_lora_model_one_pass_and_hidden_equal_additive(tmp_path):
    from peft import LoraConfig, get_peft_model

    def lora_module():
        module = UserModule(sgd=True, lr=0.5)
        module.model = get_peft_model(module.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(1)
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)  # peft starts B at 0; make the adapters matter
        return module

    runs = {}
    for name, kwargs in {"one": {}, "hidden": {"hidden_path": True}, "add": {"one_pass": False}}.items():
        cb = EntropyRegularizer(combined_loss(), **kwargs)
        runs[name] = (train(tmp_path / name, cb, module=lora_module()), cb.path)
    assert [path for _, path in runs.values()] == ["one-pass", "hidden", "additive"]
    trained = [torch.cat([p.detach().flatten() for p in m.parameters() if p.requires_grad]) for m, _ in runs.values()]
    initial = torch.cat([p.detach().flatten() for p in lora_module().parameters() if p.requires_grad])
    assert (trained[2] - initial).abs().max() > 1e-2
    torch.testing.assert_close(trained[0], trained[2], rtol=0, atol=2e-6)
    torch.testing.assert_close(trained[1], trained[2], rtol=0, atol=2e-6)


class _BigTensors(TorchDispatchMode):
    """Distinct storages of at least `numel` elements created while active (kept alive so none repeats)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.kept = numel, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.numel:
                self.kept.setdefault(t.untyped_storage().data_ptr(), (str(func), t.untyped_storage()))
        return out


class _CountDuringStep(Callback):
    def __init__(self, numel: int) -> None:
        self.mode = _BigTensors(numel)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.mode.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("kwargs", "expected"), [(None, 4), ({"one_pass": False}, 6), ({}, 2), ({"hidden_path": True}, 0)]
)
def test_tokens_by_vocab_tensors_in_a_step(tmp_path, kwargs, expected):
    """[B*T, V]-sized tensors a whole training step creates. The model's own CE (no callback): logits,
    log-softmax and two gradients; the additive path also the regularizers' gradient and the sum of
    both gradients; one pass: the logits and one gradient; the hidden path: none (chunks of 8 rows).
    The vocabulary (256) is the widest dimension, so no other activation reaches B*T*V elements."""
    vocab = 256
    module = UserModule(sgd=True)
    module.model = tiny_llama(0, vocab_size=vocab)
    counter = _CountDuringStep(B * T * vocab)
    callbacks = [counter]
    if kwargs is not None:
        callbacks.append(EntropyRegularizer(EntropyRegularizedLoss(combined_loss().regularizers, chunk_size=8), **kwargs))
    trainer = make_trainer(tmp_path, callbacks, max_steps=1)
    trainer.fit(module, train_dataloaders=random_batches())
    made = sorted(name for name, _ in counter.mode.kept.values())
    assert len(made) == expected, made
