"""Resume after a crash mid-epoch: CausalLMModule + SFTDataModule continue exactly as an uninterrupted run.

An exception is injected at step 3 of 8 (mid-epoch; LR warm-up + cosine spans it); the run resumes
from the last checkpoint. Compared: data order, final parameters, per-step lr and train/* statistics.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from test_resume import TINY, assert_same_params, read_metrics, trainer_for

from entropy_reg.data import SFTDataModule
from entropy_reg.losses import AntiCopyPenalty, EntropyRegularizedLoss, TailMassFloor
from entropy_reg.module import CausalLMModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
]


class _CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected crash at step {self.step}")


class _RecordBatches(Callback):
    def __init__(self) -> None:
        self.first_ids: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.first_ids.append(batch["input_ids"][:, 1].tolist())


def lm_run(tmp_path: Path, version: str, ckpt_path: str | None = None, crash_at: int | None = None):
    seed_everything(0)
    loss = EntropyRegularizedLoss([TailMassFloor(top_k=5, floor=0.5), AntiCopyPenalty(weight=0.5)])
    module = CausalLMModule(tiny_config=TINY, loss=loss, learning_rate=3e-3, warmup_steps=3, lr_schedule="cosine")
    dm = SFTDataModule(tokenizer=module.tokenizer, batch_size=4, max_length=48, max_records=20, seed=0)
    record = _RecordBatches()
    callbacks = [
        ModelCheckpoint(dirpath=tmp_path / "lm_ckpt" / version, save_last=True, save_top_k=0, every_n_train_steps=1),
        LearningRateMonitor(logging_interval="step"), record,
    ]
    if crash_at is not None:
        callbacks.append(_CrashAt(crash_at))
    # 20 rows / 4 = 5 batches per epoch: 8 steps cross an epoch boundary; the crash at 3 is mid-epoch.
    trainer = trainer_for(tmp_path, version, 8, callbacks, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, record


def test_causal_lm_module_resumes_mid_epoch_after_a_crash(tmp_path):
    _, full, full_batches = lm_run(tmp_path, "full")
    with pytest.raises(RuntimeError, match="injected crash at step 3"):
        lm_run(tmp_path, "crashed", crash_at=3)
    trainer, resumed, resumed_batches = lm_run(tmp_path, "resumed", ckpt_path=str(tmp_path / "lm_ckpt" / "crashed" / "last.ckpt"))
    assert trainer.global_step == 8
    # Same data order: the resumed run continues with batch 4 of epoch 0, then epoch 1's order.
    assert resumed_batches.first_ids == full_batches.first_ids[3:]
    assert_same_params(full, resumed)

    expected = read_metrics(tmp_path / "logs" / "full")
    got = read_metrics(tmp_path / "logs" / "crashed", tmp_path / "logs" / "resumed")
    for step in range(8):
        for key in ("lr-AdamW/pg1", "train/loss", "train/entropy", "train/tail_mass", "train/reg_scale"):
            assert got[step].get(key) == pytest.approx(expected[step][key], rel=1e-5, abs=1e-8), (step, key, got[step])
    assert expected[0]["lr-AdamW/pg1"] == pytest.approx(1e-3)  # warm-up 1/3 of 3e-3
