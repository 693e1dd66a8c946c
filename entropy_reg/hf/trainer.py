"""attach(trainer): connect EntropyRegularizedTrainerLoss and EntropyEvalCallback to a built Trainer.

Why a function and not a Trainer subclass/mixin: it works unchanged for ``transformers.Trainer``, TRL's
``SFTTrainer`` and any other subclass (no class to define per trainer type, no MRO order to get right),
and what it changes is small and reversible (one forward pre-hook, one callback; ``detach()`` undoes both).

Why the metrics callback goes *first* in the callback list: ``Trainer.log(logs)`` appends
``{**logs, "step"}`` to ``state.log_history`` and then calls every callback's ``on_log`` with the same
``logs`` dict in list order; the reporting integrations (W&B, TensorBoard, ...) are registered before
user callbacks. Placed first, the statistics are in ``logs`` before any integration reads them, and the
entry just appended to ``log_history`` is completed too. It also runs after a subclass's own
``log`` override has merged its metrics (TRL's ``SFTTrainer.log`` adds its ``entropy``), so for keys both
report the token-weighted value computed here wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from entropy_reg.hf.callback import EntropyEvalCallback
from entropy_reg.hf.trainer_loss import EntropyRegularizedTrainerLoss, require_compute_loss_func


class _DistSum:
    """``StatsWindow.reduce`` strategy: one all-reduce (sum) when torch.distributed runs, else identity."""

    @staticmethod
    def reduce(tensor: torch.Tensor, reduce_op: str = "sum") -> torch.Tensor:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def _eval_prefix(logs: dict[str, Any]) -> str | None:
    """``"eval"`` (or the ``metric_key_prefix``) when ``logs`` is what ``Trainer.evaluate`` logs."""
    for key in logs:
        if key.endswith("_runtime"):
            prefix = key[: -len("_runtime")]
            if prefix != "train" and f"{prefix}_loss" in logs:
                return prefix
    return None


class _LossMetricsCallback(TrainerCallback):
    """Flushes an ``EntropyRegularizedTrainerLoss``'s statistics into the Trainer's logs; applies its schedule.

    Logged keys follow the Trainer's convention (bare names in training logs, ``eval_`` prefix in
    evaluation logs), which the W&B and TensorBoard integrations turn into ``train/<key>`` and
    ``eval/<key>``: the same names as the Lightning path. Training: ``ce``, ``entropy``, ``tail_mass``,
    ``copy_mass``, ``<term>`` per regularizer (unweighted penalty), ``reg_loss`` (weighted regularizer
    part), ``reg_scale``; the Trainer's own ``loss`` is left as it is. Evaluation: ``eval_ce``,
    ``eval_entropy``, ``eval_tail_mass``, ``eval_copy_mass``, ``eval_<term>``.
    """

    def __init__(self, loss_fn: EntropyRegularizedTrainerLoss) -> None:
        self.loss_fn = loss_fn

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # `model_init` builds a new model at train(): move the hook to the model that will train.
        if model is not None and model is not self.loss_fn.hooked_model:
            self.loss_fn.hook_model(model)
        self.loss_fn.train_stats.reset()

    def on_step_begin(self, args, state, control, **kwargs):
        self.loss_fn.step = state.global_step  # objectives draw `rate` per optimizer step
        if self.loss_fn.schedule is not None:
            self.loss_fn.loss.scale = self.loss_fn.schedule(state.global_step)

    def on_predict(self, args, state, control, **kwargs):
        # Trainer.predict runs the loss but logs nothing: drop its statistics, or they would be merged
        # into the next evaluation's.
        self.loss_fn.eval_stats.reset()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        # Every rank logs the same keys at the same time (Trainer.log runs on all processes), so the
        # decision to join the collective in reduce() is the same everywhere.
        # "train_runtime": the summary Trainer.train() logs at its end; it carries the window still open
        # then (a run shorter than logging_steps would otherwise log no entropy at all).
        if ("loss" in logs or "train_runtime" in logs) and _eval_prefix(logs) is None:
            means = self.loss_fn.train_stats.reduce(_DistSum())
            if not means:
                return
            metrics = {k: float(v) for k, v in means.items() if k != "loss"}
            metrics["reg_loss"] = float(means["loss"]) - metrics["ce"]
            metrics["reg_scale"] = float(self.loss_fn.loss.scale)
            if self.loss_fn.objectives:  # sequence-level objectives: <name>, <name>/<stat>
                metrics.update({k: float(v) for k, v in self.loss_fn.objectives.stats.reduce(_DistSum()).items()})
        elif (prefix := _eval_prefix(logs)) is not None:
            means = self.loss_fn.eval_stats.reduce(_DistSum())
            metrics = {f"{prefix}_{k}": float(v) for k, v in means.items() if k != "loss"}
        else:
            return
        last = state.log_history[-1] if state.log_history else None
        # Trainer.log appended {**logs, "step"} just before calling on_log: complete that entry too.
        if last is not None and set(last) == set(logs) | {"step"}:
            last.update(metrics)
        logs.update(metrics)


@dataclass
class Attachment:
    """What :func:`attach` changed; :meth:`detach` undoes it."""

    trainer: Any
    loss_fn: EntropyRegularizedTrainerLoss | None = None
    metrics_callback: _LossMetricsCallback | None = None
    eval_callbacks: list[EntropyEvalCallback] = field(default_factory=list)

    def detach(self) -> None:
        if self.loss_fn is not None:
            self.loss_fn.unhook_model()
        if self.metrics_callback is not None and self.trainer is not None:
            callbacks = self.trainer.callback_handler.callbacks
            if self.metrics_callback in callbacks:
                callbacks.remove(self.metrics_callback)
        for cb in self.eval_callbacks:
            cb.bind(None)


def trainer_tokenizer(trainer: Any) -> Any | None:
    """The trainer's tokenizer: ``processing_class`` (transformers >= 4.46; a processor's ``.tokenizer``), else
    the older ``tokenizer`` attribute; None when it has neither."""
    for attr in ("processing_class", "tokenizer"):
        found = getattr(trainer, attr, None)
        if found is not None:
            return getattr(found, "tokenizer", None) or found  # a multimodal processor wraps its tokenizer
    return None


def _setup_objectives(loss_fn: EntropyRegularizedTrainerLoss, trainer: Any) -> None:
    """Let every objective read the trainer's tokenizer (sentence ends, EOS), as the Lightning entry points do."""
    tokenizer = trainer_tokenizer(trainer)
    for objective in loss_fn.objectives.objectives:
        try:
            objective.setup(tokenizer)
        except ValueError as err:
            if tokenizer is not None:
                raise
            raise ValueError(
                f"attach(): objective {objective.name!r} ({type(objective).__name__}) needs a tokenizer and this "
                f"{type(trainer).__name__} has none: build it with processing_class=tokenizer (or give "
                f"{type(objective).__name__} sentence_end_ids=[...])"
            ) from err


