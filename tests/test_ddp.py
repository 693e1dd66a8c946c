"""2-process DDP (CPU, gloo, ddp_spawn) equals one process on the same global batch.

The two ranks get deliberately unequal numbers of non-ignored labels (4 vs 20), so a mean of per-rank
means differs from the global token mean: the test fails for "local" normalisation or mean-of-means
metric reduction (the contrast is asserted too). Checked for CausalLMModule: the loss gradient
(parameters after one SGD step with lr 1), the logged train/* statistics, val/ppl, and a step skipped
on both ranks when only rank 1 sees a NaN (on_nonfinite="skip").
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

from entropy_reg.losses import AntiCopyPenalty, EntropyFloor, EntropyRegularizedLoss, TailMassFloor
from entropy_reg.module import CausalLMModule

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "max_position_embeddings": 64}
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
    halves = [half_batch(0, step), half_batch(1, step)]
    return {k: torch.cat([h[k] for h in halves]) for k in halves[0]}


def loader(steps: int) -> DataLoader:
    # Pre-batched items in rank order: the DistributedSampler Lightning inserts (no shuffle for a
    # sequential loader) gives rank r the items r, r + 2, ...
    return DataLoader([half_batch(rank, step) for step in range(steps) for rank in (0, 1)], batch_size=None)


def loss() -> EntropyRegularizedLoss:
    return EntropyRegularizedLoss(
        [TailMassFloor(top_k=3, floor=0.9), AntiCopyPenalty(weight=0.5), EntropyFloor(min_entropy=8.0, weight=0.3)]
    )


class SGDModule(CausalLMModule):
    """SGD with lr 1: the parameter change after one step is exactly minus the gradient."""

    nan_rank_step = (1, 1)  # (rank, global_step) whose final hidden states become NaN

    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)
        self.model.get_decoder().norm.register_forward_hook(self._poison)

    def _poison(self, module, args, output):
        if self.training and (self.global_rank, self.global_step) == self.nan_rank_step:
            return output.masked_fill(torch.ones_like(output, dtype=torch.bool), float("nan"))
        return output

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


class Record(Callback):
    """ddp_spawn ranks are processes: write what each rank saw to files."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def _write(self, trainer, pl_module, name: str) -> None:
        rank = trainer.global_rank
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (self.out / f"{name}_rank{rank}.json").write_text(json.dumps(metrics))
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        torch.save(flat, self.out / f"{name}_params_rank{rank}.pt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._write(trainer, pl_module, f"step{trainer.global_step}")

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_step == 1:
            self._write(trainer, pl_module, "val1")


def single_process_reference(module: CausalLMModule) -> dict:
    """What one process computes on the global batch: loss, gradient, metrics, val ppl."""
    module = copy.deepcopy(module)
    params = list(module.parameters())
    out = module._loss(global_batch(0))
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    flat_grad = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)])
    flat = torch.cat([p.detach().flatten() for p in params])
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
    module = SGDModule(tiny_config=TINY, loss=loss(), on_nonfinite="skip")
    with torch.no_grad():  # sharper, more varied distributions than at init, so means of means differ
        module.model.get_output_embeddings().weight.mul_(10.0)
    ref = single_process_reference(module)
    assert ref["counts"] == [2 * (T - PROMPT_LEN[0]), 2 * (T - PROMPT_LEN[1])]  # 4 vs 20 labels

    val_loader = DataLoader([half_batch(r, 99) for r in (0, 1)], batch_size=None)
    trainer = Trainer(
        max_steps=2, accelerator="cpu", devices=2,
        strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=90)),
        logger=False, log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, val_check_interval=1, limit_val_batches=1,
        callbacks=[Record(str(tmp_path))],
    )
    trainer.fit(module, train_dataloaders=loader(2), val_dataloaders=val_loader)

    # 1) gradient: parameters after one SGD(lr=1) step equal the single-process step on the global batch
    p0, p1 = (torch.load(tmp_path / f"step1_params_rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)  # DDP keeps replicas identical
    diff = (p0 - ref["after"]).abs().max().item()
    contrast = (ref["after_local"] - ref["after"]).abs().max().item()
    print(f"DDP vs single process: max |param diff| after 1 SGD step = {diff:.3e} (local normalisation: {contrast:.3e})")
    assert diff < 1e-6 and contrast > 1e-3
    assert (p0 - ref["before"]).abs().max() > 1e-3  # the step moved the weights

    # 2) logged train statistics are global token means (sums and counts reduced), on both ranks
    ranks = [json.loads((tmp_path / f"step1_rank{r}.json").read_text()) for r in (0, 1)]
    for key in ("loss", "ce", "entropy", "tail_mass", "copy_mass", "tail_mass_floor", "anti_copy", "entropy_floor"):
        want = ref["metrics"][key].item()
        for rank in ranks:
            assert rank[f"train/{key}"] == pytest.approx(want, rel=1e-5, abs=1e-6), key
    metric_diff = max(abs(r[f"train/{k}"] - ref["metrics"][k].item()) for r in ranks for k in ref["metrics"])
    print(f"DDP vs single process: max |train/* diff| = {metric_diff:.3e}")
    for key in ("entropy", "copy_mass", "ce", "loss"):  # the test can tell a mean of means apart
        assert abs(ref["mean_of_means"][key].item() - ref["metrics"][key].item()) > 1e-3, key

    # 3) val/ppl after step 1 equals exp(token-mean CE) of one process over both val halves
    val = [json.loads((tmp_path / f"val1_rank{r}.json").read_text()) for r in (0, 1)]
    single = copy.deepcopy(module)  # ddp_spawn copied rank 0's weights back here: p0
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(p0, single.parameters())
        ce = single._loss(global_batch(99)).metrics["ce"]
    for rank in val:
        assert rank["val/ppl"] == pytest.approx(torch.exp(ce.double()).item(), rel=1e-5)
        assert rank["val/loss"] == pytest.approx(ce.item(), rel=1e-5)
    print(f"DDP vs single process: |val/ppl diff| = {abs(val[0]['val/ppl'] - torch.exp(ce.double()).item()):.3e}")

    # 4) NaN on rank 1 only at step 1: both ranks skip the step (no hang, no NaN in the weights)
    q0, q1 = (torch.load(tmp_path / f"step2_params_rank{r}.pt") for r in (0, 1))
    assert torch.isfinite(q0).all()
    torch.testing.assert_close(q0, p0, rtol=0, atol=0)
    torch.testing.assert_close(q1, p0, rtol=0, atol=0)
    assert json.loads((tmp_path / "step2_rank0.json").read_text())["train/nonfinite_skipped"] == 1.0
