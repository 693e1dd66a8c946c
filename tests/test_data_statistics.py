"""What the training data teaches (issue 21 §5): SFTDataModule's statistics at setup, and eval/* in the
main job's W&B runs during training."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest

from entropy_reg.data.statistics import THRESHOLDS, describe, row_statistics, warnings_for

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")]


def test_row_statistics_of_responses():
    ignore = -100
    # rows: (input ids, labels): the labelled tokens are the response
    rows = [([1, 2, 3, 4, 5, 6], [ignore, ignore, 3, 4, 5, 6]),             # no repetition
            ([1, 7, 8, 7, 8, 7, 8], [ignore, 7, 8, 7, 8, 7, 8]),          # a loop
            ([9, 3, 4, 5, 6], [ignore, 3, 4, 5, 6])]                       # duplicate of row 0's response
    stats = row_statistics([r[0] for r in rows], [r[1] for r in rows], truncated=[False, True, False])
    assert stats["rows"] == 3 and stats["truncated_share"] == pytest.approx(1 / 3)
    assert stats["label_tokens_mean"] == pytest.approx(14 / 3)
    assert (stats["label_tokens_min"], stats["label_tokens_max"]) == (4, 6)
    assert stats["duplicate_share"] == pytest.approx(1 / 3)
    # rep-2 of [7 8 7 8 7 8]: 5 bigrams, 2 distinct -> 0.6; the other rows 0 -> mean 0.2
    assert stats["rep_2"] == pytest.approx(0.2) and stats["rep_4"] == pytest.approx((1 - 2 / 3) / 3)
    assert "3 rows; truncated 33.3%" in describe(stats)
    problems = warnings_for(stats)
    assert len(problems) == 1 and "duplicates" in problems[0]  # rep-4 0.11 < 0.2; duplicates 33% > 5%


def _write(path: Path, responses: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "response": r}) + "\n"
                            for i, r in enumerate(responses)))
    return path


def test_datamodule_logs_statistics_and_warns_past_the_thresholds(tmp_path):
    from entropy_reg.data import SFTDataModule

    loop = "the cat sat on the mat. " * 6
    path = _write(tmp_path / "rep.jsonl", [loop] * 6 + ["A fine answer that ends.", "Another one, short."])
    dm = SFTDataModule(tokenizer="tiny", dataset=str(path), val_fraction=0.0, max_length=256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    messages = [str(w.message) for w in caught]
    stats = dm.statistics["train"]
    assert stats["rows"] == 8 and stats["truncated_share"] == 0.0
    assert stats["rep_4"] > THRESHOLDS["rep_4"] and stats["duplicate_share"] == pytest.approx(5 / 8)
    assert any("train data: responses repeat themselves: rep-4" in m for m in messages), messages
    assert any("of the responses are exact duplicates" in m for m in messages), messages


def test_truncation_drop_leaves_no_truncated_rows_and_truncate_counts_them(tmp_path):
    from entropy_reg.data import SFTDataModule

    long = " ".join(f"word{i}" for i in range(200)) + "."
    path = _write(tmp_path / "long.jsonl", [long, "Short answer.", "Another short answer."])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut = SFTDataModule(tokenizer="tiny", dataset=str(path), val_fraction=0.0, max_length=32, truncation="truncate")
        cut.setup("fit")
        drop = SFTDataModule(tokenizer="tiny", dataset=str(path), val_fraction=0.0, max_length=32, truncation="drop")
        drop.setup("fit")
    assert cut.statistics["train"]["truncated_share"] == pytest.approx(1 / 3)
    assert drop.statistics["train"]["truncated_share"] == 0.0 and drop.statistics["train"]["rows"] == 2


def _run_experiment_module():
    spec = importlib.util.spec_from_file_location("run_experiment_for_eval", ROOT / "scripts" / "run_experiment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_main_job_trainings_log_eval_curves_to_wandb(tmp_path, monkeypatch):
    """The main job's GenerationEval arguments (every N steps, no validation loop) put eval/* into the
    offline W&B run at every N-th step; read back from the .wandb file."""
    import wandb
    from test_generation_eval import wait_for_wandb_history

    from entropy_reg import cli as cli_mod

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    run_experiment = _run_experiment_module()
    assert run_experiment.PRESETS["smollm2"].train_eval  # the main job has them
    args = run_experiment.train_eval_args(every=2, chat=False)  # the tiny tokenizer has no chat template
    save_dir = tmp_path / "runs"
    cli_mod.main(["fit", "--config", str(ROOT / "recipes" / "tiny" / "baseline.yaml"), "--trainer.max_steps", "4",
                  "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                  "--data.init_args.max_records", "32", "--data.init_args.max_length", "48",
                  "--model.tiny_config", "{n_layer: 1, n_embd: 32, n_head: 2, intermediate_size: 64}",
                  "--trainer.logger.init_args.save_dir", str(save_dir), *args])
    wandb.finish()
    (history,) = save_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = wait_for_wandb_history(history)
    steps = sorted({int(r["trainer/global_step"]) if "trainer/global_step" in r else int(r["_step"])
                    for r in rows if "eval/greedy/seq_rep_4" in r})
    assert steps == [2, 4], rows
    keys = set().union(*rows)
    assert {"eval/greedy/entropy_mean", "eval/greedy/degenerate_frac", "eval/greedy/eos_rate"} <= keys, keys
    # The data statistics of setup are the run's config (hyper-parameters), in the same file.
    assert b"data/train/rep_4" in history.read_bytes()