def attach(trainer: Any) -> Attachment:
    """Connect the entropy-regularization parts of a built ``transformers.Trainer`` (or TRL trainer).

    - When ``trainer.compute_loss_func`` is an :class:`EntropyRegularizedTrainerLoss`: sets its objectives
      up with the trainer's tokenizer (``processing_class``, or ``tokenizer`` on older trainers), hooks
      ``trainer.model`` so the loss sees the batch's ``input_ids``, and inserts the callback that logs its
      statistics (and applies its coefficient schedule) first in the callback list.
    - Binds every :class:`EntropyEvalCallback` among ``trainer``'s callbacks to it (they log through
      ``Trainer.log``).

    Calling it again replaces the earlier attachment.

    Args:
        trainer: a ``transformers.Trainer`` (any subclass, e.g. ``trl.SFTTrainer``).

    Returns:
        An :class:`Attachment`; ``.detach()`` removes the hook and the callback.

    Raises:
        ImportError: transformers older than 4.46 (no ``compute_loss_func``).
        TypeError: ``trainer`` is not a Trainer.
        ValueError: there is nothing to attach (no ``EntropyRegularizedTrainerLoss`` as
            ``compute_loss_func`` and no ``EntropyEvalCallback``), or an objective needs a tokenizer
            (``RepetitionConsistency`` finds sentence ends with it) and the trainer has none.
    """
    require_compute_loss_func()
    handler = getattr(trainer, "callback_handler", None)
    if handler is None or not hasattr(trainer, "model"):
        raise TypeError(f"attach() needs a transformers.Trainer, got {type(trainer).__name__}")
    for old in [cb for cb in handler.callbacks if isinstance(cb, _LossMetricsCallback)]:
        handler.callbacks.remove(old)
        old.loss_fn.unhook_model()

    attachment = Attachment(trainer)
    loss_fn = getattr(trainer, "compute_loss_func", None)
    if isinstance(loss_fn, EntropyRegularizedTrainerLoss):
        _setup_objectives(loss_fn, trainer)
        loss_fn.hook_model(trainer.model)
        attachment.loss_fn = loss_fn
        attachment.metrics_callback = _LossMetricsCallback(loss_fn)
        handler.callbacks.insert(0, attachment.metrics_callback)
    attachment.eval_callbacks = [cb for cb in handler.callbacks if isinstance(cb, EntropyEvalCallback)]
    for cb in attachment.eval_callbacks:
        cb.bind(trainer)
    if attachment.loss_fn is None and not attachment.eval_callbacks:
        raise ValueError(
            f"attach(): nothing to attach to this {type(trainer).__name__}: pass "
            "compute_loss_func=EntropyRegularizedTrainerLoss(...) and/or callbacks=[EntropyEvalCallback(...)] "
            f"when building it (its compute_loss_func is {type(loss_fn).__name__})"
        )
    return attachment
