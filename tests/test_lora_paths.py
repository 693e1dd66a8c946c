"""A peft LoRA model on the other entry points: EntropyRegularizer on a user's module, HF Trainer (and TRL's path)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from lightning.pytorch import LightningModule
from lightning.pytorch import Trainer as LightningTrainer
from peft import PeftModel
from tiny_models import tiny_llama
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments

from entropy_reg.callbacks import EntropyRegularizer
from entropy_reg.hf import EntropyRegularizedTrainerLoss, attach
from entropy_reg.losses import AntiCopyPenalty, EntropyFloor, EntropyRegularizedLoss, TailMassFloor
from entropy_reg.models.find import find_causal_lm
from entropy_reg.models.lora import apply_lora

V, B, T = 64, 4, 12
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def reg_loss() -> EntropyRegularizedLoss:
    return EntropyRegularizedLoss(
        [TailMassFloor(top_k=1, floor=0.9), AntiCopyPenalty(weight=1.0), EntropyFloor(min_entropy=3.0, weight=1.0)]
    )


def lora_llama(seed: int = 0) -> PeftModel:
    model = apply_lora(tiny_llama(seed), LORA)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # lora_B starts at 0: give the adapters an effect (and lora_A a gradient)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def rows(n: int = 8, seed: int = 0) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V, (T,), generator=g)
        labels = ids.clone()
        labels[:2] = -100  # a "prompt"
        out.append({"input_ids": ids.tolist(), "attention_mask": [1] * T, "labels": labels.tolist()})
    return out


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def moved(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


class UserModule(LightningModule):
    """A user's own module around a PeftModel; nothing here knows about the regularizer."""

    def __init__(self) -> None:
        super().__init__()
        self.model = lora_llama()

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


def test_find_causal_lm_returns_the_peft_model():
    module = UserModule()
    name, lm = find_causal_lm(module)
    assert name == "model" and lm is module.model  # the outer model: the one training_step calls
    assert find_causal_lm(module, "model")[1] is module.model


@pytest.mark.parametrize(("one_pass", "hidden_path"), [(True, False), (False, False), (True, True)])
def test_entropy_regularizer_on_a_users_peft_module(tmp_path, one_pass, hidden_path):
    module = UserModule()
    before = snapshot(module)
    cb = EntropyRegularizer(reg_loss(), log_every_n_steps=1, one_pass=one_pass, hidden_path=hidden_path)
    trainer = LightningTrainer(
        max_steps=2, accelerator="cpu", devices=1, callbacks=[cb], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    batches = [{k: torch.tensor([r[k] for r in rows(B, s)]) for k in ("input_ids", "attention_mask", "labels")}
               for s in range(2)]
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("train/ce", "train/entropy", "train/tail_mass_floor", "train/anti_copy", "train/entropy_floor"):
        assert key in metrics, key
    assert metrics["train/anti_copy"] > 0
    changed = moved(module, before)
    assert changed and all("lora_" in n for n in changed)  # only the adapters train


def test_hf_trainer_with_a_peft_model(tmp_path):
    model = lora_llama()
    before = snapshot(model)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to=[], use_cpu=True, logging_steps=1,
                             save_strategy="no", disable_tqdm=True, per_device_train_batch_size=4,
                             dataloader_num_workers=0, learning_rate=1e-2)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows(8)),
                      compute_loss_func=EntropyRegularizedTrainerLoss(reg_loss()))
    attach(trainer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["loss"] == pytest.approx(h["ce"] + h["reg_loss"], rel=1e-5)
        assert h["anti_copy"] > 0 and h["copy_mass"] > 0  # the input_ids hook sees the peft model's inputs
    changed = moved(model, before)
    assert changed and all("lora_" in n for n in changed)


def test_find_causal_lm_prefers_the_peft_wrapper_over_its_base_registered_twice():
    class TwoNames(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = tiny_llama()  # registered first, then wrapped: named_modules yields it once
            self.model = apply_lora(self.backbone, LORA)

    module = TwoNames()
    assert find_causal_lm(module) == ("model", module.model)


def test_trl_sft_trainer_with_peft_config(tmp_path):
    """TRL's own LoRA route: SFTTrainer(peft_config=...) wraps the model; the loss hook and eval see the PeftModel."""
    trl = pytest.importorskip("trl", reason="TRL is optional (pip install 'entropy-reg[trl]')")
    import warnings

    from entropy_reg.hf import EntropyEvalCallback
    from entropy_reg.models.lora import lora_config
    from entropy_reg.models.tiny import build_tiny_llama, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer, n_layer=1, n_embd=32, n_head=2, intermediate_size=64)
    records = [{"prompt": f"What does f{i}() do?", "completion": " It returns the same value again and again."}
               for i in range(4)]
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=2, report_to=[], use_cpu=True, logging_steps=1,
                         save_strategy="no", disable_tqdm=True, per_device_train_batch_size=2, max_length=32,
                         dataloader_num_workers=0, learning_rate=1e-2)
    cb = EntropyEvalCallback(prompts=["What is a list?"], every_n_steps=2, on_evaluate=False, decodings=["greedy"],
                             max_new_tokens=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL 1.x deprecates compute_loss_func (still supported)
        trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                                 processing_class=tokenizer, compute_loss_func=EntropyRegularizedTrainerLoss(reg_loss()),
                                 callbacks=[cb], peft_config=lora_config(LORA))
    assert isinstance(trainer.model, PeftModel)
    before = snapshot(trainer.model)
    attach(trainer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2]
    for h in logs:
        assert h["loss"] == pytest.approx(h["ce"] + h["reg_loss"], rel=1e-5) and h["copy_mass"] > 0
    assert [h["step"] for h in trainer.state.log_history if "eval_greedy/seq_rep_4" in h] == [2]
    changed = moved(trainer.model, before)
    assert changed and all("lora_" in n for n in changed)
