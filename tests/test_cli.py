"""entropy-reg CLI: a short real fit of the tiny recipe, W&B offline files, overrides, dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from entropy_reg import cli as cli_mod
from entropy_reg.training.wandb_env import configure_wandb_env, wandb_api_key_configured

pytestmark = [
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
]

ROOT = Path(__file__).resolve().parents[1]
COMBINED = str(ROOT / "recipes" / "tiny" / "combined.yaml")

# Cheap GenerationEval and checkpointing for tests: the recipe's 11 prompts x 64 tokens x 2 decodings
# would dominate a 5-step run.
FAST_CALLBACKS = """
trainer:
  callbacks:
    - class_path: entropy_reg.callbacks.GenerationEval
      init_args:
        prompts: ["def add(a, b):", "The list type"]
        decodings: [greedy, top_p]
        max_new_tokens: 8
        batch_size: 2
        progress: false
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        save_last: true
        save_top_k: 0
"""


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc either
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def test_configure_wandb_env_without_key(tmp_path):
    env = {"NETRC": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    assert not wandb_api_key_configured(env)
    assert configure_wandb_env(env) == "offline"
    assert env["WANDB_MODE"] == "offline" and env["WANDB_SILENT"] == "true"


def test_configure_wandb_env_with_key_or_netrc(tmp_path):
    env = {"WANDB_API_KEY": "x" * 40}
    assert configure_wandb_env(env) == "online" and "WANDB_MODE" not in env
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    env = {"NETRC": str(netrc), "HOME": str(tmp_path)}
    assert wandb_api_key_configured(env) and configure_wandb_env(env) == "online"
    env = {"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.com", "HOME": str(tmp_path)}
    assert not wandb_api_key_configured(env)  # a key for another host does not count


def test_configure_wandb_env_keeps_explicit_offline_modes(tmp_path):
    env = {"WANDB_MODE": "disabled", "HOME": str(tmp_path)}
    assert configure_wandb_env(env) == "disabled"
    env = {"WANDB_MODE": "online", "HOME": str(tmp_path), "NETRC": str(tmp_path / "missing")}
    with pytest.warns(UserWarning, match="no W&B API key"):
        assert configure_wandb_env(env) == "offline"


def test_compare_dispatch(monkeypatch):
    seen = {}
    fake = types.ModuleType("entropy_reg.report.cli")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "entropy_reg.report.cli", fake)
    cli_mod.main(["compare", "runs/a", "runs/b", "--out", "x"])
    assert seen["argv"] == ["runs/a", "runs/b", "--out", "x"]


def test_compare_missing_report_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "entropy_reg.report.cli", None)  # import fails like a missing module
    with pytest.raises(SystemExit, match="report package"):
        cli_mod.main(["compare", "a", "b"])


@pytest.mark.parametrize("flag", ["--model.learning_rate", "--model.init_args.learning_rate"])
def test_overrides_both_spellings(flag, no_wandb_key):
    cli = cli_mod.EntropyRegCLI(
        args=["--config", COMBINED, flag, "0.0123", "--data.max_records", "8"], run=False
    )
    assert cli.model.hparams.learning_rate == pytest.approx(0.0123)
    # model -> data links: the datamodule got the model's tokenizer name
    assert cli.datamodule.tokenizer_name == "tiny"
    # unnamed WandbLogger is named after the recipe
    assert cli.trainer.logger._wandb_init["name"] == "tiny-combined"
    assert os.environ["WANDB_MODE"] == "offline"


@pytest.mark.slow
def test_tiny_combined_fit_5_steps_writes_offline_wandb_run(tmp_path, no_wandb_key):
    import wandb

    fast = tmp_path / "fast.yaml"
    fast.write_text(FAST_CALLBACKS)
    save_dir = tmp_path / "runs"
    cli = cli_mod.main([
        "fit", "--config", COMBINED, "--config", str(fast),
        "--trainer.max_steps", "5", "--trainer.val_check_interval", "5", "--trainer.limit_val_batches", "2",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(save_dir),
    ])
    wandb.finish()
    assert cli.trainer.global_step == 5
    metrics = cli.trainer.callback_metrics
    for key in ["train/loss", "train/ce", "train/entropy", "train/tail_mass", "train/copy_mass",
                "train/tail_mass_floor", "train/anti_copy", "train/entropy_floor", "val/loss", "val/ppl"]:
        assert key in metrics, key

    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    (history,) = runs[0].glob("run-*.wandb")
    from test_generation_eval import wait_for_wandb_history

    wait_for_wandb_history(history)  # wandb.finish() can return before wandb-core has written the log
    # The .wandb transaction log stores history keys as plain protobuf strings: enough to check them
    # without a W&B reader (wandb 0.31 ships none in Python).
    data = history.read_bytes()
    for key in [b"train/loss", b"train/entropy", b"train/tail_mass", b"train/copy_mass", b"train/anti_copy",
                b"train/reg_scale", b"val/loss", b"val/ppl", b"eval/greedy/seq_rep_4", b"eval/top_p/entropy_mean"]:
        assert key in data, key
    assert list(save_dir.glob("entropy-reg/*/checkpoints/last.ckpt"))
    assert (save_dir / "config.yaml").is_file()


def test_python_m_entropy_reg_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "entropy_reg", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "fit" in out.stdout and "compare" in out.stdout


def test_wandb_logger_replaced_by_csv_when_wandb_unavailable(monkeypatch, no_wandb_key, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    monkeypatch.setattr(cli_mod, "wandb_available", lambda: False)
    with pytest.warns(UserWarning, match="CSVLogger"):
        cli = cli_mod.EntropyRegCLI(
            args=["--config", COMBINED, "--data.max_records", "8", "--trainer.logger.init_args.save_dir",
                  str(tmp_path)],
            run=False,
        )
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert cli.trainer.logger.save_dir == str(tmp_path) and cli.trainer.logger.name == "tiny-combined"
