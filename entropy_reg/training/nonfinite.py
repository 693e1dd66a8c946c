"""Non-finite losses in training: ranks agree on skipping a step, and a skipped step updates nothing.

Shared by :class:`~entropy_reg.module.CausalLMModule` and the
:class:`~entropy_reg.callbacks.EntropyRegularizer` callback (both offer ``on_nonfinite="raise"|"skip"``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor


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
