"""EntropyRegularizedTrainerLoss: an ``EntropyRegularizedLoss`` as a ``Trainer(compute_loss_func=...)``.

How ``transformers.Trainer`` (5.x) calls it, read from ``Trainer.compute_loss``: it pops ``labels`` from the
batch, calls ``model(**inputs)`` (so the model computes no loss of its own), then
``compute_loss_func(outputs, labels, num_items_in_batch=...)``. ``labels`` are the batch's labels as they
are, unshifted (Hugging Face convention; the loss shifts inside); ``num_items_in_batch`` is the number of
predicted tokens (``labels[..., 1:] != -100``) of the whole accumulated batch, summed over ranks when
``average_tokens_across_devices`` (then the Trainer multiplies the returned loss by the number of
processes, so that DDP's gradient averaging yields a global token mean). TRL's ``SFTTrainer`` calls it the
same way (``compute_loss_func(model(**inputs_without_labels), labels, num_items_in_batch=...)``).

Two things the call does not give us, and how they are obtained:

- ``input_ids`` (the copy set of copy mass / anti-copy needs the tokens already in context, prompt
  included): a forward pre-hook on the model records the ``input_ids`` and ``attention_mask`` of each
  call; ``compute_loss_func`` always runs right after the forward that produced its ``outputs``, so the
  latest record belongs to them (shapes are checked).
- a place to report the statistics: every call adds its detached float64 sums and row count to a
  window (train or eval, by the model's mode at the forward); ``entropy_reg.hf.attach`` installs a
  ``TrainerCallback`` that reduces the window across ranks and adds the means to the Trainer's logs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from entropy_reg.losses import EntropyRegularizedLoss
from entropy_reg.models.forward import num_items, output_logits
from entropy_reg.objectives import Objective, ObjectiveRunner
from entropy_reg.training.schedule import CoefficientSchedule
from entropy_reg.training.stats_window import StatsWindow

# `Trainer(compute_loss_func=...)` and `num_items_in_batch` arrived in transformers 4.46 (PR #34198).
MIN_TRANSFORMERS = "4.46"


def require_compute_loss_func() -> None:
    """Raise ``ImportError`` when the installed transformers has no ``Trainer(compute_loss_func=...)``."""
    import transformers

    if "compute_loss_func" not in inspect.signature(transformers.Trainer.__init__).parameters:
        raise ImportError(
            f"entropy_reg.hf needs transformers>={MIN_TRANSFORMERS} (Trainer(compute_loss_func=...) and "
            f"num_items_in_batch); installed: {transformers.__version__}. Upgrade: "
            f"pip install 'transformers>={MIN_TRANSFORMERS}'"
        )


@dataclass
class _Captured:
    """Inputs of the model's latest forward call."""

    input_ids: Tensor
    attention_mask: Tensor | None
    training: bool


