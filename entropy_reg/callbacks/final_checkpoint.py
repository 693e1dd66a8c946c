"""FinalCheckpoint: ``last.ckpt`` always holds the step a run ended at.

Lightning's ``ModelCheckpoint(save_last=True, every_n_train_steps=N)`` refreshes ``last.ckpt`` only when
it saves anyway (every N steps, or after a validation loop). A run whose ``max_steps`` is not a multiple
of N and that has no validation loop ends with ``last.ckpt`` at the previous multiple: with N = 30 and
``--trainer.max_steps 40``, the last 10 steps are silently thrown away, and ``compare``, ``export`` and
resume use the step-30 model. Lightning's own ``on_train_end`` only saves when no ``last.ckpt`` was
written at all.

Contract: at the end of ``fit`` (and only when fitting ended normally), every ``ModelCheckpoint`` of the
trainer with ``save_last`` set whose last save is not at ``trainer.global_step`` writes ``last.ckpt``
once more, through its own naming and versioning. It changes nothing else and works with any
LightningModule; ``entropy-reg fit`` adds it to every run, so no recipe and no ``--trainer.max_steps``
override can lose steps.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class FinalCheckpoint(Callback):
    """Refresh every ``save_last`` checkpoint at the end of training when its last save is older."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
                continue
            if callback._last_global_step_saved == trainer.global_step:
                continue
            # ModelCheckpoint's own path for last.ckpt (name template, version counter, dirpath).
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
