"""CausalLMModule: hidden-state path == logits path, hparams/checkpoint contract, validation metrics."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tiny_models import TINY, three_term_loss, tiny_sft_datamodule

from entropy_reg.data import SFTDataModule
from entropy_reg.losses import EntropyRegularizedLoss
from entropy_reg.module import CausalLMModule, build_loss, describe

pytestmark = pytest.mark.filterwarnings("ignore:SFTDataModule. truncated")


def regularized_loss() -> EntropyRegularizedLoss:
    return three_term_loss(top_k=5, floor=0.5, min_entropy=8.0, weights=(1.0, 0.5, 0.2))


@pytest.fixture(scope="module")
def datamodule() -> SFTDataModule:
    return tiny_sft_datamodule(max_length=96, max_records=24)


@pytest.fixture(scope="module")
def batch(datamodule) -> dict[str, torch.Tensor]:
    return next(iter(datamodule.train_dataloader()))


def test_hidden_path_matches_logits_path(batch):
    module = CausalLMModule(tiny_config=TINY, loss=regularized_loss())
    grads = []
    losses = []
    for hidden in (True, False):
        module.hparams.use_hidden_path = hidden
        module.zero_grad()
        out = module._loss(batch)
        out.loss.backward()
        losses.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    assert losses[0].loss.item() == pytest.approx(losses[1].loss.item(), rel=1e-5)
    for key in losses[0].metrics:
        assert losses[0].metrics[key].item() == pytest.approx(losses[1].metrics[key].item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_hparams_and_state_dict_contract():
    module = CausalLMModule(tiny_config=TINY, loss=regularized_loss(), learning_rate=1e-3)
    hp = module.hparams
    assert hp.model_name_or_path == "tiny" and hp.gguf_file is None and hp.tiny_config == TINY
    assert hp.loss["class_path"].endswith("EntropyRegularizedLoss")
    names = [r["class_path"].rsplit(".", 1)[1] for r in hp.loss["init_args"]["regularizers"]]
    assert names == ["TailMassFloor", "AntiCopyPenalty", "EntropyFloor"]
    assert all(k.startswith("model.") for k in module.state_dict())
    assert module.tokenizer is not None and len(module.tokenizer) == module.model.config.vocab_size
    # the stored description rebuilds an equivalent loss
    rebuilt = build_loss(hp.loss)
    assert describe(rebuilt) == hp.loss
    assert CausalLMModule(tiny_config=TINY).loss_fn.regularizers == []


def test_fallback_to_logits_when_model_transforms_logits(batch):
    module = CausalLMModule(tiny_config=TINY)
    module.model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in module._hidden_path_blocker()
    with pytest.warns(UserWarning, match="computing full logits"):
        out = module._loss(batch)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    "kwargs", [{"learning_rate": 0.0}, {"weight_decay": -1.0}, {"warmup_steps": -1}, {"lr_schedule": "step"}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CausalLMModule(tiny_config=TINY, **kwargs)


def test_fit_validate_and_checkpoint_roundtrip(tmp_path, datamodule):
    from entropy_reg.models import load_checkpoint_model

    module = CausalLMModule(tiny_config=TINY, loss=regularized_loss(), warmup_steps=1, learning_rate=1e-3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = Trainer(
        max_steps=3, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), log_every_n_steps=1,
        limit_val_batches=2, val_check_interval=3, num_sanity_val_steps=0, callbacks=[ckpt],
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    m = trainer.callback_metrics
    for key in ["train/loss", "train/ce", "train/entropy", "train/tail_mass", "train/copy_mass",
                "train/tail_mass_floor", "train/anti_copy", "train/entropy_floor", "train/reg_scale",
                "val/loss", "val/ppl", "val/entropy"]:
        assert key in m, key
    assert float(m["val/ppl"]) == pytest.approx(math.exp(float(m["val/loss"])), rel=1e-5)
    # train/loss (CE + regularizers) exceeds train/ce when the hinges are active
    assert float(m["train/loss"]) > float(m["train/ce"])
    header = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/entropy" in header and "val/ppl" in header

    model = load_checkpoint_model(tmp_path / "ckpt" / "last.ckpt")
    for (k, a), b in zip(module.model.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_lr_schedule_warmup_then_cosine(tmp_path):
    module = CausalLMModule(tiny_config=TINY, warmup_steps=2, learning_rate=1.0)
    trainer = Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False)
    module.trainer = trainer
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.1
    assert all(a >= b for a, b in zip(lrs[1:-1], lrs[2:], strict=True))  # monotone after warm-up