class EntropyRegularizedTrainerLoss:
    """Cross-entropy + entropy-aware regularizers for ``transformers.Trainer`` / TRL's ``SFTTrainer``.

    Pass it as ``compute_loss_func`` and call :func:`entropy_reg.hf.attach` on the trainer (it installs
    the ``input_ids`` hook and the logging callback)::

        loss_fn = EntropyRegularizedTrainerLoss(EntropyRegularizedLoss([TailMassFloor(5, 0.15, 1.0)]))
        trainer = Trainer(model=model, args=args, train_dataset=ds, compute_loss_func=loss_fn)
        attach(trainer)
        trainer.train()

    The returned loss is ``(CE + scale * sum_i w_i R_i)`` summed over predicted tokens and divided by
    ``num_items_in_batch`` (the Trainer's token count of the accumulated batch), so gradient
    accumulation gives the gradient of one big batch. Without ``num_items_in_batch`` the local token
    count divides.

    Contract (checked, with an error that says which part failed): the model is called with
    ``input_ids`` (not ``inputs_embeds``); its output has ``logits`` (no fused-loss option that skips
    them); batches are not padding-free packed (``position_ids`` restarting inside a row without an
    ``attention_mask``: the copy set would leak across packed documents).

    Args:
        loss: the CE + regularizers module (its ``include_ce`` must be True: the Trainer's model computes
            no loss when ``compute_loss_func`` is set).
        schedule: sets ``loss.scale`` from ``state.global_step`` at every step begin (applied by the
            callback that ``attach`` installs); None leaves ``loss.scale`` as it is.
        objectives: sequence-level objectives (:mod:`entropy_reg.objectives`), run on training
            micro-batches only: each builds its own batch from the captured ``input_ids`` /
            ``attention_mask`` and ``labels`` and runs it through the hooked model; ``loss.scale *
            weight * loss`` is added, weighted by the micro-batch's share of ``num_items_in_batch``
            (so gradient accumulation and the Trainer's token averaging across devices give the
            token-weighted mean of the micro-batches' objective losses). ``rate`` is drawn per
            optimizer step (``state.global_step``, set by ``attach``'s callback). Logged as
            ``<name>`` and ``<name>/<stat>`` in the training logs (W&B: ``train/<name>``).

    Attributes:
        train_stats, eval_stats: windows of summed statistics since the last log (flushed by ``attach``'s
            callback; read them yourself with ``.reduce()`` when you use the loss without it).
    """

    def __init__(
        self,
        loss: EntropyRegularizedLoss,
        schedule: CoefficientSchedule | None = None,
        objectives: list[Objective] | None = None,
    ) -> None:
        require_compute_loss_func()
        if not isinstance(loss, EntropyRegularizedLoss):
            raise TypeError(
                f"EntropyRegularizedTrainerLoss: loss must be an EntropyRegularizedLoss, got {type(loss).__name__}"
            )
        if not loss.include_ce:
            raise ValueError(
                "EntropyRegularizedTrainerLoss: loss.include_ce is False, but with compute_loss_func the model "
                "computes no loss of its own; build the loss with include_ce=True"
            )
        if schedule is not None and not isinstance(schedule, CoefficientSchedule):
            raise TypeError(
                "EntropyRegularizedTrainerLoss: schedule must be a CoefficientSchedule or None, "
                f"got {type(schedule).__name__}"
            )
        self.loss = loss
        self.schedule = schedule
        self.train_stats = StatsWindow(prefix="", prog_bar=())
        self.eval_stats = StatsWindow(prefix="", prog_bar=())
        self.objectives = ObjectiveRunner(objectives, "EntropyRegularizedTrainerLoss", prefix="")
        self.step = 0  # the optimizer step, kept by attach()'s callback (rate draws)
        self._captured: _Captured | None = None
        self._hook: Any = None
        self._hooked_model: torch.nn.Module | None = None

    # -- the input_ids hook -----------------------------------------------------------------------
    def hook_model(self, model: torch.nn.Module) -> None:
        """Record ``input_ids``/``attention_mask`` of every forward of ``model`` (replaces an older hook)."""
        self.unhook_model()
        self._hook = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        self._hooked_model = model

    def unhook_model(self) -> None:
        """Remove the hook installed by :meth:`hook_model` (no-op when there is none)."""
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._hooked_model, self._captured = None, None, None

    @property
    def hooked_model(self) -> torch.nn.Module | None:
        return self._hooked_model

    def _pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            # Generation with inputs_embeds or a custom call: nothing to record; the loss call checks.
            self._captured = None
            return
        attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if attention_mask is None:
            self._reject_padding_free(kwargs)
        self._captured = _Captured(input_ids, attention_mask, bool(module.training))

    @staticmethod
    def _reject_padding_free(kwargs: dict) -> None:
        packed = any(k in kwargs for k in ("cu_seq_lens_q", "cu_seqlens_q"))
        position_ids = kwargs.get("position_ids")
        if not packed and isinstance(position_ids, Tensor) and position_ids.dim() == 2 and position_ids.shape[1] > 1:
            packed = bool((position_ids[:, 1:] <= position_ids[:, :-1]).any())
        if packed:
            raise NotImplementedError(
                "EntropyRegularizedTrainerLoss: padding-free packed batches (position_ids restart inside a row, "
                "no attention_mask) are not supported: the copy set would take tokens of the other packed "
                "documents. Use padded batches (TRL: padding_free=False, packing=False)."
            )

    # -- the loss ---------------------------------------------------------------------------------
    def __call__(
        self, outputs: Any, labels: Tensor | None, num_items_in_batch: Tensor | int | float | None = None
    ) -> Tensor:
        """Loss of one micro-batch, normalised by ``num_items_in_batch``; records its statistics.

        Args:
            outputs: the model's output (``ModelOutput``/dict with ``logits``, or a tuple with logits first).
            labels: ``[B, T]`` unshifted labels (``loss.ignore_index`` = no target), as the Trainer passes them.
            num_items_in_batch: predicted tokens of the whole accumulated batch (all ranks when the Trainer
                averages tokens across devices); None: the local count.

        Returns:
            Scalar loss with grad (float32; float64 for float64 logits).
        """
        logits = self._logits(outputs)
        if labels is None:
            raise ValueError(
                "EntropyRegularizedTrainerLoss got labels=None: the batch needs a 'labels' column "
                "(Hugging Face convention: same shape as input_ids, -100 where there is no target)"
            )
        captured = self._captured
        if captured is None:
            raise RuntimeError(
                "EntropyRegularizedTrainerLoss saw no input_ids for these logits. Call "
                "entropy_reg.hf.attach(trainer) after building the Trainer (it hooks the model to record "
                "input_ids), and call the model with input_ids, not inputs_embeds."
            )
        if captured.input_ids.shape != labels.shape or logits.shape[:2] != labels.shape:
            raise RuntimeError(
                "EntropyRegularizedTrainerLoss: shapes disagree: input_ids of the latest forward "
                f"{tuple(captured.input_ids.shape)}, logits {tuple(logits.shape)}, labels {tuple(labels.shape)}. "
                "Was the hooked model not the one that produced these outputs (re-run attach(trainer) after "
                "replacing trainer.model), or did the model return logits for a subset of positions?"
            )
        self._captured = None  # do not keep the batch alive until the next step
        out = self.loss(
            logits=logits,
            labels=labels,
            input_ids=captured.input_ids,
            attention_mask=captured.attention_mask,
            num_tokens=self._num_tokens(num_items_in_batch),
        )
        (self.train_stats if captured.training else self.eval_stats).update(out.sums, out.count)
        if captured.training and self.objectives:
            batch = {"input_ids": captured.input_ids, "attention_mask": captured.attention_mask, "labels": labels}
            extra = self.objectives(self._hooked_model, batch, step=self.step, scale=self.loss.scale)
            if extra is not None:
                share = 1.0
                if num_items_in_batch is not None and self._num_tokens(num_items_in_batch) is not None:
                    local = (labels[..., 1:] != self.loss.ignore_index).sum().item()
                    share = local / self._num_tokens(num_items_in_batch)
                return out.loss + extra.to(out.loss.dtype) * share
        return out.loss

    @staticmethod
    def _logits(outputs: Any) -> Tensor:
        logits = output_logits(outputs, had_labels=False)  # return_dict=False without labels: (logits, ...)
        if not isinstance(logits, Tensor) or logits.dim() != 3:
            raise RuntimeError(
                "EntropyRegularizedTrainerLoss: the model output has no [B, T, V] logits (got "
                f"{type(outputs).__name__}). A fused-loss option that skips the logits (e.g. Liger fused linear "
                "cross-entropy) cannot be combined with compute_loss_func."
            )
        return logits

    # nn.DataParallel (several GPUs, one process) repeats the count once per GPU; 0 (an accumulated batch
    # without any target) divides nothing: the local count is used.
    _num_tokens = staticmethod(num_items)

    def __repr__(self) -> str:
        return (
            f"EntropyRegularizedTrainerLoss({self.loss!r}, schedule={self.schedule!r}, "
            f"objectives={self.objectives.objectives!r})"
        )
