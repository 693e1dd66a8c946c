"""Shared set-up of the 2-process DDP tests (CPU, gloo, ddp_spawn): the rank-ordered loader, an SGD
module, a callback that writes what each rank saw to files, and the Trainer they run under."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from entropy_reg.module import CausalLMModule

HalfBatch = Callable[[int, int], dict[str, torch.Tensor]]  # (rank, step) -> that rank's batch


def cat_halves(halves: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The global batch: the ranks' batches concatenated in rank order."""
    return {k: torch.cat([h[k] for h in halves]) for k in halves[0]}


def rank_ordered_loader(half_batch: HalfBatch, steps: int) -> DataLoader:
    # Pre-batched items in rank order: the DistributedSampler Lightning inserts (no shuffle for a
    # sequential loader) gives rank r the items r, r + 2, ...
    return DataLoader([half_batch(rank, step) for step in range(steps) for rank in (0, 1)], batch_size=None)


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


class SGDModule(CausalLMModule):
    """SGD with lr 1: the parameter change after one step is exactly minus the gradient."""

    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


class Record(Callback):
    """ddp_spawn ranks are processes: write what each rank saw to files.

    After each training batch: ``step{N}_rank{r}.json`` (the callback metrics) and
    ``step{N}_params_rank{r}.pt`` (the flat parameters), N the global step; after validation at a
    global step in ``val_steps``, the same as ``val{N}_...``.
    """

    def __init__(self, out: str, val_steps: Sequence[int] = ()) -> None:
        self.out = Path(out)
        self.val_steps = tuple(val_steps)

    def _write(self, trainer, pl_module, name: str) -> None:
        rank = trainer.global_rank
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        (self.out / f"{name}_rank{rank}.json").write_text(json.dumps(metrics))
        torch.save(flat_params(pl_module), self.out / f"{name}_params_rank{rank}.pt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._write(trainer, pl_module, f"step{trainer.global_step}")

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_step in self.val_steps:
            self._write(trainer, pl_module, f"val{trainer.global_step}")


def recorded_params(out: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank 0's and rank 1's parameters that :class:`Record` wrote as ``name`` (e.g. "step1")."""
    return tuple(torch.load(Path(out) / f"{name}_params_rank{r}.pt") for r in (0, 1))


def recorded_metrics(out: Path, name: str) -> list[dict[str, float]]:
    """Rank 0's and rank 1's metrics that :class:`Record` wrote as ``name``."""
    return [json.loads((Path(out) / f"{name}_rank{r}.json").read_text()) for r in (0, 1)]


def ddp_trainer(max_steps: int, callbacks: list[Callback], logger=False, **kwargs) -> Trainer:
    """Two CPU processes under ddp_spawn; a 90 s process-group timeout turns a hang into an error."""
    return Trainer(
        max_steps=max_steps, accelerator="cpu", devices=2,
        strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=90)),
        logger=logger, log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, **kwargs,
    )
