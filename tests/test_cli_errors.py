"""``entropy-reg fit``: every user error is one ``entropy-reg: error:`` line, exit 2, no traceback; bugs keep theirs.

Runs the CLI in-process (the same ``main`` the console script calls); one subprocess test checks what
a shell user sees. Data-file and checkpoint cases are also covered below the CLI in test_data.py and
test_resume_cli.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_reg import cli as cli_mod
from entropy_reg.data import SFTDataModule

ROOT = Path(__file__).resolve().parents[1]
COMBINED = str(ROOT / "recipes" / "tiny" / "combined.yaml")
TINY = "{n_layer: 1, n_embd: 32, n_head: 2, intermediate_size: 64}"

pytestmark = [pytest.mark.timeout(180), pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")]


@pytest.fixture
def fast(tmp_path) -> list[str]:
    """Arguments of a tiny, quiet, logger-free 1-step run whose files land in tmp_path."""
    return ["--trainer.max_steps", "1", "--data.max_records", "32", "--data.max_length", "48",
            "--data.batch_size", "4", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--model.tiny_config", TINY,
            "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path / "root")]


def fit_fails(capsys, *args: str) -> str:
    """Run ``entropy-reg fit`` in-process; assert exit 2, one error line, no traceback; return the line."""
    with pytest.raises(SystemExit) as info:
        cli_mod.main(["fit", "--config", COMBINED, *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Namespace(" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("entropy-reg: error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def regularizer_yaml(tmp_path: Path, class_path: str, init_args: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model:\n  init_args:\n    loss:\n      init_args:\n        regularizers:\n"
        f"          - class_path: entropy_reg.losses.{class_path}\n            init_args: {init_args}\n"
    )
    return str(path)


@pytest.mark.parametrize(
    ("class_path", "init_args", "needles"),
    [("TailMassFloor", "{top_k: 5, floor: 0.1, weight: -1.0}", ["TailMassFloor", "weight", "-1"]),
     ("TailMassFloor", "{top_k: 0, floor: 0.1}", ["TailMassFloor", "top_k", "0"]),
     ("TailMassFloor", "{top_k: 5, floor: 2}", ["TailMassFloor", "floor", "2"])],
)
def test_regularizer_value_rejected_in_a_recipe(tmp_path, capsys, fast, class_path, init_args, needles):
    line = fit_fails(capsys, *fast, "--config", regularizer_yaml(tmp_path, class_path, init_args))
    assert "invalid configuration" in line and "--config file or on the command line" in line
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(
    ("option", "value", "needles"),
    [("--model.learning_rate", "-1", ["CausalLMModule", "learning_rate", "-1"]),
     ("--model.loss.init_args.copy_window", "0", ["copy_window", "0"]),
     ("--model.loss.init_args.chunk_size", "-1", ["chunk_size", "-1"]),
     ("--data.max_length", "1", ["SFTDataModule", "max_length", "1"]),
     ("--data.batch_size", "0", ["SFTDataModule", "batch_size", "0"])],
)
def test_value_rejected_on_the_command_line(capsys, fast, option, value, needles):
    line = fit_fails(capsys, *fast, option, value)
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(
    ("content", "needles"),
    [("", ["is empty"]), ("\n \n", ["only blank lines"]),
     ('{"prompt": "a", "response": "b"}\n{"prompt": "a" "response": "b"}\n', ["line 2", "invalid JSON"])],
    ids=["empty", "blank-only", "malformed-line"],
)
def test_bad_data_file(tmp_path, capsys, fast, content, needles):
    data = tmp_path / "rows.jsonl"
    data.write_text(content)
    line = fit_fails(capsys, *fast, "--data.dataset", str(data))
    for needle in [str(data), *needles]:
        assert needle in line, line


def test_data_directory_and_mistyped_path(tmp_path, capsys, fast, monkeypatch):
    assert "is a directory" in fit_fails(capsys, *fast, "--data.dataset", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    line = fit_fails(capsys, *fast, "--data.dataset", "data/good.jsnl")
    assert "dataset file not found: 'data/good.jsnl'" in line and "hub" not in line


def test_bad_row_names_file_row_and_key(tmp_path, capsys, fast):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "answer": "a"}\n{"prompt": "q", "answer": "b"}\n')
    line = fit_fails(capsys, *fast, "--data.dataset", str(data))
    assert "d.jsonl: row 0" in line and "'response' is missing" in line and "response_field" in line


def test_one_row_dataset_and_all_validation_rows_dropped(tmp_path, capsys, fast):
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompt": "p", "response": "a short answer"}\n')
    line = fit_fails(capsys, *fast, "--data.dataset", str(one))
    assert "one.jsonl: 1 row cannot be split" in line and "val_fraction" in line
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "response": "short"}\n' * 8)
    long_val = tmp_path / "long_val.jsonl"
    long_val.write_text(('{"prompt": "p", "response": "%s"}\n' % ("word " * 60)) * 3)
    line = fit_fails(capsys, *fast, "--data.dataset", str(rows), "--data.val_dataset", str(long_val),
                     "--data.truncation", "drop")
    assert "long_val.jsonl: all 3 validation rows were dropped" in line


def test_unwritable_output_directory_is_a_user_error(tmp_path, capsys, fast):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # no directory can be created below a file, even as root
    line = fit_fails(capsys, *fast, "--trainer.default_root_dir", str(blocker / "run"))
    assert f"output directory {str(blocker / 'run')!r}" in line and "not writable" in line


def test_a_bug_keeps_its_traceback(capsys, fast, monkeypatch):
    def broken_setup(self, stage=None):
        raise KeyError("a bug inside the package")

    monkeypatch.setattr(SFTDataModule, "setup", broken_setup)
    with pytest.raises(KeyError, match="a bug inside the package"):
        cli_mod.main(["fit", "--config", COMBINED, *fast])
    assert "entropy-reg: error:" not in capsys.readouterr().err


def test_shell_user_sees_one_line_and_exit_2(tmp_path, fast):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "entropy_reg", "fit", "--config", COMBINED, *fast,
                          "--model.learning_rate", "-1"], capture_output=True, text=True, env=env, timeout=150,
                         stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "entropy-reg: error: invalid configuration: CausalLMModule: learning_rate must be a finite number > 0, "
        "got -1.0 (fix it in the --config file or on the command line)")


def test_setting_found_wrong_during_fit_is_a_user_error(capsys, fast):
    line = fit_fails(capsys, *fast, "--trainer.max_steps", "-1", "--trainer.max_epochs", "-1")
    assert "lr_schedule='cosine' needs a finite number of steps" in line


def test_exit_on_user_error_finds_wrapped_user_errors_and_lets_bugs_through(capsys):
    from entropy_reg.errors import UserError, exit_on_user_error

    with pytest.raises(SystemExit) as info, exit_on_user_error("prog"):
        try:
            raise UserError("data.jsonl: line 3:\n  invalid JSON")
        except UserError as exc:
            raise RuntimeError("a framework's wrapper") from exc  # as Lightning and jsonargparse re-raise
    assert info.value.code == 2
    assert capsys.readouterr().err == "prog: error: data.jsonl: line 3: invalid JSON\n"
    with pytest.raises(KeyError), exit_on_user_error("prog"):
        raise KeyError("a bug")
