"""Resume: ``max_steps=N``, then ``max_steps=2N`` with ``ckpt_path``, equals one uninterrupted run.

User module + EntropyRegularizer with a CoefficientSchedule warm-up spanning the stop. Compared: final
parameters, and per logged step train/reg_scale and the train/* statistics (and their log cadence).
Helpers here are shared with test_resume_lm.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_callback import UserModule, combined_loss, random_batches

from entropy_reg.callbacks import CoefficientSchedule, EntropyRegularizer

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
    pytest.mark.filterwarnings("ignore:.*val_dataloader.*"),
]

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_position_embeddings": 64}


def read_metrics(*dirs: Path) -> dict[int, dict[str, float]]:
    """step -> {metric: value} over the metrics.csv files of one or more CSVLogger runs."""
    rows: dict[int, dict[str, float]] = {}
    for d in dirs:
        with open(d / "metrics.csv") as f:
            for row in csv.DictReader(f):
                step = int(row.pop("step"))
                rows.setdefault(step, {}).update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def trainer_for(tmp_path: Path, version: str, max_steps: int, callbacks: list, **kwargs) -> Trainer:
    return Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, callbacks=callbacks,
        logger=CSVLogger(tmp_path, name="logs", version=version), default_root_dir=tmp_path,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs,
    )


def assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------ user module + callback
def regularizer() -> EntropyRegularizer:
    # The ramp (hold 1 step, then 6 steps from 0 to 1) spans the stop at step 4.
    schedule = CoefficientSchedule(warmup_steps=6, hold_steps=1, start=0.0, end=1.0)
    return EntropyRegularizer(combined_loss(), schedule=schedule, log_every_n_steps=2)


def user_run(tmp_path: Path, version: str, max_steps: int, ckpt_path: str | None = None):
    seed_everything(0)
    module = UserModule()
    # every_n_train_steps: saved at on_train_batch_end. (An epoch-end checkpoint written when max_steps
    # stops exactly at an epoch's last batch resumes, in Lightning 2.6, into a one-batch epoch: see
    # docs/distributed.md.)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt" / version, save_last=True, save_top_k=0, every_n_train_steps=2)
    trainer = trainer_for(tmp_path, version, max_steps, [regularizer(), ckpt], log_every_n_steps=2)
    # 4 fixed batches per epoch: the stop at step 4 is an epoch boundary, so the user's plain DataLoader
    # needs no state (mid-epoch resumption of SFTDataModule is tested below).
    trainer.fit(module, train_dataloaders=random_batches(n=4), ckpt_path=ckpt_path)
    return trainer, module


def test_user_module_with_schedule_resumes_exactly(tmp_path):
    _, full = user_run(tmp_path, "full", max_steps=8)
    user_run(tmp_path, "part1", max_steps=4)
    trainer, resumed = user_run(tmp_path, "part2", max_steps=8, ckpt_path=str(tmp_path / "ckpt" / "part1" / "last.ckpt"))
    assert trainer.global_step == 8
    assert_same_params(full, resumed)

    expected = read_metrics(tmp_path / "logs" / "full")
    assert max(read_metrics(tmp_path / "logs" / "part2")) == 7 and min(read_metrics(tmp_path / "logs" / "part2")) == 5
    got = read_metrics(tmp_path / "logs" / "part1", tmp_path / "logs" / "part2")
    # log_every_n_steps=2: the resumed run keeps the cadence (steps 1, 3, 5, 7), not a restarted one.
    assert sorted(s for s in got if "train/reg_scale" in got[s]) == [1, 3, 5, 7]
    assert got.keys() == expected.keys()
    for step in expected:
        for key in ("train/reg_scale", "train/loss", "train/entropy", "train/tail_mass", "train/copy_mass"):
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    # the warm-up really spans the interruption
    assert expected[3]["train/reg_scale"] == pytest.approx(2 / 6)
    assert expected[5]["train/reg_scale"] == pytest.approx(4 / 6)
