"""The silent paths of issue 21 §3: each bad input is refused (or handled) with one line, never silently.

Resume both ways, objective attributes validated on assignment, divergence, compare's long prompt and
self-comparison, chat roles and mixed schemas, export into places it cannot write, nested typos,
schedule keys, bare peft target names, no empty run directory after a failed fit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_data import write

from entropy_reg import cli as cli_mod
from entropy_reg.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "tiny"
FIXTURES = ROOT / "tests" / "fixtures"
TINY = "{n_layer: 1, n_embd: 32, n_head: 2, intermediate_size: 64}"
SMALL = ["--data.max_records", "32", "--data.max_length", "48", "--data.batch_size", "4", "--model.tiny_config", TINY,
         "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.callbacks", "[]",
         "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1", "--trainer.enable_checkpointing",
         "false"]

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
    pytest.mark.filterwarnings("ignore:SFTDataModule. truncated"),
    pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended"),
]


def one_line_exit_2(capsys, argv: list[str], prog: str = "entropy-reg") -> str:
    """Run ``entropy-reg ARGV`` in-process; it must exit 2 with one ``prog: error:`` line; returns it."""
    with pytest.raises(SystemExit) as info:
        cli_mod.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ---- resume compares settings both ways ------------------------------------------------------------------
def test_baseline_recipe_on_a_ditto_checkpoint_is_refused_like_the_reverse(tmp_path, capsys):
    ditto, baseline = str(FIXTURES / "old_tiny_ditto.ckpt"), str(FIXTURES / "old_tiny_baseline.ckpt")
    line = one_line_exit_2(capsys, ["fit", "--config", str(RECIPES / "baseline.yaml"), *SMALL,
                                    "--trainer.max_steps", "3", "--ckpt_path", ditto])
    assert f"--ckpt_path {ditto!r} resumes that run as it was" in line
    assert "model.objectives: left out here (default None), [RepetitionConsistency(...)] in the checkpoint" in line
    line = one_line_exit_2(capsys, ["fit", "--config", str(RECIPES / "ditto.yaml"), *SMALL,
                                    "--trainer.max_steps", "3", "--ckpt_path", baseline])
    assert "model.objectives: [{'class_path': 'entropy_reg.objectives.RepetitionConsistency'" in line
    assert "here, None in the checkpoint" in line


# ---- objectives validate on assignment -------------------------------------------------------------------
def test_objective_attributes_are_validated_on_assignment():
    from entropy_reg.objectives import (
        LoopEntropyFloor,
        ReferenceAnchor,
        RepetitionConsistency,
        SequenceUnlikelihood,
    )

    for cls in (RepetitionConsistency, SequenceUnlikelihood, ReferenceAnchor, LoopEntropyFloor):
        objective = cls()
        for attr, value, message in [("weight", "x", "weight must be a finite number >= 0, got 'x'"),
                                     ("weight", -1, "weight must be a finite number >= 0, got -1"),
                                     ("rate", 5, "rate must be in [0, 1], got 5"),
                                     ("seed", -1, "seed must be an integer >= 0")]:
            with pytest.raises(ValueError, match=f"{cls.__name__}: {message}".replace("[", r"\[").replace("]", r"\]")):
                setattr(objective, attr, value)
            # the constructor words it the same way
            with pytest.raises(ValueError, match=f"{cls.__name__}: {attr} must"):
                cls(**{attr: value})
        objective.weight, objective.rate = 0.25, 1.0
        assert (objective.weight, objective.rate) == (0.25, 1.0) and "weight=0.25" in repr(objective)
    with pytest.raises(ValueError, match="RepetitionConsistency: lam must be in"):
        RepetitionConsistency().lam = 2
    with pytest.raises(ValueError, match="RepetitionConsistency: one_sided must be a bool"):
        RepetitionConsistency().one_sided = 1
    with pytest.raises(ValueError, match="SequenceUnlikelihood: ngram must be an integer >= 1"):
        SequenceUnlikelihood().ngram = 0
    with pytest.raises(ValueError, match="ReferenceAnchor: source must be one of"):
        ReferenceAnchor().source = "x"
    with pytest.raises(ValueError, match="LoopEntropyFloor: statistic must be one of"):
        LoopEntropyFloor().statistic = "tails"


# ---- a diverging run stops at once, with the cause and the last checkpoint ------------------------------
@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_diverging_run_stops_with_one_line_naming_step_cause_and_checkpoint(tmp_path, capsys, on_nonfinite):
    save = ("[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
            f"{{dirpath: {tmp_path / 'ck'}, save_last: true, save_top_k: 0, every_n_train_steps: 1}}}}]")
    line = one_line_exit_2(capsys, ["fit", "--config", str(RECIPES / "baseline.yaml"), *SMALL,
                                    "--trainer.enable_checkpointing", "true", "--trainer.callbacks", save,
                                    "--trainer.max_steps", "40", "--model.learning_rate", "1e10",
                                    "--model.warmup_steps", "0", "--model.on_nonfinite", on_nonfinite,
                                    "--trainer.default_root_dir", str(tmp_path)])
    assert "at global step" in line
    assert "Likely cause: the learning rate" in line and "is far too high" in line
    assert f"is kept as it was: {tmp_path / 'ck' / 'last.ckpt'}" in line, line
    if on_nonfinite == "skip":
        assert "training diverged" in line and "skipping steps cannot help" in line
    kept = torch.load(tmp_path / "ck" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values())


# ---- data: unknown chat role, two schemas in one file -----------------------------------------------------
def _datamodule(path: Path):
    from entropy_reg.data import SFTDataModule

    return SFTDataModule(tokenizer="tiny", dataset=str(path), val_fraction=0.0, max_length=64)


def test_chat_row_with_an_unknown_role_is_rejected_naming_the_row(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello."}]},
            {"messages": [{"role": "usr", "content": "hi"}, {"role": "assistant", "content": "hello."}]}]
    path = Path(write(tmp_path / "chat.jsonl", rows))
    with pytest.raises(UserError, match=r"row 1 \(0-based\): key 'messages\[0\]\.role' is 'usr', not a chat role .*"
                                        r"did you mean 'user'\?"):
        _datamodule(path).setup("fit")


def test_file_mixing_two_schemas_names_where_the_second_starts(tmp_path):
    rows = [{"prompt": "a", "response": "b."}] * 3 + [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello."}]}]
    path = Path(write(tmp_path / "mixed.jsonl", rows))
    with pytest.raises(UserError, match=r"mixes two row schemas: rows 0-2 \(0-based\) are prompt/response rows and "
                                        r"row 3 is the first messages row"):
        _datamodule(path).setup("fit")


# ---- export -----------------------------------------------------------------------------------------------
def test_export_of_an_empty_checkpoint_says_empty(tmp_path, capsys):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    line = one_line_exit_2(capsys, ["export", str(empty), "--out", str(tmp_path / "out")], "entropy-reg export")
    assert "is empty (0 bytes)" in line


def test_export_to_a_place_it_cannot_write_is_one_line(tmp_path, capsys, monkeypatch):
    ckpt = str(FIXTURES / "old_tiny_baseline.ckpt")
    # /sys refuses new directories even to root.
    line = one_line_exit_2(capsys, ["export", ckpt, "--out", "/sys/entropy-reg-export/model"], "entropy-reg export")
    assert "--out '/sys/entropy-reg-export/model': cannot write in" in line and "nothing was written" in line
    # An existing empty directory that cannot be removed (a read-only parent for a non-root user, a mount point).
    out = tmp_path / "out"
    out.mkdir()
    real_rmdir = Path.rmdir

    def refuse(self):
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real_rmdir(self)

    monkeypatch.setattr(Path, "rmdir", refuse)
    line = one_line_exit_2(capsys, ["export", ckpt, "--out", str(out)], "entropy-reg export")
    assert f"--out {str(out)!r}: cannot put the export there (Permission denied)" in line
    assert out.is_dir() and not any(out.iterdir()) and [p.name for p in tmp_path.iterdir()] == ["out"]


# ---- weak messages made one line --------------------------------------------------------------------------
def test_nested_typo_is_one_line_with_the_close_key(capsys):
    line = one_line_exit_2(capsys, ["fit", "--config", str(RECIPES / "ditto.yaml"),
                                    "--model.objectives.init_args.lamda", "0.3"])
    assert "unknown key 'lamda' in --model.objectives.init_args.lamda" in line
    assert line.endswith("did you mean 'lam'?")


def test_schedule_with_a_bad_value_names_the_key(tmp_path, capsys):
    line = one_line_exit_2(capsys, ["fit", "--config", str(RECIPES / "baseline.yaml"), *SMALL,
                                    "--trainer.max_steps", "1", "--model.schedule", "{start: abc}"])
    assert "CoefficientSchedule: start must be a finite number >= 0, got 'abc'" in line


def test_bare_peft_target_name_is_a_list_of_that_name():
    from transformers import LlamaConfig, LlamaForCausalLM

    from entropy_reg.models.lora import apply_lora, lora_config

    assert lora_config({"target_modules": "q_proj"}).target_modules == {"q_proj"}
    assert lora_config({"target_modules": ".*q_proj"}).target_modules == ".*q_proj"  # a regex stays one
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = apply_lora(LlamaForCausalLM(config), {"target_modules": "q_proj", "r": 2})
    adapted = {n.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj"}


def test_compare_of_a_model_with_itself_warns(tmp_path, capsys):
    ckpt = str(FIXTURES / "old_tiny_baseline.ckpt")
    # The warning comes before anything is loaded; the missing prompts file then stops the run cheaply.
    line = one_line_exit_2(capsys, ["compare", ckpt, ckpt, "--prompts", str(tmp_path / "none.txt")],
                           "entropy-reg compare")
    assert "prompts file not found" in line
    with pytest.raises(SystemExit):
        cli_mod.main(["compare", ckpt, ckpt, "--prompts", str(tmp_path / "none.txt")])
    assert "warning: --baseline and --candidate are the same model" in capsys.readouterr().err


def test_compare_with_a_prompt_longer_than_the_context_is_refused(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a short prompt\n" + "word " * 10_000 + "\n")
    line = one_line_exit_2(capsys, ["compare", "tiny", str(FIXTURES / "old_tiny_baseline.ckpt"), "--prompts",
                                    str(prompts), "--out", str(tmp_path / "cmp"), "--no-progress"],
                           "entropy-reg compare")
    assert "prompt 1 (0-based" in line and "does not fit the baseline model's context of" in line
    assert not (tmp_path / "cmp").exists()


def test_failed_fit_leaves_no_empty_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    save_dir = tmp_path / "runs" / "tiny"
    one_line_exit_2(capsys, ["fit", "--config", str(RECIPES / "baseline.yaml"), "--trainer.max_steps", "1",
                             "--trainer.logger.init_args.save_dir", str(save_dir), "--model.learning_rate", "-1"])
    assert not (tmp_path / "runs").exists()
