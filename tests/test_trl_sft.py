"""entropy_reg.hf with TRL's SFTTrainer(compute_loss_func=...)."""

from __future__ import annotations

import warnings

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is optional (pip install 'entropy-reg[trl]'); SFTTrainer tests need it")

from datasets import Dataset  # noqa: E402

from entropy_reg.hf import EntropyEvalCallback, EntropyRegularizedTrainerLoss, attach  # noqa: E402
from entropy_reg.losses import AntiCopyPenalty, EntropyRegularizedLoss, TailMassFloor  # noqa: E402
from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer  # noqa: E402


class SpyLoss(EntropyRegularizedTrainerLoss):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels: list[torch.Tensor] = []

    def __call__(self, outputs, labels, num_items_in_batch=None):
        if torch.is_grad_enabled():
            self.labels.append(labels.clone())
        return super().__call__(outputs, labels, num_items_in_batch=num_items_in_batch)


def test_sft_trainer_with_compute_loss_func(tmp_path):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer, n_layer=1, n_embd=32, n_head=2, intermediate_size=64)
    records = [
        {"prompt": "What does len() return?", "completion": " The number of items in a container."},
        {"prompt": "What is a list?", "completion": " A mutable sequence of items."},
        {"prompt": "What does abs() do?", "completion": " It returns the absolute value of a number."},
        {"prompt": "What is a tuple?", "completion": " An immutable sequence."},
    ]
    loss_fn = SpyLoss(EntropyRegularizedLoss([TailMassFloor(top_k=1, floor=0.99, weight=1.0),
                                              AntiCopyPenalty(weight=1.0)]))
    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=2, report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=2, max_length=32, dataloader_num_workers=0,
    )
    cb = EntropyEvalCallback(prompts=["What is a list?"], every_n_steps=2, on_evaluate=False,
                             decodings=["greedy"], max_new_tokens=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL 1.x deprecates compute_loss_func (still supported)
        trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                                 processing_class=tokenizer, compute_loss_func=loss_fn, callbacks=[cb])
    attach(trainer)
    trainer.train()

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2]
    for h in logs:
        for key in ("ce", "entropy", "tail_mass", "copy_mass", "tail_mass_floor", "anti_copy", "reg_loss"):
            assert key in h, key
        assert h["loss"] == pytest.approx(h["ce"] + h["reg_loss"], rel=1e-5)
        assert h["reg_loss"] > 0
    # TRL's own metrics stay (its `entropy` key is replaced by the same quantity, token-weighted here)
    assert "mean_token_accuracy" in logs[-1]
    assert [h["step"] for h in trainer.state.log_history if "eval_greedy/seq_rep_4" in h] == [2]
    # TRL passes unshifted labels with the prompt masked (completion-only loss): each row starts with -100.
    assert loss_fn.labels
    for labels in loss_fn.labels:
        assert (labels[:, 0] == -100).all() and (labels != -100).any()
