"""``--ckpt_path`` resumes a run as it was (or refuses, listing what differs); ``--model.init_from`` starts anew.

All through ``entropy-reg fit`` in-process, on a 2-step run of the tiny combined recipe (1-layer model).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from entropy_reg import cli as cli_mod

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "tiny"
TINY = "{n_layer: 1, n_embd: 32, n_head: 2, intermediate_size: 64}"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
]


def quiet(root: Path, callbacks: str = "[]") -> list[str]:
    return ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.callbacks", callbacks,
            "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
            "--trainer.default_root_dir", str(root), "--trainer.enable_checkpointing", str(callbacks != "[]").lower()]


SMALL = ["--data.max_records", "32", "--data.max_length", "48", "--data.batch_size", "4", "--model.tiny_config", TINY]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """last.ckpt of a 2-step run of recipes/tiny/combined.yaml (3 regularizers, lr 2e-3, 1-layer model)."""
    root = tmp_path_factory.mktemp("run")
    save = ("[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
            f"{{dirpath: {root / 'ck'}, save_last: true, save_top_k: 0}}}}]")
    cli = cli_mod.main(["fit", "--config", str(RECIPES / "combined.yaml"), *SMALL, "--trainer.max_steps", "2",
                        *quiet(root, save)])
    assert cli.trainer.global_step == 2
    return str(root / "ck" / "last.ckpt")


def fit(tmp_path: Path, recipe: str, *args: str, steps: int = 3):
    return cli_mod.main(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), *SMALL, "--trainer.max_steps",
                         str(steps), *quiet(tmp_path), *args])


def fails(capsys, tmp_path: Path, recipe: str, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        fit(tmp_path, recipe, *args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("entropy-reg: error: ")]
    return line


def test_resume_with_the_same_command_continues_the_run(tmp_path, ckpt):
    cli = fit(tmp_path, "combined", "--ckpt_path", ckpt)
    assert cli.trainer.global_step == 3  # continued from step 2
    assert len(cli.model.loss_fn.regularizers) == 3
    assert "train/anti_copy" in cli.trainer.callback_metrics


@pytest.mark.parametrize(
    ("recipe", "args", "differences"),
    [
        # the case: another recipe and a changed learning rate and model size are refused, all listed
        ("baseline", ["--model.learning_rate", "1e-5", "--model.tiny_config",
                      "{n_layer: 2, n_embd: 32, n_head: 2, intermediate_size: 64}"],
         ["model.learning_rate: 1e-05 here, 0.002 in the checkpoint",
          "model.tiny_config.n_layer: 2 here, 1 in the checkpoint",
          "model.loss.init_args.regularizers: 0 items here, 3 in the checkpoint",
          "model.loss.init_args.copy_window: None here, 16 in the checkpoint"]),
        ("combined", ["--data.max_records", "16"], ["data.max_records: 16 here, 32 in the checkpoint"]),
        ("combined", ["--model.init_from", "x.ckpt"], ["model.init_from: 'x.ckpt' here, None in the checkpoint"]),
    ],
    ids=["recipe-lr-size", "data", "init_from"],
)
def test_resume_refuses_changed_settings_and_lists_them(tmp_path, ckpt, capsys, recipe, args, differences):
    line = fails(capsys, tmp_path, recipe, *args, "--ckpt_path", ckpt)
    assert f"--ckpt_path {ckpt!r} resumes that run as it was" in line
    for difference in differences:
        assert difference in line, line
    assert f"--model.init_from {ckpt}" in line  # what to do instead


def test_resume_takes_left_out_settings_from_the_checkpoint(tmp_path, ckpt):
    # Only the classes: model, loss and data settings all come from the checkpoint.
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  class_path: entropy_reg.module.CausalLMModule\n"
                    "data:\n  class_path: entropy_reg.data.SFTDataModule\n")
    cli = cli_mod.main(["fit", "--config", str(bare), "--trainer.max_steps", "3", "--data.num_workers", "0",
                        *quiet(tmp_path), "--ckpt_path", ckpt])
    assert cli.trainer.global_step == 3
    saved = torch.load(ckpt, weights_only=False)
    for key in ("learning_rate", "tiny_config", "loss", "warmup_steps"):
        assert cli.model.hparams[key] == saved["hyper_parameters"][key], key
    assert cli.datamodule.max_records == 32 and cli.datamodule.max_length == 48


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_unreadable_checkpoint_names_the_file(tmp_path, ckpt, capsys, damage):
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes(b"" if damage == "empty" else Path(ckpt).read_bytes()[: os.path.getsize(ckpt) // 2])
    line = fails(capsys, tmp_path, "combined", "--ckpt_path", str(bad))
    assert str(bad) in line and ("empty (0 bytes)" in line if damage == "empty" else "truncated" in line)
    line = fails(capsys, tmp_path, "combined", "--model.init_from", str(bad))
    assert str(bad) in line
    assert "checkpoint not found" in fails(capsys, tmp_path, "combined", "--ckpt_path", str(tmp_path / "no.ckpt"))


def test_init_from_starts_a_new_run_from_the_weights(tmp_path, ckpt):
    saved = torch.load(ckpt, weights_only=False)
    cli = cli_mod.EntropyRegCLI(args=["--config", str(RECIPES / "baseline.yaml"), *SMALL, "--trainer.max_steps", "1",
                                      "--model.learning_rate", "1e-3", "--model.init_from", ckpt, *quiet(tmp_path)],
                                run=False)
    for key, value in cli.model.model.state_dict().items():  # the checkpoint's weights ...
        torch.testing.assert_close(value, saved["state_dict"][f"model.{key}"], rtol=0, atol=0, msg=key)
    assert cli.model.loss_fn.regularizers == []  # ... with this run's loss and settings
    assert cli.model.hparams.learning_rate == 1e-3 and cli.model.hparams.init_from == ckpt
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1  # step 0, not the checkpoint's 2
    steps = {float(state["step"]) for state in cli.trainer.optimizers[0].state.values()}
    assert steps == {1.0}  # a fresh optimizer: one update, not the checkpoint's 2 + 1
    assert "train/loss" in cli.trainer.callback_metrics and "train/anti_copy" not in cli.trainer.callback_metrics


def test_init_from_another_architecture_names_the_checkpoint(tmp_path, ckpt, capsys):
    line = fails(capsys, tmp_path, "baseline", "--model.tiny_config",
                 "{n_layer: 2, n_embd: 32, n_head: 2, intermediate_size: 64}", "--model.init_from", ckpt)
    assert f"checkpoint {ckpt!r} does not fit the model" in line and "'n_layer': 1" in line
