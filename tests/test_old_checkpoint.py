"""Checkpoints written before the package restructure still load, resume and export.

The fixtures are 2-step runs of recipes/tiny/baseline.yaml and recipes/tiny/ditto.yaml (1-layer,
32-wide tiny model, 32 records of 48 tokens, batch 4) written by the code of commit 01fcbb2, i.e. with
the class paths of that layout in their hyper-parameters.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from entropy_reg import cli as cli_mod
from entropy_reg.models import load_checkpoint_model, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = "{n_layer: 1, n_embd: 32, n_head: 2, intermediate_size: 64}"

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
]


@pytest.mark.parametrize("recipe", ["baseline", "ditto"])
def test_old_checkpoint_loads_resumes_and_exports(tmp_path, recipe):
    ckpt = FIXTURES / f"old_tiny_{recipe}.ckpt"
    saved = read_checkpoint(ckpt)
    assert saved["global_step"] == 2
    assert saved["hyper_parameters"]["_class_path"] == "entropy_reg.module.CausalLMModule"
    assert load_checkpoint_model(ckpt) is not None

    cli = cli_mod.main([
        "fit", "--config", str(ROOT / "recipes" / "tiny" / f"{recipe}.yaml"),
        "--data.max_records", "32", "--data.max_length", "48", "--data.batch_size", "4",
        "--model.tiny_config", TINY, "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_checkpointing", "false",
        "--ckpt_path", str(ckpt),
    ])
    assert cli.trainer.global_step == 3  # continued from step 2

    out = tmp_path / "export"
    assert cli_mod.main(["export", str(ckpt), "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
