"""Every entry point on the model this project ships, written the way a user writes it (issue 21, part 1).

The embedded SmolLM2-135M-Instruct (loaded offline from its GGUF file), every objective with its
defaults and ContrastiveToken in the loss, a few optimizer steps on a handful of the embedded corpus'
rows: ``CausalLMModule``, ``EntropyRegularizer`` on a user's own LightningModule, ``transformers.Trainer``
with ``EntropyRegularizedTrainerLoss`` + ``attach``, and TRL's ``SFTTrainer`` with and without a peft
``LoraConfig``. Four steps, so that every objective's default ``rate`` draw (seed 0) runs it at least
once: DITTO at steps 1-3, SequenceUnlikelihood at 3, ReferenceAnchor at 0-2, LoopEntropyFloor at 0, 2, 3.

The GGUF file is parsed once per process (the loader keeps it); each test still calls the loader itself.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import warnings

import pytest
import torch
from test_models import requires_smollm2  # noqa: E402

from entropy_reg.losses import ContrastiveToken, EntropyRegularizedLoss
from entropy_reg.models import SMOLLM2_NAME, load_model_and_tokenizer
from entropy_reg.objectives import (
    LoopEntropyFloor,
    ReferenceAnchor,
    RepetitionConsistency,
    SequenceUnlikelihood,
)

pytestmark = [
    pytest.mark.slow,
    requires_smollm2,
]

STEPS = 4
MAX_LENGTH = 80  # tokens per row: long enough for SequenceUnlikelihood's 32-token prefixes
ROWS = 8
OBJECTIVE_NAMES = ("ditto", "seq_ul", "reference_anchor", "loop_entropy_floor")


@pytest.fixture(autouse=True)
def _release_models():
    """Each test holds a 135M model, its optimizer state and a reference copy: free them before the next."""
    yield
    gc.collect()


def objectives():
    return [RepetitionConsistency(), SequenceUnlikelihood(), ReferenceAnchor(), LoopEntropyFloor()]


def loss():
    return EntropyRegularizedLoss([ContrastiveToken()])


def records() -> list[dict[str, str]]:
    from entropy_reg.data.pydoc_corpus import embedded_sft_records

    return embedded_sft_records(max_records=ROWS)


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten()[:4096].clone() for p in model.parameters() if p.requires_grad])


def check_objectives_ran(logged: dict[str, float]) -> None:
    """Every objective ran on some step (its mean ran share over the logged steps is > 0) with a finite loss."""
    for name in OBJECTIVE_NAMES:
        assert logged[f"{name}/ran_share"] > 0, (name, logged)
        assert math.isfinite(logged[name]), (name, logged)


# -- Lightning ----------------------------------------------------------------------------------------
def lightning_trainer(**kwargs):
    from lightning.pytorch import Trainer

    return Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kwargs)


def datamodule():
    from entropy_reg.data import SFTDataModule

    return SFTDataModule(tokenizer=SMOLLM2_NAME, dataset="embedded:pydoc", max_records=ROWS, max_length=MAX_LENGTH,
                         batch_size=2)


class Collect:
    """Every value a Lightning module logs (``callback_metrics`` keeps only the last)."""

    @staticmethod
    def callback():
        from lightning.pytorch import Callback

        class _Collect(Callback):
            def __init__(self):
                self.logged: dict[str, list[float]] = {}

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                for key, value in trainer.callback_metrics.items():
                    self.logged.setdefault(key, []).append(float(value))

        return _Collect()


def means(logged: dict[str, list[float]], prefix: str = "train/") -> dict[str, float]:
    return {k.removeprefix(prefix): sum(v) / len(v) for k, v in logged.items() if k.startswith(prefix)}


def test_causal_lm_module():
    from entropy_reg.module import CausalLMModule

    fit_and_check(CausalLMModule(model_name_or_path=SMOLLM2_NAME, loss=loss(), objectives=objectives()), [], "loss")


def fit_and_check(module, callbacks: list, loss_key: str) -> None:
    """Train ``module`` for STEPS steps: the weights moved, the loss is finite, CT and every objective logged."""
    before = weights(module.model)
    collect = Collect.callback()
    trainer = lightning_trainer(log_every_n_steps=1, callbacks=[*callbacks, collect])
    trainer.fit(module, datamodule=datamodule())
    assert trainer.global_step == STEPS
    assert not torch.equal(weights(module.model), before)
    logged = means(collect.logged)
    assert math.isfinite(logged[loss_key]) and logged["contrastive_token"] > 0
    check_objectives_ran(logged)


def test_entropy_regularizer_on_a_user_module():
    import lightning as L

    from entropy_reg.callbacks import EntropyRegularizer

    class MySFT(L.LightningModule):  # a user's own module
        def __init__(self):
            super().__init__()
            self.model, self.tokenizer = load_model_and_tokenizer(SMOLLM2_NAME)

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-5)

    fit_and_check(MySFT(), [EntropyRegularizer(loss(), objectives=objectives())], "ce")


# -- transformers / TRL -------------------------------------------------------------------------------
def train_logs(trainer) -> dict[str, float]:
    """Means over the logged training steps of every numeric key."""
    rows = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    assert len(rows) == STEPS, trainer.state.log_history
    keys = set().union(*rows)
    return {k: sum(h.get(k, 0.0) for h in rows) / len(rows) for k in keys if all(isinstance(h.get(k, 0.0), float | int)
                                                                                     for h in rows)}


def test_hf_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from entropy_reg.hf import EntropyRegularizedTrainerLoss, attach

    model, tokenizer = load_model_and_tokenizer(SMOLLM2_NAME)
    texts = [f"{r['prompt']}\n{r['response']}" for r in records()]
    enc = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True)
    rows = [{"input_ids": i, "attention_mask": m, "labels": [t if a else -100 for t, a in zip(i, m, strict=True)]}
            for i, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
    before = weights(model)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=STEPS, logging_steps=1, report_to=[],
                               per_device_train_batch_size=2, save_strategy="no", use_cpu=True, disable_tqdm=True),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        compute_loss_func=EntropyRegularizedTrainerLoss(loss(), objectives=objectives()),
    )
    attach(trainer)
    trainer.train()
    assert not torch.equal(weights(model), before)
    logged = train_logs(trainer)
    assert math.isfinite(logged["loss"]) and logged["contrastive_token"] > 0
    check_objectives_ran(logged)
    trainer.save_model(str(tmp_path / "saved"))  # save_pretrained: a plain float model, no GGUF quantizer
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    assert "quantization_config" not in (tmp_path / "saved" / "config.json").read_text()


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is optional (pip install 'entropy-reg[trl]')")
@pytest.mark.parametrize("lora", [False, True], ids=["full", "peft-lora"])
def test_trl_sft_trainer(tmp_path, lora):
    import trl
    from datasets import Dataset

    from entropy_reg.hf import EntropyRegularizedTrainerLoss, attach

    model, tokenizer = load_model_and_tokenizer(SMOLLM2_NAME)
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": " " + r["response"]} for r in records()])
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL 1.x deprecates compute_loss_func (still supported)
        trainer = trl.SFTTrainer(
            model=model,
            args=trl.SFTConfig(output_dir=str(tmp_path), max_steps=STEPS, logging_steps=1, max_length=MAX_LENGTH,
                               per_device_train_batch_size=2, report_to=[], save_strategy="no", disable_tqdm=True,
                               use_cpu=not torch.cuda.is_available()),
            train_dataset=data,
            processing_class=tokenizer,
            compute_loss_func=EntropyRegularizedTrainerLoss(loss(), objectives=objectives()),
            peft_config=peft_config,
        )
    before = weights(trainer.model)
    attach(trainer)
    trainer.train()
    assert not torch.equal(weights(trainer.model), before)
    if lora:
        from peft import PeftModel

        assert isinstance(trainer.model, PeftModel)
    logged = train_logs(trainer)
    assert math.isfinite(logged["loss"]) and logged["contrastive_token"] > 0
    check_objectives_ran(logged)
