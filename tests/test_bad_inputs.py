"""Bad inputs through ``entropy-reg fit``: a clear message, exit 2 without a traceback, nothing lost.

Each failing run targets a run directory that already holds a config.yaml and a checkpoint from an
earlier run; both must be byte-identical afterwards. (Row-level data errors — missing fields, wrong
types, empty responses, over-long rows — are tested on SFTDataModule in test_data.py; here one data
error goes through the whole CLI.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_reg import cli as cli_mod

ROOT = Path(__file__).resolve().parents[1]
COMBINED = str(ROOT / "recipes" / "tiny" / "combined.yaml")
SMALL = ["--trainer.max_steps", "1", "--data.init_args.max_records", "32", "--data.init_args.max_length", "64",
         "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false"]

pytestmark = [pytest.mark.timeout(180), pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")]


def run_fit(tmp_path: Path, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "2", **(env or {})}
    cmd = [sys.executable, "-m", "entropy_reg", "fit", "--config", COMBINED, *SMALL,
           "--trainer.logger.init_args.save_dir", str(tmp_path / "run"), *args]
    # stdin closed: a prompt (e.g. a W&B login) would fail instead of hanging until the timeout.
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)


def fit_in_process(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    """``entropy-reg fit`` in this process (seconds instead of a subprocess' ~20 s): (exit status, stderr)."""
    try:
        with pytest.raises(SystemExit) as info:
            cli_mod.main(["fit", "--config", COMBINED, *SMALL, "--trainer.logger.init_args.save_dir",
                          str(tmp_path / "run"), *args])
    finally:
        # Lightning's teardown after an error in fit may have started a (disabled) W&B run in this
        # process; a later WandbLogger would silently reuse it.
        import wandb

        wandb.finish()
    return info.value.code, capsys.readouterr().err


@pytest.fixture
def run_dir(tmp_path) -> dict[Path, bytes]:
    """An earlier run's files in the run directory; returns their contents."""
    files = {tmp_path / "run" / "config.yaml": b"# an earlier run's config\n",
             tmp_path / "run" / "checkpoints" / "last.ckpt": b"an earlier run's checkpoint"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def assert_untouched(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.read_bytes() == data, f"{path} was changed by a failing run"


def test_typo_in_a_recipe_key(tmp_path, run_dir, capsys):
    code, err = fit_in_process(tmp_path, capsys, "--model.init_args.lerning_rate", "1e-3")
    assert code == 2, err[-2000:]
    assert "entropy-reg: error: unknown key 'lerning_rate' in --model." in err
    assert len(err.strip().splitlines()) == 1, err
    assert "did you mean 'learning_rate'?" in err
    assert_untouched(run_dir)


def test_unknown_regularizer_class(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model:\n  init_args:\n    loss:\n      class_path: entropy_reg.losses.EntropyRegularizedLoss\n"
        "      init_args:\n        regularizers:\n          - class_path: entropy_reg.losses.TailFloor\n"
        "            init_args: {weight: 1.0}\n"
    )
    with pytest.raises(SystemExit) as info:  # parsing fails before anything is built: in-process is cheap
        cli_mod.EntropyRegCLI(args=["--config", COMBINED, "--config", str(bad)], run=False)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "has no attribute 'TailFloor'" in err and "did you mean entropy_reg.losses.TailMassFloor?" in err


def test_dataset_with_zero_usable_rows(tmp_path, run_dir, capsys):
    code, err = fit_in_process(tmp_path, capsys, "--data.init_args.truncation", "drop",
                               "--data.init_args.max_length", "4")
    assert code == 2
    assert "no usable training rows" in err and "raise max_length" in err
    assert "Traceback" not in err
    assert_untouched(run_dir)  # the data fail before the config is saved


def test_missing_dataset_field(tmp_path, run_dir, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "answer": "a"}\n{"prompt": "q", "answer": "b"}\n')
    code, err = fit_in_process(tmp_path, capsys, "--data.init_args.dataset", str(data))
    assert code == 2
    assert re.search(r"d\.jsonl: row 0.*'response' is missing.*response_field", err)
    assert_untouched(run_dir)


def test_unwritable_output_directory(tmp_path, capsys):
    code, err = fit_in_process(tmp_path, capsys, "--trainer.default_root_dir", "/proc/x",
                               "--trainer.logger.init_args.save_dir", "/proc/x")
    assert code == 2
    assert "output directory '/proc/x'" in err and "is not writable" in err
    assert "Traceback" not in err  # a configuration error, not a crash
    assert not Path("/proc/x").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_output_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as info:
            cli_mod.EntropyRegCLI(args=["--config", COMBINED, "--trainer.logger.init_args.save_dir", str(ro / "x")],
                                  run=False)
    finally:
        ro.chmod(0o755)
    assert info.value.code == 2 and "is not writable" in capsys.readouterr().err
