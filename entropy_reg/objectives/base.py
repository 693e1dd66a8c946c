"""The objective concept: a loss that builds its own batch and runs its own forward through the model.

Row-wise regularizers (``entropy_reg.losses``) are functions of the per-token statistics of the
training batch itself. An objective instead derives a *new* batch from the training batch (a
pseudo-repetitive sequence, the model's own continuation), runs the same model on it, and returns a
scalar loss plus statistics. Every entry point (``CausalLMModule``, ``EntropyRegularizer``,
``EntropyRegularizedTrainerLoss``) runs objectives through :class:`~entropy_reg.objectives.runner.ObjectiveRunner`,
which adds ``scale * weight * loss`` to the step's loss.

Which steps run an objective (``rate``) is decided by a generator re-seeded from ``(seed, step)`` at every
optimizer step: identical on all ranks without communication, identical for every micro-batch of one
accumulated step, and identical after a resume (the checkpoint restores ``seed``; nothing else is needed).
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from entropy_reg.losses.regularizers import _Checked
from entropy_reg.training.nonfinite import skip_step_loss
from entropy_reg.validation import (  # noqa: F401 (the objectives' checks)
    check_bool,
    check_choice,
    check_int,
    check_nonnegative,
    check_open_unit,
    check_unit,
)

ReduceSum = Callable[[Tensor], Tensor]


@dataclass
class ObjectiveContext:
    """What an entry point tells an objective about the current step.

    Attributes:
        step: the optimizer step (``trainer.global_step``).
        reduce_sum: all-reduce (sum) across ranks; None in one process. Every rank calls it the same
            number of times per step (the objectives' counts), so it never hangs.
        world_size: number of ranks whose gradients DDP averages (1: none).
        hidden_path: compute token probabilities from the decoder's hidden states and the LM head in
            chunks (never building [tokens, vocab] logits); False: the model's own logits.
    """

    step: int = 0
    reduce_sum: ReduceSum | None = None
    world_size: int = 1
    hidden_path: bool = True

    def global_count(self, count: Tensor) -> Tensor:
        """``count`` summed over ranks (float64); the local count in one process."""
        count = count.detach().to(torch.float64)
        return self.reduce_sum(count) if self.reduce_sum is not None and self.world_size > 1 else count

    def normalise(self, total: Tensor, count: Tensor) -> Tensor:
        """``total`` divided so that DDP's gradient average equals the global mean over ``count``.

        Each rank returns ``sum_rank / (N_global / world_size)``; averaging over ranks gives
        ``sum_all / N_global``, exactly what one process on the global batch computes. Calls the
        collective on every rank, whatever its own count.
        """
        n_global = float(self.global_count(count))
        return total * (self.world_size / max(n_global, 1.0))


@dataclass
class ObjectiveOutput:
    """One objective call.

    Attributes:
        loss: scalar with grad, before ``weight`` (normalised as :meth:`ObjectiveContext.normalise`).
            A rank with nothing to penalise returns an exact 0 that still reaches every trainable
            parameter, so DDP's gradient hooks fire on every rank.
        stats: ``{key: (sum, count)}`` detached float64 numerators and denominators; ``"loss"`` is the
            summed per-token loss over the penalised tokens. Reduced across ranks separately, then divided.
    """

    loss: Tensor
    stats: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


def checked(check: Callable[..., Any], *args: Any, **kwargs: Any) -> _Checked:
    """An objective parameter validated on every assignment, as regularizers' are (``losses.regularizers._Checked``).

    ``check`` is an ``entropy_reg.validation.check_*`` called as ``check(owner, name, value, *args, **kwargs)``:
    ``o.weight = -1`` after construction raises the constructor's ``ValueError``. The value lives in
    ``_<name>``.
    """
    return _Checked(lambda owner, value, name: check(owner, name, value, *args, **kwargs))


def zero_loss(model: torch.nn.Module) -> Tensor:
    """An exact 0 that reaches every trainable parameter of ``model`` (zero gradients)."""
    return skip_step_loss(model)


def stat(total: Tensor | float, count: Tensor | float) -> tuple[Tensor, Tensor]:
    """A ``(sum, count)`` pair of detached float64 scalars."""
    as64 = lambda v: (v.detach() if isinstance(v, Tensor) else torch.tensor(v)).to(torch.float64).reshape(())  # noqa: E731
    return as64(total), as64(count)


def responses(batch: dict[str, Tensor], ignore_index: int) -> list[tuple[Tensor, int]]:
    """Per example: its tokens without padding and where its response starts (the first position whose
    label is not ``ignore_index``; ``len(ids)`` without one; 0 when the batch has no labels)."""
    input_ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
    out = []
    for b in range(input_ids.shape[0]):
        keep = mask[b].bool() if mask is not None else torch.ones_like(input_ids[b], dtype=torch.bool)
        ids = input_ids[b][keep]
        start = 0
        if labels is not None:
            answer = (labels[b][keep] != ignore_index).nonzero().flatten()
            start = int(answer[0]) if answer.numel() else len(ids)
        out.append((ids, start))
    return out


def example_seed(step_seed: int, tokens: Tensor) -> int:
    """A per-example seed from the step's seed and the example's own tokens.

    Keyed on content, not on the position in the local batch, so that an example gets the same random
    choice whichever rank holds it: 2 processes on halves of a batch equal 1 process on all of it.
    """
    data = tokens.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    return (zlib.crc32(data) ^ step_seed) & 0x7FFFFFFF


class Objective:
    """Base class: a weighted loss on a batch the objective builds itself.

    Subclasses set ``name`` (metric key), ``stat_keys`` (every statistic key they report, ``"loss"``
    included, so the cross-rank reduction has a fixed layout), keep every constructor argument as an
    attribute of the same name (checkpoints rebuild them from that), and implement :meth:`compute`.

    Args:
        weight: multiplier of the loss (>= 0); 0 never runs the objective.
        rate: share of optimizer steps that run it, in [0, 1].
        seed: seed of the ``rate`` draws and of the objective's own random choices.
    """

    name: str = "objective"
    stat_keys: tuple[str, ...] = ("loss",)
    needs_generation: bool = False
    # Validated on every assignment (``o.rate = 5`` raises like the constructor); subclasses declare theirs.
    weight = checked(check_nonnegative)
    rate = checked(check_unit)
    seed = checked(check_int, 0)

    def __init__(self, weight: float = 1.0, rate: float = 1.0, seed: int = 0) -> None:
        self.weight = weight
        self.rate = rate
        self.seed = seed

    def setup(self, tokenizer: Any | None) -> None:
        """Read what the objective needs from the tokenizer, once, before training."""

    def observe(self, model: torch.nn.Module, step: int) -> None:
        """Called at every training step before ``runs_at`` decides, whatever it decides (e.g. to keep a
        copy of the model as it was before the first step). No-op by default."""

    def step_seed(self, step: int) -> int:
        """Seed of everything random at optimizer ``step``: a function of (seed, name, step) only."""
        salt = zlib.crc32(self.name.encode())
        return (self.seed * 0x9E3779B1 + step * 0x85EBCA77 + salt) % (2**62)

    def runs_at(self, step: int) -> bool:
        """Whether optimizer ``step`` runs this objective (same answer on every rank and after resume)."""
        if self.rate <= 0.0 or self.weight <= 0.0:
            return False
        if self.rate >= 1.0:
            return True
        generator = torch.Generator().manual_seed(self.step_seed(step))
        return bool(torch.rand((), generator=generator).item() < self.rate)

    def compute(self, model: torch.nn.Module, batch: dict[str, Tensor], context: ObjectiveContext) -> ObjectiveOutput:
        """The unweighted loss and statistics on a batch built from ``batch``.

        Args:
            model: the Hugging Face causal LM being trained (possibly peft-wrapped).
            batch: ``{input_ids [B,T], attention_mask [B,T] (optional), labels [B,T] (optional)}``.
            context: step, rank reduction, path choice.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self" and hasattr(self, n)]
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in names)
        return f"{type(self).__name__}({args})"
