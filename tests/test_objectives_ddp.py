"""Objectives under 2-process DDP (CPU, gloo, ddp_spawn): DITTO equals one process on the global batch;
sequence-level unlikelihood does not hang when one rank marks nothing.

The ranks get deliberately unequal numbers of penalised tokens, so a mean of per-rank means differs
from the global mean over penalised tokens (asserted too): the test fails for per-rank normalisation.
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from entropy_reg.module import CausalLMModule
from entropy_reg.objectives import ObjectiveContext, RepetitionConsistency, SequenceUnlikelihood

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_position_embeddings": 64}
V, T, END = 64, 24, 7
# rank 0: long prompt, 3-token sentences; rank 1: short prompt, 5-token sentences
SHAPES = {0: (10, 3), 1: (2, 5)}


def half_batch(rank: int, step: int) -> dict[str, torch.Tensor]:
    prompt, period = SHAPES[rank]
    g = torch.Generator().manual_seed(100 * step + rank)
    ids = torch.randint(10, V, (2, T), generator=g)
    ids[:, prompt + period - 1 :: period] = END
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def global_batch(step: int) -> dict[str, torch.Tensor]:
    halves = [half_batch(0, step), half_batch(1, step)]
    return {k: torch.cat([h[k] for h in halves]) for k in halves[0]}


def loader(steps: int) -> DataLoader:
    return DataLoader([half_batch(rank, step) for step in range(steps) for rank in (0, 1)], batch_size=None)


class ScriptedContinuations(SequenceUnlikelihood):
    """Continuations chosen by the prefix's content (not the rank): repeats after token 50, none otherwise."""

    def continue_prefixes(self, model, prefixes, step):
        rows = []
        for prefix in prefixes.tolist():
            rows.append([11, 12, 11, 12, 11, 12] if prefix[0] == 50 else [30, 31, 32, 33, 34, 35])
        return torch.cat([prefixes, torch.tensor(rows)], dim=1)


class SGDModule(CausalLMModule):
    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


class Record(Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rank, step = trainer.global_rank, trainer.global_step
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (self.out / f"step{step}_rank{rank}.json").write_text(json.dumps(metrics))
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        torch.save(flat, self.out / f"step{step}_params_rank{rank}.pt")


def run_ddp(module, tmp_path, steps: int, data: DataLoader) -> None:
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", devices=2,
        strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=90)),
        logger=False, log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[Record(str(tmp_path))],
    )
    trainer.fit(module, train_dataloaders=data)


def one_sgd_step(module, batch) -> torch.Tensor:
    """Parameters after one SGD(lr=1) step of one process on ``batch`` (CE + objectives)."""
    module = copy.deepcopy(module)
    params = list(module.parameters())
    loss = module._loss(batch).loss + module._objectives_loss(batch)
    grads = torch.autograd.grad(loss, params)
    return torch.cat([(p.detach() - g).flatten() for p, g in zip(params, grads, strict=True)])


def test_ditto_ddp_equals_one_process_on_the_global_batch(tmp_path):
    seed_everything(0)
    # A large weight: the objective's gradient dominates the CE's, so its normalisation shows.
    ditto = RepetitionConsistency(weight=100.0, rate=1.0, sentence_end_ids=[END], min_sentence_tokens=2,
                                  max_sentence_tokens=8)
    module = SGDModule(tiny_config=TINY, objectives=[ditto])
    with torch.no_grad():
        module.model.get_output_embeddings().weight.mul_(10.0)
    after = one_sgd_step(module, global_batch(0))
    out = ditto.compute(module.model, global_batch(0), ObjectiveContext())
    global_mean = (out.stats["loss"][0] / out.stats["loss"][1]).item()
    # contrast: each rank normalising by its own penalised tokens (a mean of per-rank means)
    local = copy.deepcopy(module)
    halves = [ditto.compute(local.model, half_batch(r, 0), ObjectiveContext()) for r in (0, 1)]
    assert int(halves[0].stats["loss"][1]) != int(halves[1].stats["loss"][1])  # unequal per rank
    params = list(local.parameters())
    loss = local._loss(global_batch(0)).loss + ditto.weight * (halves[0].loss + halves[1].loss) / 2
    grads = torch.autograd.grad(loss, params)
    after_local = torch.cat([(p.detach() - g).flatten() for p, g in zip(params, grads, strict=True)])
    assert (after_local - after).abs().max().item() > 1e-4  # the test can tell them apart

    run_ddp(module, tmp_path, 1, loader(1))
    p0, p1 = (torch.load(tmp_path / f"step1_params_rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    diff = (p0 - after).abs().max().item()
    print(f"DITTO DDP vs single process: max |param diff| after 1 SGD step = {diff:.3e}")
    assert diff < 1e-6
    for r in (0, 1):
        metrics = json.loads((tmp_path / f"step1_rank{r}.json").read_text())
        assert metrics["train/ditto"] == pytest.approx(global_mean, rel=1e-5)


def test_seq_ul_under_ddp_does_not_hang_when_one_rank_marks_nothing(tmp_path):
    seed_everything(0)
    seq_ul = ScriptedContinuations(rate=1.0, prefix_length=4, continuation_length=6, ngram=2)

    def batch(rank: int, step: int) -> dict[str, torch.Tensor]:
        b = half_batch(rank, step)
        b["input_ids"][:, SHAPES[rank][0]] = 50 if rank == 0 else 51  # rank 0's continuations repeat
        b["labels"][:, SHAPES[rank][0]] = b["input_ids"][:, SHAPES[rank][0]]
        return b

    module = SGDModule(tiny_config=TINY, objectives=[seq_ul])
    global_b = {k: torch.cat([batch(0, 0)[k], batch(1, 0)[k]]) for k in batch(0, 0)}
    after = one_sgd_step(module, global_b)
    assert int(seq_ul.compute(module.model, batch(1, 0), ObjectiveContext()).stats["marked_share"][0]) == 0

    run_ddp(module, tmp_path, 2, DataLoader([batch(r, s) for s in range(2) for r in (0, 1)], batch_size=None))
    p0, p1 = (torch.load(tmp_path / f"step1_params_rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    assert torch.isfinite(p0).all()
    assert (p0 - after).abs().max().item() < 1e-6
    for r in (0, 1):
        metrics = json.loads((tmp_path / f"step2_rank{r}.json").read_text())
        # rank 0: 3 marked of 6 per row (2 rows); rank 1: 0 of 12 -> 6 / 24 over both ranks
        assert metrics["train/seq_ul/marked_share"] == pytest.approx(6 / 24)
