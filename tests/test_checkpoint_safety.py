"""A checkpoint is data, not code (issue 21, part 4).

Every place that opens a ``.ckpt`` reads it with ``torch.load(weights_only=True)`` and a small allow-list
(:data:`entropy_reg.models.loading.CHECKPOINT_SAFE_GLOBALS`). A checkpoint of this project with one extra
pickled object whose ``__reduce__`` would create a marker file is refused by every entry point, in one
line (exit 2 on the command line), and the marker never appears; with the opt-in
(``--trust-checkpoint``, ``trust=True``, ``ENTROPY_REG_TRUST_CHECKPOINT=1``) it loads, and runs.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch

from entropy_reg import cli as cli_mod
from entropy_reg.errors import UserError
from entropy_reg.models import TRUST_ENV, load_model_and_tokenizer, read_checkpoint, trusted_checkpoints
from entropy_reg.models.loading import CHECKPOINT_SAFE_GLOBALS

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
BASELINE = FIXTURES / "old_tiny_baseline.ckpt"  # 2 steps of recipes/tiny/baseline.yaml, 1-layer tiny model
TINY = "{n_layer: 1, n_embd: 32, n_head: 2, intermediate_size: 64}"
FIT = ["fit", "--config", str(ROOT / "recipes" / "tiny" / "baseline.yaml"), "--data.max_records", "32",
       "--data.max_length", "48", "--data.batch_size", "4", "--model.tiny_config", TINY,
       "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.callbacks", "[]",
       "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false"]

pytestmark = [
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
]


class Payload:
    """What an attacker pickles: unpickling calls ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A real checkpoint of this project plus one pickled ``Payload``; returns (path, marker)."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    ckpt = torch.load(BASELINE, map_location="cpu", weights_only=True)
    marker = tmp_path / "MARKER"
    ckpt["note"] = Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    assert not marker.exists()
    return path, marker


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``entropy-reg ARGS`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    try:
        result = cli_mod.main([str(a) for a in args])
        rc = result if isinstance(result, int) else 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    return rc, capsys.readouterr().err


def assert_refused(rc: int, err: str, marker: Path, prog: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    assert "posix.system" in lines[0] and "--trust-checkpoint" in lines[0], lines[0]
    assert not marker.exists()


# -- the project's own checkpoints need nothing more than the allow-list ------------------------------
def test_project_checkpoints_load_with_the_safe_loader(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    for path in sorted(FIXTURES.glob("*.ckpt")):
        assert read_checkpoint(path)["global_step"] == 2
        torch.load(path, map_location="cpu", weights_only=True)  # even without the allow-list

    # A fresh checkpoint with every feature a recipe can save: objectives, LoRA, a schedule, validation,
    # ModelCheckpoint state; and a Python user's Path hyper-parameter (``init_from=Path(...)``, the one
    # kind of global the allow-list adds).
    from lightning.pytorch import Trainer

    from entropy_reg.data import SFTDataModule
    from entropy_reg.module import CausalLMModule
    from entropy_reg.objectives import RepetitionConsistency, SequenceUnlikelihood

    data = tmp_path / "rows.jsonl"
    data.write_text("".join('{"prompt": "What is a list?", "response": "A mutable sequence. It holds items."}\n'
                            for _ in range(8)))
    module = CausalLMModule(tiny_config={"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64},
                            objectives=[RepetitionConsistency(rate=1.0), SequenceUnlikelihood(rate=1.0,
                                        prefix_length=2, continuation_length=4)],
                            lora={"r": 2}, schedule={"warmup_steps": 1}, init_from=BASELINE)
    dm = SFTDataModule(dataset=str(data), val_dataset=str(data), max_length=32, batch_size=4)
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, val_check_interval=1,
                      limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    fresh = tmp_path / "fresh.ckpt"
    trainer.save_checkpoint(fresh)
    ckpt = read_checkpoint(fresh)
    assert isinstance(ckpt["hyper_parameters"]["init_from"], Path)
    assert ckpt["hyper_parameters"]["lora"] == {"r": 2}
    with pytest.raises(Exception, match="PosixPath"):  # what the allow-list adds, and all it adds
        torch.load(fresh, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
        torch.load(fresh, map_location="cpu", weights_only=True)


# -- every entry point refuses a checkpoint that holds code -------------------------------------------
def test_python_api_refuses_then_trusts(evil):
    path, marker = evil
    for load in (read_checkpoint, load_model_and_tokenizer):
        with pytest.raises(UserError, match=r"holds posix\.system, which is code, not data") as info:
            load(path)
        assert "\n" not in str(info.value)
        assert not marker.exists()
    model, tokenizer = load_model_and_tokenizer(path, trust=True)
    assert marker.exists() and model is not None and tokenizer is not None
    marker.unlink()
    with trusted_checkpoints():
        read_checkpoint(path)
    assert marker.exists()


def test_export_refuses_then_trusts(evil, tmp_path, capsys):
    path, marker = evil
    rc, err = run_cli(["export", path, "--out", tmp_path / "out"], capsys)
    assert_refused(rc, err, marker, "entropy-reg export")
    assert not (tmp_path / "out").exists()
    rc, err = run_cli(["export", path, "--out", tmp_path / "out", "--trust-checkpoint"], capsys)
    assert rc == 0, err
    assert marker.exists() and (tmp_path / "out" / "config.json").is_file()


EVAL_ARGS = ["--max-new-tokens", "4", "--max-heldout", "2", "--max-length", "16", "--probe-sentences", "0",
             "--decoding", "greedy", "--no-progress", "--threads", "1"]


def test_eval_refuses_then_trusts(evil, tmp_path, capsys):
    path, marker = evil
    rc, err = run_cli(["eval", path, "--out", tmp_path / "ev", *EVAL_ARGS], capsys)
    assert_refused(rc, err, marker, "entropy-reg eval")
    rc, err = run_cli(["eval", path, "--out", tmp_path / "ev", *EVAL_ARGS, "--trust-checkpoint"], capsys)
    assert rc == 0, err
    assert marker.exists()


def test_compare_refuses_then_trusts(evil, tmp_path, capsys):
    path, marker = evil
    common = ["--out", tmp_path / "cmp", "--bootstrap", "10", "--seeds", "1", *EVAL_ARGS]
    rc, err = run_cli(["compare", BASELINE, path, *common], capsys)  # as the candidate
    assert_refused(rc, err, marker, "entropy-reg compare")
    rc, err = run_cli(["compare", BASELINE, FIXTURES / "old_tiny_ditto.ckpt", "--reference", path, *common], capsys)
    assert_refused(rc, err, marker, "entropy-reg compare")
    rc, err = run_cli(["compare", BASELINE, path, *common, "--trust-checkpoint"], capsys)
    assert rc == 0, err
    assert marker.exists()


def test_fit_init_from_and_resume_refuse_then_trust(evil, tmp_path, capsys, monkeypatch):
    path, marker = evil
    run = [*FIT, "--trainer.max_steps", "3", "--trainer.default_root_dir", tmp_path]
    rc, err = run_cli([*run, "--model.init_from", path], capsys)
    assert_refused(rc, err, marker, "entropy-reg")
    rc, err = run_cli([*run, "--ckpt_path", path], capsys)
    assert_refused(rc, err, marker, "entropy-reg")

    monkeypatch.setenv(TRUST_ENV, "1")
    rc, err = run_cli([*run, "--model.init_from", path], capsys)
    assert rc == 0, err
    assert marker.exists()
    marker.unlink()
    # Resuming runs Lightning's own torch.load too, which is weights_only=True unless told otherwise.
    rc, err = run_cli([*run, "--ckpt_path", path, "--weights_only", "false"], capsys)
    assert rc == 0, err
    assert marker.exists()
