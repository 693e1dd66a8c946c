"""Objectives through EntropyRegularizer (a user's module), EntropyRegularizedTrainerLoss (HF Trainer), and peft."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader
from transformers import Trainer as HFTrainer
from transformers import TrainingArguments

from entropy_reg.callbacks import EntropyRegularizer
from entropy_reg.hf import EntropyRegularizedTrainerLoss, attach
from entropy_reg.losses import EntropyRegularizedLoss
from entropy_reg.objectives import ObjectiveContext, RepetitionConsistency, SequenceUnlikelihood
from tests.tiny_models import tiny_llama

V, T, END = 64, 24, 7


def rows(n: int = 8, seed: int = 0) -> list[dict[str, list[int]]]:
    """Prompt [1, 2, 3] + a response of 5-token sentences ending in END (so every row has some)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(10, V, (T,), generator=g)
        ids[:3] = torch.tensor([1, 2, 3])
        ids[7::5] = END
        labels = ids.clone()
        labels[:3] = -100
        out.append({"input_ids": ids.tolist(), "attention_mask": [1] * T, "labels": labels.tolist()})
    return out


def loader() -> DataLoader:
    data = [{k: torch.tensor(v) for k, v in r.items()} for r in rows()]
    return DataLoader(data, batch_size=4)


def ditto(weight: float = 1.0) -> RepetitionConsistency:
    return RepetitionConsistency(weight=weight, rate=1.0, sentence_end_ids=[END], max_sentence_tokens=8)


class UserModule(LightningModule):
    """A plain user module; ``manual`` adds an objective by hand (the reference for the callback)."""

    def __init__(self, manual: RepetitionConsistency | None = None) -> None:
        super().__init__()
        self.model = tiny_llama(0)
        self.manual = manual

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        if self.manual is not None:
            context = ObjectiveContext(step=self.global_step)
            loss = loss + self.manual.weight * self.manual.compute(self.model, batch, context).loss
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def fit_user(module: UserModule, objectives=None, steps: int = 2) -> tuple[torch.Tensor, dict]:
    callback = EntropyRegularizer(EntropyRegularizedLoss([]), objectives=objectives)
    trainer = Trainer(max_steps=steps, callbacks=[callback], logger=False, log_every_n_steps=1, accelerator="cpu",
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader())
    params = torch.cat([p.detach().flatten() for p in module.model.parameters()])
    return params, dict(trainer.callback_metrics)


# -- EntropyRegularizer on a user's own LightningModule -----------------------------------------------
def test_callback_adds_the_objective_exactly_as_written_by_hand():
    with_callback, metrics = fit_user(UserModule(), objectives=[ditto()])
    by_hand, _ = fit_user(UserModule(manual=ditto()))
    without, _ = fit_user(UserModule())
    torch.testing.assert_close(with_callback, by_hand, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(with_callback, without)
    for key in ("train/ditto", "train/ditto/p_repeat", "train/ditto/rise_share", "train/ditto/ran_share"):
        assert key in metrics, key
    assert float(metrics["train/ditto/skipped_share"]) == 0.0


def test_callback_weight_zero_is_bit_identical_to_no_objective():
    zero, metrics = fit_user(UserModule(), objectives=[ditto(weight=0.0)])
    none, _ = fit_user(UserModule())
    assert torch.equal(zero, none)
    assert float(metrics["train/ditto/ran_share"]) == 0.0


def test_callback_checkpoints_the_objective_seed():
    callback = EntropyRegularizer(EntropyRegularizedLoss([]), objectives=[RepetitionConsistency(seed=4)])
    state = callback.state_dict()
    assert state["objectives"] == {"seeds": {"ditto": 4}}
    other = EntropyRegularizer(EntropyRegularizedLoss([]), objectives=[RepetitionConsistency(seed=0)])
    with pytest.warns(UserWarning, match="seed"):
        other.load_state_dict(state)
    assert other._objectives.objectives[0].seed == 4


def test_callback_without_tokenizer_names_the_problem():
    callback = EntropyRegularizer(EntropyRegularizedLoss([]), objectives=[RepetitionConsistency()])
    trainer = Trainer(max_steps=1, callbacks=[callback], logger=False, accelerator="cpu",
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="tokenizer"):
        trainer.fit(UserModule(), loader())


# -- EntropyRegularizedTrainerLoss (HF Trainer / TRL) ------------------------------------------------
def test_trainer_loss_adds_the_objective_weighted_by_the_token_share():
    model = tiny_llama(0)
    batch = {k: torch.tensor([r[k] for r in rows(4)]) for k in ("input_ids", "attention_mask", "labels")}
    plain = EntropyRegularizedTrainerLoss(EntropyRegularizedLoss([]))
    with_obj = EntropyRegularizedTrainerLoss(EntropyRegularizedLoss([]), objectives=[ditto(weight=0.5)])
    values = []
    for loss_fn in (plain, with_obj):
        loss_fn.hook_model(model)
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        n = int((batch["labels"][:, 1:] != -100).sum())
        # this micro-batch is half of the accumulated batch: the objective counts half
        values.append(loss_fn(outputs, batch["labels"], num_items_in_batch=2 * n))
        loss_fn.unhook_model()
    term = ditto().compute(model, batch, ObjectiveContext(step=0)).loss
    torch.testing.assert_close(values[1], values[0] + 0.5 * term * 0.5)


def test_hf_trainer_logs_objective_statistics_and_weight_zero_changes_nothing(tmp_path):
    data = Dataset.from_list(rows())

    def train(objectives):
        torch.manual_seed(0)
        model = tiny_llama(0)
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to=[], use_cpu=True, logging_steps=1,
                                 save_strategy="no", disable_tqdm=True, per_device_train_batch_size=4,
                                 dataloader_num_workers=0, learning_rate=1e-2)
        loss_fn = EntropyRegularizedTrainerLoss(EntropyRegularizedLoss([]), objectives=objectives)
        trainer = HFTrainer(model=model, args=args, train_dataset=data, compute_loss_func=loss_fn)
        attach(trainer)
        trainer.train()
        return torch.cat([p.detach().flatten() for p in model.parameters()]), trainer.state.log_history

    base, _ = train(None)
    zero, _ = train([ditto(weight=0.0)])
    active, logs = train([ditto()])
    assert torch.equal(zero, base)
    assert not torch.allclose(active, base)
    train_logs = [h for h in logs if "loss" in h]
    assert len(train_logs) == 2
    for h in train_logs:
        assert h["ditto"] > 0 and "ditto/p_repeat" in h and h["ditto/ran_share"] == 1.0


# -- peft ---------------------------------------------------------------------------------------------
def test_objectives_run_through_a_peft_model():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(0), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA's B starts at 0; make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = {k: torch.tensor([r[k] for r in rows(2)]) for k in ("input_ids", "attention_mask", "labels")}
    results = []
    for hidden in (True, False):
        model.zero_grad()
        out = ditto().compute(model, batch, ObjectiveContext(hidden_path=hidden))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out.loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    assert all(("lora_" in n) for n in results[0][1])  # only the adapter trains
    for n in results[0][1]:
        torch.testing.assert_close(results[0][1][n], results[1][1][n], rtol=1e-4, atol=1e-7)
    seq_ul = SequenceUnlikelihood(rate=1.0, prefix_length=4, continuation_length=8, ngram=2)
    seq_ul.setup(None)
    model.train()
    out = seq_ul.compute(model, batch, ObjectiveContext())
    assert model.training and torch.isfinite(out.loss)
