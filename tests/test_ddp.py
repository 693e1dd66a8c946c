"""2-process DDP (CPU, gloo, ddp_spawn) equals one process on the same global batch.

The two ranks get deliberately unequal numbers of non-ignored labels (4 vs 20), so a mean of per-rank
means differs from the global token mean: the test fails for "local" normalisation or mean-of-means
metric reduction (the contrast is asserted too). Checked for CausalLMModule: the loss gradient
(parameters after one SGD step with lr 1), the logged train/* statistics, val/ppl, and a step skipped
on both ranks when only rank 1 sees a NaN (on_nonfinite="skip").
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
    flat_params,
    rank_ordered_loader,
    recorded_metrics,
    recorded_params,
)
from lightning.pytorch import seed_everything
from tiny_models import TINY, three_term_loss
from torch.utils.data import DataLoader

from entropy_reg.losses import EntropyRegularizedLoss
from entropy_reg.module import CausalLMModule

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

V, T = 64, 12
PROMPT_LEN = (10, 2)  # labels per row: 12 - 10 = 2 on rank 0, 12 - 2 = 10 on rank 1


def half_batch(rank: int, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    ids = torch.randint(0, V, (2, T), generator=g)
    ids[:, 6:] = ids[:, :6]  # a repeat, so the copy mass is not tiny
    labels = ids.clone()
    labels[:, : PROMPT_LEN[rank]] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def global_batch(step: int) -> dict[str, torch.Tensor]:
    return cat_halves([half_batch(0, step), half_batch(1, step)])


def loader(steps: int) -> DataLoader:
    return rank_ordered_loader(half_batch, steps)


def loss() -> EntropyRegularizedLoss:
    return three_term_loss(top_k=3, floor=0.9, min_entropy=8.0, weights=(1.0, 0.5, 0.3))


class PoisonedSGDModule(SGDModule):
    """SGD with lr 1 (see ddp_helpers.SGDModule); one rank's final hidden states become NaN at one step."""

    nan_rank_step = (1, 1)  # (rank, global_step) whose final hidden states become NaN

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.model.get_decoder().norm.register_forward_hook(self._poison)

    def _poison(self, module, args, output):
        if self.training and (self.global_rank, self.global_step) == self.nan_rank_step:
            return output.masked_fill(torch.ones_like(output, dtype=torch.bool), float("nan"))
        return output


def single_process_reference(module: CausalLMModule) -> dict:
    """What one process computes on the global batch: loss, gradient, metrics, val ppl."""
    module = copy.deepcopy(module)
    params = list(module.parameters())
    out = module._loss(global_batch(0))
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    flat_grad = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)])
    flat = flat_params(module)
    # "local" normalisation / mean of means, for contrast
    halves = [module._loss(half_batch(r, 0)) for r in (0, 1)]
    local = torch.autograd.grad((halves[0].loss + halves[1].loss) / 2, params, allow_unused=True)
    flat_local = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(local, params, strict=True)])
    with torch.no_grad():
        after = flat - flat_grad
        val = module._loss(global_batch(99))  # the val batch (see val_loader)
        val_halves = [module._loss(half_batch(r, 99)) for r in (0, 1)]
    return {
        "before": flat, "after": after, "after_local": flat - flat_local, "metrics": out.metrics,
        "mean_of_means": {k: (halves[0].metrics[k] + halves[1].metrics[k]) / 2 for k in out.metrics},
        "counts": [int(h.count) for h in halves],
        "val_ppl_at_step0": torch.exp(val.metrics["ce"].double()).item(),
        "val_halves_ce": [h.metrics["ce"].item() for h in val_halves],
    }


def test_causal_lm_module_ddp_equals_single_process(tmp_path):
    seed_everything(0)
    module = PoisonedSGDModule(tiny_config=TINY, loss=loss(), on_nonfinite="skip")
    with torch.no_grad():  # sharper, more varied distributions than at init, so means of means differ
        module.model.get_output_embeddings().weight.mul_(10.0)
    ref = single_process_reference(module)
    assert ref["counts"] == [2 * (T - PROMPT_LEN[0]), 2 * (T - PROMPT_LEN[1])]  # 4 vs 20 labels

    val_loader = DataLoader([half_batch(r, 99) for r in (0, 1)], batch_size=None)
    trainer = ddp_trainer(2, [Record(str(tmp_path), val_steps=[1])], num_sanity_val_steps=0, val_check_interval=1,
                          limit_val_batches=1)
    trainer.fit(module, train_dataloaders=loader(2), val_dataloaders=val_loader)

    # 1) gradient: parameters after one SGD(lr=1) step equal the single-process step on the global batch
    p0, p1 = recorded_params(tmp_path, "step1")
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)  # DDP keeps replicas identical
    diff = (p0 - ref["after"]).abs().max().item()
    contrast = (ref["after_local"] - ref["after"]).abs().max().item()
    print(f"DDP vs single process: max |param diff| after 1 SGD step = {diff:.3e} (local normalisation: {contrast:.3e})")
    assert diff < 1e-6 and contrast > 1e-3
    assert (p0 - ref["before"]).abs().max() > 1e-3  # the step moved the weights

    # 2) logged train statistics are global token means (sums and counts reduced), on both ranks
    ranks = recorded_metrics(tmp_path, "step1")
    for key in ("loss", "ce", "entropy", "tail_mass", "copy_mass", "tail_mass_floor", "anti_copy", "entropy_floor"):
        want = ref["metrics"][key].item()
        for rank in ranks:
            assert rank[f"train/{key}"] == pytest.approx(want, rel=1e-5, abs=1e-6), key
    metric_diff = max(abs(r[f"train/{k}"] - ref["metrics"][k].item()) for r in ranks for k in ref["metrics"])
    print(f"DDP vs single process: max |train/* diff| = {metric_diff:.3e}")
    for key in ("entropy", "copy_mass", "ce", "loss"):  # the test can tell a mean of means apart
        assert abs(ref["mean_of_means"][key].item() - ref["metrics"][key].item()) > 1e-3, key

    # 3) val/ppl after step 1 equals exp(token-mean CE) of one process over both val halves
    val = recorded_metrics(tmp_path, "val1")
    single = copy.deepcopy(module)  # ddp_spawn copied rank 0's weights back here: p0
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(p0, single.parameters())
        ce = single._loss(global_batch(99)).metrics["ce"]
    for rank in val:
        assert rank["val/ppl"] == pytest.approx(torch.exp(ce.double()).item(), rel=1e-5)
        assert rank["val/loss"] == pytest.approx(ce.item(), rel=1e-5)
    print(f"DDP vs single process: |val/ppl diff| = {abs(val[0]['val/ppl'] - torch.exp(ce.double()).item()):.3e}")

    # 4) NaN on rank 1 only at step 1: both ranks skip the step (no hang, no NaN in the weights)
    q0, q1 = recorded_params(tmp_path, "step2")
    assert torch.isfinite(q0).all()
    torch.testing.assert_close(q0, p0, rtol=0, atol=0)
    torch.testing.assert_close(q1, p0, rtol=0, atol=0)
    assert recorded_metrics(tmp_path, "step2")[0]["train/nonfinite_skipped"] == 1.0
