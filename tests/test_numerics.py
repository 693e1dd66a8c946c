"""Numerics on the Lightning side and at the extremes of the loss.

- bf16-mixed training on CPU: float32 statistics, finite and close to a float32 step;
- non-finite logits / hidden states during training: a FloatingPointError naming the global step and
  untouched weights (on_nonfinite="raise"), or a skipped step with a warning ("skip"), for
  CausalLMModule and for EntropyRegularizer on a user module — never a NaN in the weights;
- vocab 2 .. 256k (256k with few rows, chunked), k >= vocab, very peaked / flat distributions.
(Input dtypes of the loss itself: tests/test_loss_inputs.py.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from test_callback import UserModule, combined_loss, random_batches

from entropy_reg.callbacks import EntropyRegularizer
from entropy_reg.losses import EntropyFloor, EntropyRegularizedLoss, TailMassFloor
from entropy_reg.module import CausalLMModule

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_position_embeddings": 64}


def lm_batches(n: int = 4):
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(n):
        ids = torch.randint(0, 64, (2, 10), generator=g)
        labels = ids.clone()
        labels[:, :3] = -100
        items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return torch.utils.data.DataLoader(items, batch_size=None)


def trainer(max_steps: int = 3, **kwargs) -> Trainer:
    return Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, log_every_n_steps=1,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def flat_params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in module.parameters()])


class PoisonAt(Callback):
    """Makes the output of `module_fn(pl_module)` NaN during training at the given global step."""

    def __init__(self, step: int, module_fn) -> None:
        self.step, self.module_fn, self.snapshots = step, module_fn, {}

    def setup(self, trainer, pl_module, stage):
        def hook(module, args, output):
            if pl_module.training and torch.is_grad_enabled() and trainer.global_step == self.step:
                return torch.full_like(output, float("nan"))
            return output

        self.module_fn(pl_module).register_forward_hook(hook)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.snapshots[trainer.global_step] = flat_params(pl_module)


class SkippableUserModule(UserModule):
    def on_train_batch_end(self, outputs, batch, batch_idx):
        pass  # a skipped step has no outputs["loss"]


# ---------------------------------------------------------------------------------- precision
def test_bf16_mixed_step_on_cpu_gives_float32_statistics():
    stats = {}
    for precision in ("32-true", "bf16-mixed"):
        seed_everything(0)
        module = CausalLMModule(tiny_config=TINY, loss=EntropyRegularizedLoss([TailMassFloor(top_k=5, floor=0.5)]))
        t = trainer(max_steps=2, precision=precision)
        t.fit(module, train_dataloaders=lm_batches())
        stats[precision] = {k: v for k, v in t.callback_metrics.items() if k.startswith("train/")}
        assert torch.isfinite(flat_params(module)).all()
    for key, value in stats["bf16-mixed"].items():
        assert value.dtype == torch.float32 and torch.isfinite(value), key
        # bf16 has ~3 significant digits; the statistics are still computed in float32 from its logits
        assert value.item() == pytest.approx(stats["32-true"][key].item(), rel=5e-2, abs=5e-3), key


# ---------------------------------------------------------------------------------- non-finite
def decoder_norm(pl_module):
    return pl_module.model.get_decoder().norm


def test_causal_lm_module_nan_hidden_raises_naming_the_step():
    seed_everything(0)
    module = CausalLMModule(tiny_config=TINY)
    poison = PoisonAt(2, decoder_norm)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at global step 2 \(epoch 0, batch 2\)"):
        trainer(callbacks=[poison], max_steps=4).fit(module, train_dataloaders=lm_batches())
    after = flat_params(module)
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, poison.snapshots[2], rtol=0, atol=0)  # no update at the bad step


def test_causal_lm_module_skip_drops_the_update_and_warns():
    seed_everything(0)
    module = CausalLMModule(tiny_config=TINY, on_nonfinite="skip", lr_schedule="constant")
    poison = PoisonAt(1, decoder_norm)
    t = trainer(callbacks=[poison], max_steps=3)
    with pytest.warns(UserWarning, match="skipping global step 1"):
        t.fit(module, train_dataloaders=lm_batches())
    assert t.global_step == 3  # Lightning counts the skipped step
    torch.testing.assert_close(poison.snapshots[2], poison.snapshots[1], rtol=0, atol=0)
    assert not torch.equal(poison.snapshots[1], poison.snapshots[0])  # the other steps did train
    assert torch.isfinite(flat_params(module)).all()
    assert t.callback_metrics["train/nonfinite_skipped"].item() == 1.0


def test_regularizer_callback_nan_logits_raise_or_skip():
    module = UserModule()
    poison = PoisonAt(1, lambda m: m.model.lm_head)
    with pytest.raises(FloatingPointError, match="EntropyRegularizer: non-finite loss at global step 1"):
        trainer(callbacks=[EntropyRegularizer(combined_loss()), poison]).fit(module, random_batches())
    torch.testing.assert_close(flat_params(module), poison.snapshots[1], rtol=0, atol=0)

    module = SkippableUserModule()
    poison = PoisonAt(1, lambda m: m.model.lm_head)
    t = trainer(callbacks=[EntropyRegularizer(combined_loss(), on_nonfinite="skip"), poison])
    with pytest.warns(UserWarning, match="skipping global step 1"):
        t.fit(module, random_batches())
    torch.testing.assert_close(poison.snapshots[2], poison.snapshots[1], rtol=0, atol=0)
    assert torch.isfinite(flat_params(module)).all()


def test_bad_on_nonfinite_values():
    with pytest.raises(ValueError, match="on_nonfinite"):
        EntropyRegularizer(combined_loss(), on_nonfinite="ignore")
    with pytest.raises(ValueError, match="token_normalization"):
        CausalLMModule(tiny_config=TINY, token_normalization="mean")


# ---------------------------------------------------------------------------------- extremes
def reference(logits: torch.Tensor, labels: torch.Tensor):
    z = logits.double()
    logp = z.log_softmax(-1)
    return F.nll_loss(logp, labels), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("V", [2, 3, 1000, 256_000])
def test_vocab_sizes_chunked(V):
    g = torch.Generator().manual_seed(V)
    rows = 3 if V > 10_000 else 8
    logits = torch.randn(1, rows + 1, V, generator=g) * 3
    labels = torch.randint(0, V, (1, rows + 1), generator=g)
    loss_fn = EntropyRegularizedLoss([EntropyFloor(min_entropy=100.0, weight=0.1)], chunk_size=2, stats_top_k=20)
    out = loss_fn(logits=logits.requires_grad_(), labels=labels)
    ce, ent = reference(logits[0, :-1].detach(), labels[0, 1:])
    # float32 sums over V terms: relative error grows ~sqrt(V) * 6e-8 (1.4e-5 measured at 256k)
    rel = 1e-5 if V <= 10_000 else 1e-4
    assert out.metrics["ce"].item() == pytest.approx(ce.item(), rel=rel)
    assert out.metrics["entropy"].item() == pytest.approx(ent.mean().item(), rel=rel)
    torch_ce = F.cross_entropy(logits[0, :-1].detach(), labels[0, 1:])  # float32 torch, same error scale
    assert out.metrics["ce"].item() == pytest.approx(torch_ce.item(), rel=rel)
    if V <= 20:
        assert out.metrics["tail_mass"].item() == 0.0  # k >= V: nothing is outside the top k
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_hidden_path_256k_vocab_equals_logits_path():
    g = torch.Generator().manual_seed(0)
    V, H = 256_000, 8
    hidden = torch.randn(1, 4, H, generator=g)
    weight = torch.randn(V, H, generator=g) * 0.5
    labels = torch.randint(0, V, (1, 4), generator=g)
    loss_fn = EntropyRegularizedLoss([TailMassFloor(top_k=10, floor=0.99)], chunk_size=2)
    a = loss_fn(hidden=hidden, lm_head_weight=weight, labels=labels)
    b = loss_fn(logits=hidden @ weight.t(), labels=labels)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-5)
    for key in a.metrics:
        assert a.metrics[key].item() == pytest.approx(b.metrics[key].item(), rel=1e-4, abs=1e-7), key


def test_regularizer_top_k_at_or_above_vocab():
    logits = torch.randn(2, 5, 4, requires_grad=True)
    labels = torch.randint(0, 4, (2, 5))
    out = EntropyRegularizedLoss([TailMassFloor(top_k=10, floor=0.3)], stats_top_k=50)(logits=logits, labels=labels)
    # every token is in the top k: tail 0, the floor's hinge is the whole floor
    assert out.metrics["tail_mass"].item() == 0.0
    assert out.metrics["tail_mass_floor"].item() == pytest.approx(0.3)
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_peaked_and_flat_distributions(dtype):
    V = 50_000
    flat = torch.zeros(1, 3, V, dtype=dtype)
    peaked = torch.zeros(1, 3, V, dtype=dtype)
    peaked[..., 7] = 60.0 if dtype == torch.float16 else 1e4  # float16 tops out at 65504
    labels = torch.tensor([[0, 7, 7]])
    loss_fn = EntropyRegularizedLoss([EntropyFloor(min_entropy=1.0), TailMassFloor(top_k=5, floor=0.1)])
    for logits, entropy in ((flat, math.log(V)), (peaked, 0.0)):
        logits = logits.clone().requires_grad_()
        out = loss_fn(logits=logits, labels=labels)
        assert out.metrics["entropy"].dtype == torch.float32
        assert out.metrics["entropy"].item() == pytest.approx(entropy, abs=1e-4)
        out.loss.backward()
        assert logits.grad.dtype == dtype and torch.isfinite(logits.grad).all()
