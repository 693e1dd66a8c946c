"""EntropyRegularizer + GenerationEval on a user's LightningModule under 2-process DDP (CPU, ddp_spawn).

- the logged train/* statistics equal one process on the global batch, although the ranks hold 4 and
  20 labelled tokens (sums and counts are reduced, not means);
- the one-pass loss (CE + regularizers in out.loss) with the user passing ``num_items_in_batch`` =
  global token count / world size gives the parameters of one process on the global batch (SGD);
- GenerationEval generating on rank 0 every step while rank 1 waits at the barrier finishes (a 90 s
  process-group timeout turns a hang into an error);
- a NaN in rank 1's logits at step 1 with on_nonfinite="skip" skips the step on both ranks.

"""

from __future__ import annotations

import csv

import pytest
import torch
from ddp_helpers import Record, ddp_trainer, flat_params, recorded_metrics, recorded_params
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from test_callback import UserModule, combined_loss
from test_ddp import global_batch, loader
from test_generation_eval import char_tokenizer
from torch.utils.data import DataLoader

from entropy_reg.callbacks import EntropyRegularizer, GenerationEval

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


class PoisonedUserModule(UserModule):
    """A user module normalising by the global token count, as transformers' Trainer does with
    ``average_tokens_across_devices``; rank 1's logits become NaN at global step 1 (a forward hook, as a
    fault would)."""

    def __init__(self) -> None:
        super().__init__(sgd=True, lr=0.5)

    def training_step(self, batch, batch_idx):
        count = (batch["labels"][:, 1:] != -100).sum().to(torch.float32)
        total = self.trainer.strategy.reduce(count, reduce_op="sum")
        loss = self.model(**batch, num_items_in_batch=total / self.trainer.world_size).loss
        self.user_losses.append(loss.item())
        return loss

    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)
        self.model.lm_head.register_forward_hook(self._poison)

    def _poison(self, module, args, output):
        if self.training and torch.is_grad_enabled() and (self.global_rank, self.global_step) == (1, 1):
            return torch.full_like(output, float("nan"))
        return output


def test_regularizer_and_generation_eval_under_ddp(tmp_path):
    seed_everything(0)
    module = PoisonedUserModule()
    module.tokenizer = char_tokenizer()  # GenerationEval finds it here
    with torch.no_grad():  # single-process reference statistics at the initial weights, global batch
        batch = global_batch(0)
        logits = module.model(**batch).logits
        ref = combined_loss()(logits=logits, labels=batch["labels"], input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"], include_ce=False).metrics

    single = PoisonedUserModule()  # one process, one step on the global batch
    Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False,
            callbacks=[EntropyRegularizer(combined_loss())]).fit(single, DataLoader([global_batch(0)], batch_size=None))

    generation = GenerationEval(prompts=["ab", "hello"], every_n_steps=1, on_validation_end=False,
                                decodings=["greedy"], max_new_tokens=4, batch_size=2, progress=False)
    trainer = ddp_trainer(
        2, [EntropyRegularizer(combined_loss(), on_nonfinite="skip"), generation, Record(str(tmp_path))],
        logger=CSVLogger(tmp_path, name="logs", version="v"),
    )
    trainer.fit(module, train_dataloaders=loader(2))

    ranks = recorded_metrics(tmp_path, "step1")
    worst = 0.0
    for key in ("ce", "entropy", "tail_mass", "copy_mass", "tail_mass_floor", "anti_copy", "entropy_floor"):
        for rank in ranks:
            assert rank[f"train/{key}"] == pytest.approx(ref[key].item(), rel=1e-5, abs=1e-6), key
            worst = max(worst, abs(rank[f"train/{key}"] - ref[key].item()))
    print(f"EntropyRegularizer DDP vs single process: max |train/* diff| = {worst:.3e}")

    # step 0: the one-pass loss under DDP moved the weights exactly as one process on the global batch
    single_params = flat_params(single)
    ddp_params = recorded_params(tmp_path, "step1")[0]
    initial = flat_params(PoisonedUserModule())
    assert (ddp_params - initial).abs().max() > 1e-2
    torch.testing.assert_close(ddp_params, single_params, rtol=0, atol=2e-6)

    # step 1 skipped on both ranks (NaN on rank 1 only): weights unchanged and finite
    q0, q1 = recorded_params(tmp_path, "step2")
    assert torch.isfinite(q0).all()
    torch.testing.assert_close(q0, ddp_params, rtol=0, atol=0)
    torch.testing.assert_close(q1, ddp_params, rtol=0, atol=0)
    assert recorded_metrics(tmp_path, "step2")[0]["train/nonfinite_skipped"] == 1.0

    # generation ran on rank 0 after each optimizer step and was logged
    with open(tmp_path / "logs" / "v" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/greedy/seq_rep_4")]
    assert sorted(int(r["step"]) for r in rows) == [1, 2]
