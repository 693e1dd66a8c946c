"""Non-finite losses in training: ranks agree on skipping a step, and a skipped step updates nothing.

Shared by :class:`~entropy_reg.module.CausalLMModule` and the
:class:`~entropy_reg.callbacks.EntropyRegularizer` callback (both offer ``on_nonfinite="raise"|"skip"``):
:class:`TrainStepLog` is their common step bookkeeping (the statistics window, skipped steps, dropped
updates), written once.

A diverging run stops at the first non-finite loss or gradient, before any weight turns non-finite:
the loss is checked in ``training_step`` and the gradients (one max-abs per parameter, agreed across
ranks) before every optimizer update, except under a gradient scaler (fp16), which skips overflowing
steps itself. The error (:class:`NonFiniteTrainingError`, a :class:`~entropy_reg.errors.UserError`,
so ``entropy-reg fit`` prints it as one line and exits 2) names the step, the likely cause (the learning
rate at that step) and the last checkpoint, which is kept as it was (nothing saves after the error).
With ``on_nonfinite="skip"`` such steps are skipped instead, until skipping cannot help: the weights are
non-finite, or :data:`MAX_CONSECUTIVE_SKIPS` steps in a row were skipped (a diverged model); then the
same error stops the run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from entropy_reg.errors import UserError
from entropy_reg.training.ranks import rank_zero_warn
from entropy_reg.training.stats_window import StatsWindow

# Skipped steps in a row after which on_nonfinite="skip" gives up: the model itself has diverged.
MAX_CONSECUTIVE_SKIPS = 10


class NonFiniteTrainingError(UserError, FloatingPointError):
    """Training met a non-finite loss or gradient; the message names the step, likely cause and checkpoint."""


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


def nonfinite_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any gradient of ``optimizer``'s parameters holds a NaN or an inf (one max-abs per tensor)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return False
    try:
        peaks = torch._foreach_norm(grads, float("inf"))
    except (AttributeError, RuntimeError, TypeError):
        peaks = [g.detach().abs().amax() for g in grads]
    return not bool(torch.isfinite(torch.stack([p.float().to(peaks[0].device) for p in peaks])).all())


def nonfinite_weights(module: nn.Module) -> list[str]:
    """Names of ``module``'s parameters that hold a NaN or an inf."""
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


def diagnosis(trainer: Any) -> str:
    """The likely cause (the learning rate at this step) and the last checkpoint, for a divergence message."""
    lrs = [g.get("lr") for opt in (getattr(trainer, "optimizers", None) or []) for g in opt.param_groups]
    lrs = [float(lr) for lr in lrs if isinstance(lr, int | float)]
    parts = []
    if lrs and max(lrs) >= 1e-2:
        parts.append(f"Likely cause: the learning rate ({max(lrs):.3g} at this step) is far too high for "
                     "fine-tuning (typical: 1e-5 to 3e-3); lower model.learning_rate.")
    elif lrs:
        parts.append(f"Likely causes: the learning rate ({max(lrs):.3g} at this step) is too high for this model, "
                     "no gradient clipping (trainer.gradient_clip_val), fp16 overflow (use bf16-mixed), or a bad batch.")
    saved = [(getattr(c, "_last_global_step_saved", None), getattr(c, "last_model_path", ""))
             for c in (getattr(trainer, "checkpoint_callbacks", None) or [])]
    saved = [(step, path) for step, path in saved if path]
    if saved:
        step, path = saved[0]
        parts.append(f"The last checkpoint (step {step}) is kept as it was: {path}.")
    else:
        parts.append("No checkpoint was written before it.")
    return " ".join(parts)


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
        self.consecutive_skips = 0
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
            raise NonFiniteTrainingError(
                f"{self.owner}: non-finite loss at {where}: {cause}. The weights were not updated at this "
                f"step. {diagnosis(trainer)} {self.advice}"
            ) from error
        broken = nonfinite_weights(pl_module)
        # Sharded parameters differ across ranks: agree, so that all ranks raise or all skip.
        broken_anywhere = nonfinite_on_any_rank(bool(broken), trainer, pl_module.device)
        if broken_anywhere or self.consecutive_skips + 1 >= MAX_CONSECUTIVE_SKIPS:
            if broken_anywhere:
                names = ", ".join(broken[:3]) + (" ..." if len(broken) > 3 else "") if broken else "on another rank"
                why = f"the weights themselves are non-finite ({names})"
            else:
                why = f"{MAX_CONSECUTIVE_SKIPS} steps in a row had a non-finite loss"
            raise NonFiniteTrainingError(
                f"{self.owner}: training diverged at {where}: {why}, so skipping steps cannot help "
                f"(on_nonfinite='skip'; last cause: {cause}). {diagnosis(trainer)}"
            ) from error
        self.skipped += 1
        self.consecutive_skips += 1
        self.drop_next_update = True  # also drops micro-batches already accumulated into this step
        rank_zero_warn(f"{self.owner}: skipping {where}: non-finite loss ({cause}); no weight update.", stacklevel=3)
        self.log_window(trainer, pl_module, scale, objectives)
        # One process: None is Lightning's own "skip this batch". DDP: Lightning refuses None, so every
        # rank backpropagates an exact 0 and the gradients are dropped before the update.
        return skip_step_loss(pl_module) if trainer.world_size > 1 else None

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, trainer: Any = None) -> None:
        """Drop a skipped step's update; stop (or skip) at a non-finite gradient before it reaches the weights."""
        if self.drop_next_update:
            self.drop_next_update = False
            drop_gradients(optimizer)
            return
        if trainer is not None and getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is None:
            bad = nonfinite_on_any_rank(nonfinite_gradients(optimizer), trainer, trainer.strategy.root_device)
            if bad:
                where = f"global step {trainer.global_step} (epoch {trainer.current_epoch})"
                if self.on_nonfinite == "raise":
                    raise NonFiniteTrainingError(
                        f"{self.owner}: non-finite gradient at {where} (the loss was finite). The weights were not "
                        f"updated at this step. {diagnosis(trainer)} {self.advice}"
                    )
                if self.consecutive_skips + 1 >= MAX_CONSECUTIVE_SKIPS:
                    raise NonFiniteTrainingError(
                        f"{self.owner}: training diverged at {where}: {MAX_CONSECUTIVE_SKIPS} steps in a row were "
                        f"non-finite, so skipping steps cannot help (on_nonfinite='skip'). {diagnosis(trainer)}"
                    )
                self.skipped += 1
                self.consecutive_skips += 1
                rank_zero_warn(f"{self.owner}: skipping {where}: non-finite gradient; no weight update.", stacklevel=3)
                drop_gradients(optimizer)
                return
        self.consecutive_skips = 0
