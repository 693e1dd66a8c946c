"""FinalCheckpoint: ``last.ckpt`` always holds the step a run ended at, and Ctrl-C keeps the work.

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

Interrupts (SIGINT, Ctrl-C): Lightning's own handling stops mid-step, saves nothing, flushes nothing and
exits 1. While training runs (main thread only), this callback takes SIGINT instead: the step under way
finishes (its optimizer update included, so the weights, optimizer state and step counter agree), the
training stops there as if ``max_steps`` had been reached (it is set to that step; ``on_train_end`` runs:
the modules flush their open statistics window to the logger), and a checkpoint is written at that
step: ``last.ckpt`` through the ``save_last`` checkpoint callback, else ``interrupted-step=<N>.ckpt`` in the first checkpoint
callback's directory (or ``<default_root_dir>/checkpoints``). :attr:`interrupted` then holds
``(step, path)``; ``entropy-reg fit`` prints the command that resumes from it and exits 130. A second
Ctrl-C while that step finishes aborts at once (Lightning's handling; nothing new is saved) and
:attr:`aborted` is set. Under several ranks the request is agreed at every step (one all-reduce of a
flag), so all ranks stop at the same step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class FinalCheckpoint(Callback):
    """Refresh every ``save_last`` checkpoint at the end of training; stop and save cleanly on Ctrl-C."""

    def __init__(self) -> None:
        self.interrupted: tuple[int, str] | None = None  # (step, checkpoint) after a Ctrl-C stop
        self.aborted: int | None = None  # the step reached when a second Ctrl-C aborted the run
        self._requested = False
        self._stopping = False
        self._previous_handler: Any = None

    # ---- SIGINT ---------------------------------------------------------------------------------
    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._requested = True
        # The next Ctrl-C is Lightning's (KeyboardInterrupt: abort now, save nothing).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nentropy-reg: Ctrl-C: finishing the current step, then saving a checkpoint and stopping "
              "(Ctrl-C again aborts without saving)", file=sys.stderr, flush=True)

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread() and self._previous_handler is None:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
        self._previous_handler = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.interrupted, self.aborted, self._requested, self._stopping = None, None, False, False
        self._install()

    def _stop_requested(self, trainer: Trainer) -> bool:
        if trainer.world_size > 1:  # every rank must stop at the same step
            return bool(trainer.strategy.reduce_boolean_decision(self._requested, all=False))
        return self._requested

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        accumulating = getattr(loop, "_should_accumulate", lambda: False)()
        if not accumulating and self._stop_requested(trainer):
            self._stop_here(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._stop_requested(trainer):
            self._stop_here(trainer)

    def _stop_here(self, trainer: Trainer) -> None:
        """End training after this step as ``max_steps`` does (``should_stop`` would run a validation first)."""
        self._stopping = True
        trainer.fit_loop.epoch_loop.max_steps = trainer.global_step

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, KeyboardInterrupt):
            self.aborted = trainer.global_step

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    # ---- the end of training ------------------------------------------------------------------------
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:
            if trainer.fast_dev_run or trainer.sanity_checking:
                return
            saved: str | None = None
            for callback in trainer.checkpoint_callbacks:
                if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
                    continue
                if callback._last_global_step_saved != trainer.global_step:
                    # ModelCheckpoint's own path for last.ckpt (name template, version counter, dirpath).
                    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
                saved = saved or callback.last_model_path or None
            if self._stopping:
                if saved is None:
                    saved = self._save_interrupted(trainer)
                self.interrupted = (trainer.global_step, saved)
        finally:
            self._restore()

    def _save_interrupted(self, trainer: Trainer) -> str:
        """A checkpoint of the step reached when no ``save_last`` callback writes one."""
        dirpath = next((c.dirpath for c in trainer.checkpoint_callbacks
                        if isinstance(c, ModelCheckpoint) and c.dirpath), None)
        dirpath = dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
        path = os.path.join(str(dirpath), f"interrupted-step={trainer.global_step}.ckpt")
        trainer.save_checkpoint(path)
        return path
