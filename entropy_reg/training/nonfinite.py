"""Non-finite losses in training: ranks agree on skipping a step, and a skipped step updates nothing.

Shared by :class:`~entropy_reg.module.CausalLMModule` and the
:class:`~entropy_reg.callbacks.EntropyRegularizer` callback (both offer ``on_nonfinite="raise"|"skip"``):
:class:`TrainStepLog` is their common step bookkeeping (the statistics window, skipped steps, dropped
updates), written once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from entropy_reg.training.ranks import rank_zero_warn
from entropy_reg.training.stats_window import StatsWindow


def nonfinite_on_any_rank(bad: bool, trainer: Any, device: Any) -> bool:
    """Whether any rank hit a non-finite loss this step (one all-reduce of a flag under DDP).

    All ranks must take the same branch: if one rank skipped backward (or raised) while the others
    ran it, the others would wait forever in DDP's gradient all-reduce.
    """
    if trainer is None or trainer.world_size <= 1:
        return bad
    flag = torch.tensor(1.0 if bad else 0.0, device=device)
    return bool(trainer.strategy.reduce(flag, reduce_op="sum").item() > 0)


def skip_step_loss(module: nn.Module) -> Tensor:
    """An exact 0 loss that reaches every trainable parameter, for skipping a step under DDP.

    Lightning 2.6 refuses ``training_step`` returning None in distributed training, and DDP needs
    every rank to run a backward that reaches all parameters. This loss does (with zero gradients,
    never through the non-finite activations); :func:`drop_gradients` then removes them before the
    optimizer update, so momentum, weight decay and step counts do not move either.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.stack([p.sum() for p in params]).sum() * 0.0


def drop_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Set every gradient to None: torch optimizers leave such parameters (and their state) untouched."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


class TrainStepLog:
    """The training-step bookkeeping of a Lightning entry point: statistics window and non-finite steps.

    ``log_window`` is called exactly once per ``training_step`` on every rank (skipped steps included):
    the window's cadence decides who joins its collective. ``handle_nonfinite`` raises or skips a step
    whose loss was non-finite on some rank; a skipped step's gradients are dropped in
    ``before_optimizer_step``.

    Args:
        owner: the class named in messages (``"CausalLMModule"``).
        on_nonfinite: ``"raise"`` or ``"skip"``.
        window: the ``train/`` statistics window.
        advice: the end of the raise message (what the user can do).
    """

    def __init__(self, owner: str, on_nonfinite: str, window: StatsWindow, advice: str) -> None:
        self.owner = owner
        self.on_nonfinite = on_nonfinite
        self.window = window
        self.advice = advice
        self.skipped = 0
        self.drop_next_update = False

    def log_window(self, trainer: Any, pl_module: Any, scale: float, objectives: Any, final: bool = False) -> None:
        """Reduce and log the window on its log steps (``final``: the window still open at the end)."""
        if self.window.has_open_window() if final else self.window.step_is_log_step(trainer):
            metrics = self.window.reduce(trainer.strategy)
            metrics["train/reg_scale"] = torch.tensor(float(scale))
            if objectives:
                metrics.update(objectives.stats.reduce(trainer.strategy))
            if self.skipped:
                metrics["train/nonfinite_skipped"] = torch.tensor(float(self.skipped))
            self.window.log(trainer, pl_module, metrics, final=final)

    def handle_nonfinite(self, trainer: Any, pl_module: Any, error: FloatingPointError | None, batch_idx: Any,
                         scale: float, objectives: Any) -> Tensor | None:
        """Raise (``on_nonfinite="raise"``) or skip the step: the value ``training_step`` returns then."""
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
        cause = str(error) if error is not None else "on another rank"
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"{self.owner}: non-finite loss at {where}: {cause}. The weights were not updated at this "
                f"step. {self.advice}"
            ) from error
        self.skipped += 1
        self.drop_next_update = True  # also drops micro-batches already accumulated into this step
        rank_zero_warn(f"{self.owner}: skipping {where}: non-finite loss ({cause}); no weight update.", stacklevel=3)
        self.log_window(trainer, pl_module, scale, objectives)
        # One process: None is Lightning's own "skip this batch". DDP: Lightning refuses None, so every
        # rank backpropagates an exact 0 and the gradients are dropped before the update.
        return skip_step_loss(pl_module) if trainer.world_size > 1 else None

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.drop_next_update:
            self.drop_next_update = False
            drop_gradients(optimizer)
