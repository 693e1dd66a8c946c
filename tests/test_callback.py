"""EntropyRegularizer on a LightningModule written the way a user would write it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from tiny_models import three_term_loss, tiny_llama
from torch.utils.data import DataLoader

from entropy_reg.callbacks import CoefficientSchedule, EntropyRegularizer
from entropy_reg.losses import EntropyRegularizedLoss
from entropy_reg.training.stats_window import StatsWindow

V, B, T = 64, 4, 12


def random_batches(n: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, V, (B, T), generator=g)
        mask = torch.ones(B, T, dtype=torch.long)
        mask[0, -3:] = 0  # right padding in one row
        labels = ids.clone()
        labels[:, :2] = -100  # a "prompt"
        labels[mask == 0] = -100
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return DataLoader(batches, batch_size=None)  # pre-batched dicts


class UserModule(LightningModule):
    """What a user writes: nothing here knows about the regularizer."""

    def __init__(self, seed: int = 0, pass_labels: bool = True, lr: float = 1e-3, sgd: bool = False) -> None:
        super().__init__()
        self.model = tiny_llama(seed)
        self.pass_labels = pass_labels
        self.lr, self.sgd = lr, sgd
        self.user_losses: list[float] = []
        self.returned: list[float] = []

    def training_step(self, batch, batch_idx):
        if self.pass_labels:
            loss = self.model(**batch).loss
        else:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = out.logits[:, :-1].reshape(-1, V)
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1))
        self.user_losses.append(loss.item())
        self.log("user_loss", loss, on_step=True, batch_size=B)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.returned.append(float(outputs["loss"]))

    def configure_optimizers(self):
        # SGD: parameters after a few steps are a linear image of the gradients (AdamW normalises
        # their scale away), so comparing them compares the losses' gradients.
        optimizer = torch.optim.SGD if self.sgd else torch.optim.AdamW
        return optimizer(self.parameters(), lr=self.lr)


def make_trainer(tmp_path, callbacks, max_steps: int = 3, **kwargs) -> Trainer:
    return Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, callbacks=callbacks,
        logger=CSVLogger(tmp_path), log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )


def combined_loss(weight: float = 1.0) -> EntropyRegularizedLoss:
    return three_term_loss(top_k=1, floor=0.9, min_entropy=3.0, weights=(weight, weight, weight))


def fit(tmp_path, loss, module=None, max_steps=3, **cb_kwargs):
    module = module or UserModule()
    cb = EntropyRegularizer(loss, **cb_kwargs)
    trainer = make_trainer(tmp_path, [cb], max_steps=max_steps)
    trainer.fit(module, train_dataloaders=random_batches())
    return trainer, module, cb


def logged(tmp_path, key: str) -> list[float]:
    """Per-step values of a logged key (the CSV logger of make_trainer, log_every_n_steps=1)."""
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_adds_regularizer_and_logs(tmp_path):
    batch = next(iter(random_batches()))
    with torch.no_grad():  # what the model's own loss and the regularizers are at the initial weights
        plain = tiny_llama(0)(**batch)
        regs = combined_loss()(logits=plain.logits, labels=batch["labels"], input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"], include_ce=False).loss
    trainer, module, cb = fit(tmp_path, combined_loss())
    assert cb.path == "one-pass"
    assert len(module.returned) == 3
    # one pass: the model's out.loss already is CE + regularizers, and the step returns it unchanged
    assert module.returned == module.user_losses
    assert regs > 1e-3
    assert module.user_losses[0] == pytest.approx((plain.loss + regs).item(), rel=1e-6)
    metrics = trainer.callback_metrics
    for key in ["train/loss", "train/ce", "train/reg_loss", "train/entropy", "train/tail_mass",
                "train/copy_mass", "train/tail_mass_floor", "train/anti_copy", "train/entropy_floor",
                "train/reg_scale"]:
        assert key in metrics, key
    assert float(metrics["train/loss"]) == pytest.approx(module.user_losses[-1], rel=1e-6)
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "train/entropy" in logged.splitlines()[0]
    # hooks and wrapper are gone after fit
    assert "training_step" not in vars(module)
    assert not module.model._forward_hooks and not module.model._forward_pre_hooks
    assert not module.model._forward_hooks_with_kwargs


def test_zero_weights_leave_loss_unchanged(tmp_path):
    _, module, _ = fit(tmp_path, combined_loss(weight=0.0))
    assert module.returned == module.user_losses


def test_zero_schedule_leaves_loss_unchanged(tmp_path):
    sched = CoefficientSchedule(kind="constant", start=0.0, end=0.0)
    _, module, cb = fit(tmp_path, combined_loss(), schedule=sched)
    assert module.returned == module.user_losses
    assert cb.last_scale == 0.0


def test_labels_fallback_without_labels_in_call(tmp_path):
    with pytest.warns(UserWarning, match="without `labels`"):
        _, module, cb = fit(tmp_path, combined_loss(), module=UserModule(pass_labels=False), max_steps=1)
    assert cb.path == "additive"  # the user computes CE from the logits: the regularizers are added
    assert module.returned[0] > module.user_losses[0] + 1e-3


def test_schedule_sets_scale_per_step(tmp_path):
    sched = CoefficientSchedule(warmup_steps=2, start=0.0, end=1.0)
    _, module, cb = fit(tmp_path, combined_loss(), schedule=sched, max_steps=3)
    reg_loss = logged(tmp_path, "train/reg_loss")
    assert reg_loss[0] == 0.0  # scale 0 at step 0
    assert reg_loss[2] > 1e-3
    assert cb.last_scale == 1.0 and cb.last_step == 2
    state = cb.state_dict()
    other = EntropyRegularizer(combined_loss())
    other.load_state_dict(state)
    assert other.schedule == sched and other.loss.scale == 1.0


def test_manual_optimization_rejected(tmp_path):
    class Manual(UserModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(RuntimeError, match="automatic optimization"):
        fit(tmp_path, combined_loss(), module=Manual())


def test_two_causal_lms_need_model_attr(tmp_path):
    class Two(UserModule):
        def __init__(self):
            super().__init__()
            self.reference = tiny_llama(1)

    with pytest.raises(ValueError, match="model_attr"):
        fit(tmp_path, combined_loss(), module=Two())
    module = Two()
    _, module, cb = fit(tmp_path / "named", combined_loss(), module=module, model_attr="model", max_steps=1)
    assert cb.path == "one-pass"
    assert logged(tmp_path / "named", "train/reg_loss")[0] > 1e-3


def test_base_model_call_rejected(tmp_path):
    class BaseOnly(UserModule):
        def training_step(self, batch, batch_idx):
            hidden = self.model.model(input_ids=batch["input_ids"]).last_hidden_state
            return hidden.pow(2).mean()

    module = BaseOnly()
    with pytest.raises(RuntimeError, match="did not call the causal LM"):
        fit(tmp_path, combined_loss(), module=module)
    # the failure detached everything
    assert "training_step" not in vars(module)
    assert not module.model._forward_hooks and not module.model._forward_pre_hooks


def test_none_step_rejected(tmp_path):
    class Skipper(UserModule):
        def training_step(self, batch, batch_idx):
            self.model(**batch)
            return None

    with pytest.raises(RuntimeError, match="returned None"):
        fit(tmp_path, combined_loss(), module=Skipper())


def test_dict_return_keeps_other_keys(tmp_path):
    class DictStep(UserModule):
        def training_step(self, batch, batch_idx):
            loss = self.model(**batch).loss
            self.user_losses.append(loss.item())
            return {"loss": loss, "extra": torch.tensor(1.0)}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            assert "extra" in outputs
            self.returned.append(float(outputs["loss"]))

    _, module, _ = fit(tmp_path, combined_loss(), module=DictStep(), max_steps=1)
    assert module.returned == module.user_losses
    assert logged(tmp_path, "train/reg_loss")[0] > 1e-3


def test_bad_arguments_rejected():
    with pytest.raises(TypeError):
        EntropyRegularizer(torch.nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="prog_bar"):
        EntropyRegularizer(combined_loss(), prog_bar=("nope",))
    with pytest.raises(ValueError):
        EntropyRegularizer(combined_loss(), log_every_n_steps=-1)
    with pytest.raises(TypeError):
        EntropyRegularizer(combined_loss(), schedule=0.5)
    with pytest.raises(TypeError, match="one_pass"):
        EntropyRegularizer(combined_loss(), one_pass="yes")
    with pytest.raises(ValueError, match="hidden_path=True needs one_pass=True"):
        EntropyRegularizer(combined_loss(), one_pass=False, hidden_path=True)


class _RecordRankMetrics(Callback):
    """Writes each rank's reduced train/* metrics to a file (ddp_spawn ranks are separate processes)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        assert outputs["loss"].item() == pl_module.user_losses[-1]  # one pass: out.loss is CE + regs

    def on_train_end(self, trainer, pl_module):
        # train/* only: the user's own self.log("user_loss", ...) is a per-rank value
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(metrics))


