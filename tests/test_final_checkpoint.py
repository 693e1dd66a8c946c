"""last.ckpt holds the step the run ended at, whatever every_n_train_steps and max_steps are."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from entropy_reg.cli import main

pytestmark = [pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
              pytest.mark.filterwarnings("ignore:SFTDataModule. truncated")]

ROOT = Path(__file__).resolve().parents[1]


def test_fit_saves_last_checkpoint_at_the_final_step(tmp_path, monkeypatch):
    # The recipe as users launch it: ModelCheckpoint(every_n_train_steps=200) and no validation loop;
    # 5 steps is not a multiple of 3, the period given here (the main job's case: 40 steps, period 30).
    monkeypatch.setenv("WANDB_MODE", "disabled")
    main(["fit", "--config", str(ROOT / "recipes" / "tiny" / "baseline.yaml"), "--trainer.max_steps=5",
          "--trainer.limit_val_batches=0", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.callbacks=[]", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
          f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}", "--trainer.callbacks.save_last=true",
          "--trainer.callbacks.save_top_k=0", "--trainer.callbacks.every_n_train_steps=3",
          "--trainer.enable_progress_bar=false", "--data.init_args.max_records=64"])
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5
