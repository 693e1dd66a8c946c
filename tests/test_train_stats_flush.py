"""Runs shorter than the log cadence still log their training statistics (the open window is flushed at
the end of training): Lightning's default log_every_n_steps=50 with max_steps=2, on the three paths."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from test_callback import UserModule, combined_loss, random_batches
from test_hf_trainer import hf_args, reg_loss, rows
from test_numerics import TINY, lm_batches

from entropy_reg.callbacks import EntropyRegularizer
from entropy_reg.module import CausalLMModule


def short_trainer(tmp_path, callbacks=(), max_steps=2, **kwargs) -> Trainer:
    # No log_every_n_steps: Lightning's default (50) is far above max_steps.
    return Trainer(max_steps=max_steps, accelerator="cpu", devices=1, callbacks=list(callbacks),
                   logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def csv_rows(trainer: Trainer) -> list[dict[str, str]]:
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def _entropy_rows(trainer):
    return [r for r in csv_rows(trainer) if r.get("train/entropy")]


def test_module_path_logs_the_open_window_at_the_end(tmp_path):
    torch.manual_seed(0)
    module = CausalLMModule(tiny_config=TINY, loss=combined_loss())
    trainer = short_trainer(tmp_path)
    assert trainer.log_every_n_steps == 50
    trainer.fit(module, train_dataloaders=lm_batches(4))
    logged = _entropy_rows(trainer)
    assert len(logged) == 1 and int(logged[0]["step"]) == 2  # one flush at the end, at the final step
    row = logged[0]
    assert float(row["train/entropy"]) > 0 and row["train/ce"] and row["train/reg_scale"]


def test_module_path_does_not_log_twice_when_the_window_is_empty(tmp_path):
    module = CausalLMModule(tiny_config=TINY)
    trainer = short_trainer(tmp_path, log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=lm_batches(4))
    assert [int(r["step"]) for r in _entropy_rows(trainer)] == [0, 1]  # the per-step logs; nothing left open


def test_callback_path_logs_the_open_window_at_the_end(tmp_path):
    cb = EntropyRegularizer(combined_loss())
    trainer = short_trainer(tmp_path, [cb])
    trainer.fit(UserModule(), train_dataloaders=random_batches())
    logged = _entropy_rows(trainer)
    assert len(logged) == 1 and int(logged[0]["step"]) == 2
    assert float(logged[0]["train/entropy"]) > 0 and logged[0]["train/anti_copy"]


def test_hf_trainer_logs_the_open_window_in_its_final_summary(tmp_path):
    from datasets import Dataset
    from tiny_models import tiny_llama
    from transformers import Trainer as HFTrainer

    from entropy_reg.hf import EntropyRegularizedTrainerLoss, attach

    trainer = HFTrainer(model=tiny_llama(0), args=hf_args(tmp_path, max_steps=2, logging_steps=500),
                        train_dataset=Dataset.from_list(rows(8)),
                        compute_loss_func=EntropyRegularizedTrainerLoss(reg_loss()))
    attach(trainer)
    trainer.train()
    assert not [h for h in trainer.state.log_history if "loss" in h]  # no regular log at logging_steps=500
    summary = [h for h in trainer.state.log_history if "train_runtime" in h]
    assert len(summary) == 1
    assert summary[0]["entropy"] > 0 and "ce" in summary[0] and "anti_copy" in summary[0]
    assert summary[0]["reg_scale"] == pytest.approx(1.0)
