"""Objectives under 2-process DDP (CPU, gloo, ddp_spawn): DITTO equals one process on the global batch;
sequence-level unlikelihood does not hang when one rank marks nothing.

The ranks get deliberately unequal numbers of penalised tokens, so a mean of per-rank means differs
from the global mean over penalised tokens (asserted too): the test fails for per-rank normalisation.
"""

from __future__ import annotations

import copy

import pytest
import torch
from ddp_helpers import (
    Record,
    SGDModule,
    cat_halves,
    ddp_trainer,
    rank_ordered_loader,
    recorded_metrics,
    recorded_params,
)
from lightning.pytorch import seed_everything
from tiny_models import TINY
from torch.utils.data import DataLoader

from entropy_reg.objectives import ObjectiveContext, RepetitionConsistency, SequenceUnlikelihood

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

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
    return cat_halves([half_batch(0, step), half_batch(1, step)])


def loader(steps: int) -> DataLoader:
    return rank_ordered_loader(half_batch, steps)


class ScriptedContinuations(SequenceUnlikelihood):
    """Continuations chosen by the prefix's content (not the rank): repeats after token 50, none otherwise."""

    def continue_prefixes(self, model, prefixes, step):
        rows = []
        for prefix in prefixes.tolist():
            rows.append([11, 12, 11, 12, 11, 12] if prefix[0] == 50 else [30, 31, 32, 33, 34, 35])
        return torch.cat([prefixes, torch.tensor(rows)], dim=1)


def run_ddp(module, tmp_path, steps: int, data: DataLoader) -> None:
    ddp_trainer(steps, [Record(str(tmp_path))], limit_val_batches=0).fit(module, train_dataloaders=data)


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
    p0, p1 = recorded_params(tmp_path, "step1")
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    diff = (p0 - after).abs().max().item()
    print(f"DITTO DDP vs single process: max |param diff| after 1 SGD step = {diff:.3e}")
    assert diff < 1e-6
    for metrics in recorded_metrics(tmp_path, "step1"):
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
    global_b = cat_halves([batch(0, 0), batch(1, 0)])
    after = one_sgd_step(module, global_b)
    assert int(seq_ul.compute(module.model, batch(1, 0), ObjectiveContext()).stats["marked_share"][0]) == 0

    run_ddp(module, tmp_path, 2, rank_ordered_loader(batch, 2))
    p0, p1 = recorded_params(tmp_path, "step1")
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    assert torch.isfinite(p0).all()
    assert (p0 - after).abs().max().item() < 1e-6
    for metrics in recorded_metrics(tmp_path, "step2"):
        # rank 0: 3 marked of 6 per row (2 rows); rank 1: 0 of 12 -> 6 / 24 over both ranks
        assert metrics["train/seq_ul/marked_share"] == pytest.approx(6 / 24)
