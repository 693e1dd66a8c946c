"""EntropyEvalCallback: generation metrics through Trainer.log, W&B extras, triggers, errors."""

from __future__ import annotations

import pytest
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from transformers.integrations import WandbCallback

from entropy_reg.hf import EntropyEvalCallback, EntropyRegularizedTrainerLoss, attach
from entropy_reg.losses import AntiCopyPenalty, EntropyRegularizedLoss
from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer

METRICS = ("entropy_mean", "entropy_p10", "seq_rep_4", "rep_2", "distinct_2", "uniq_seq", "eos_rate",
           "degenerate_frac", "repetitive_frac", "divergent_frac", "healthy_frac", "low_entropy_run")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def make_trainer(tmp_path, tokenizer, callbacks, **kwargs) -> Trainer:
    texts = ["The len() function returns the number of items.", "A list is a mutable sequence."] * 2
    enc = tokenizer(texts, padding="max_length", max_length=16, truncation=True)
    data = [{"input_ids": i, "attention_mask": m, "labels": [t if a else -100 for t, a in zip(i, m, strict=True)]}
            for i, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=2, per_device_eval_batch_size=2, **kwargs,
    )
    model = build_tiny_llama(tokenizer, n_layer=1, n_embd=32, n_head=2, intermediate_size=64)
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(data),
                   eval_dataset=Dataset.from_list(data[:2]), processing_class=tokenizer, callbacks=callbacks)


def gen_logs(trainer: Trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "eval_greedy/seq_rep_4" in h]


def test_every_n_steps_logs_through_trainer(tmp_path, tokenizer):
    cb = EntropyEvalCallback(prompts=["The list", "A function"], every_n_steps=1, on_evaluate=False,
                             decodings=["greedy"], max_new_tokens=4)
    trainer = make_trainer(tmp_path, tokenizer, [cb], max_steps=2)
    attach(trainer)
    trainer.train()
    logs = gen_logs(trainer)
    assert [h["step"] for h in logs] == [1, 2]
    # generating from on_step_end must not swallow the step's own training log
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2]
    for key in METRICS:
        assert f"eval_greedy/{key}" in logs[-1], key
    # last_metrics keeps the Lightning / W&B names; the Trainer log carries the same numbers.
    assert set(cb.last_metrics) == {f"eval/greedy/{k}" for k in METRICS}
    assert logs[-1]["eval_greedy/seq_rep_4"] == cb.last_metrics["eval/greedy/seq_rep_4"]
    assert 0.0 <= logs[-1]["eval_greedy/seq_rep_4"] <= 1.0


class FakeRun:
    def __init__(self):
        self.logged: list[dict] = []

    def log(self, data):
        self.logged.append(data)


def test_on_evaluate_and_wandb_extras(tmp_path, tokenizer, monkeypatch):
    pytest.importorskip("wandb", reason="the W&B table needs the wandb package")
    run = FakeRun()
    monkeypatch.setattr(EntropyEvalCallback, "_wandb_run", staticmethod(lambda args: run))
    cb = EntropyEvalCallback(prompts=["The list"], decodings=["greedy", "top_p"], max_new_tokens=3)
    trainer = make_trainer(tmp_path, tokenizer, [cb], max_steps=1)
    attach(trainer)
    trainer.evaluate()
    trainer.evaluate()  # same global step: not generated twice
    (log,) = gen_logs(trainer)
    assert "eval_top_p/entropy_mean" in log and log["step"] == 0
    (extras,) = run.logged
    assert extras["train/global_step"] == 0
    table = extras["eval/completions"]
    assert table.columns[:3] == ["step", "decoding", "prompt"] and len(table.data) == 2
    assert "eval/greedy/entropy_hist" in extras and "eval/top_p/entropy_hist" in extras


def test_not_attached_and_bad_arguments(tmp_path, tokenizer):
    cb = EntropyEvalCallback(prompts=["x"], every_n_steps=1, decodings=["greedy"], max_new_tokens=2)
    trainer = make_trainer(tmp_path, tokenizer, [cb], max_steps=1)
    with pytest.raises(RuntimeError, match=r"attach\(trainer\)"):
        trainer.train()
    with pytest.raises(ValueError, match="never run"):
        EntropyEvalCallback(on_evaluate=False)
    with pytest.raises(ValueError, match="EntropyEvalCallback: .*max_new_tokens"):
        EntropyEvalCallback(max_new_tokens=0)
    with pytest.raises(ValueError, match="EntropyEvalCallback: "):
        EntropyEvalCallback(decodings=["no_such_decoding"])


def test_reaches_wandb_offline(tmp_path, tokenizer, monkeypatch):
    """report_to=["wandb"]: loss statistics and generation metrics arrive under the Lightning names."""
    wandb = pytest.importorskip("wandb", reason="needs the wandb package")
    # the offline .wandb history reader of the Lightning GenerationEval tests
    from test_generation_eval import wait_for_wandb_history

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "test-hf-trainer")
    # wandb caches its settings (WANDB_DIR included) in a process-wide singleton: an earlier test's
    # run would otherwise send this one to the working directory.
    wandb.teardown()
    cb = EntropyEvalCallback(prompts=["The list"], every_n_steps=1, on_evaluate=False, decodings=["greedy"],
                             max_new_tokens=3, log_histogram=False)
    loss_fn = EntropyRegularizedTrainerLoss(EntropyRegularizedLoss([AntiCopyPenalty(weight=0.5)]))
    trainer = make_trainer(tmp_path, tokenizer, [cb], max_steps=1)
    trainer.compute_loss_func = loss_fn  # same as passing it to the constructor
    trainer.args.report_to = ["wandb"]
    trainer.add_callback(WandbCallback)
    attach(trainer)
    trainer.train()
    wandb.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = wait_for_wandb_history(next(run_dir.glob("*.wandb")))
    keys = set().union(*rows)
    for key in ("train/loss", "train/entropy", "train/copy_mass", "train/anti_copy", "eval/greedy/seq_rep_4"):
        assert key in keys, key
    assert "eval/completions/_type" in keys  # the table (a history item is stored as its metadata)