@pytest.mark.slow
def test_ddp_two_ranks_see_identical_reduced_metrics(tmp_path):
    module = UserModule()
    trainer = Trainer(
        max_steps=2, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, log_every_n_steps=1,
        callbacks=[EntropyRegularizer(combined_loss()), _RecordRankMetrics(str(tmp_path))],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=random_batches())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert "train/entropy" in ranks[0]
    # each rank saw different batches; after the sum/count reduction both log the same global means
    assert ranks[0] == ranks[1]


class _FakeTwoRankStrategy:
    """reduce(sum) as if a second rank held `other`."""

    def __init__(self, other: torch.Tensor) -> None:
        self.other = other

    def reduce(self, tensor, reduce_op="mean"):
        assert reduce_op == "sum"
        return tensor + self.other


def test_stats_window_reduces_sums_and_counts_not_means():
    window = StatsWindow("train/")
    # rank 0: 1 token with entropy 1.0; rank 1: 3 tokens with entropy 3.0 each (sum 9.0)
    window.update({"entropy": torch.tensor(1.0, dtype=torch.float64)}, torch.tensor(1))
    other = torch.tensor([9.0, 3.0], dtype=torch.float64)  # [entropy sum, count]
    means = window.reduce(_FakeTwoRankStrategy(other))
    assert means["train/entropy"].item() == pytest.approx(10.0 / 4)  # not (1.0 + 3.0) / 2
    assert window.reduce(None) == {}  # reset after reduce
