"""ProgressLog: one plain line of training progress every few steps, readable in any log file.

Lightning's progress bars redraw one terminal line with carriage returns; piped into a log file (a
script that runs ``entropy-reg fit`` in a subprocess, a CI job, ``nohup``) that is either silence or
thousands of half-lines. This callback prints complete lines instead::

    [smollm2-baseline] step 12/40 | loss 2.314 | 4.1 s/step | elapsed 49 s | ~1m55s left

Contract: it only reads ``trainer.global_step``, ``trainer.max_steps`` (or
``trainer.estimated_stepping_batches``) and the loss that ``training_step`` returned; it changes nothing
and works with any LightningModule. Only rank 0 prints.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only


def format_duration(seconds: float) -> str:
    """``"49 s"``, ``"1m55s"``, ``"1h02m"``: short enough for a progress line."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressLog(Callback):
    """Print ``step k/N | loss | s/step | elapsed | time left`` every ``every_n_steps`` optimizer steps.

    The time left is the mean time per optimizer step so far times the steps remaining (the first step,
    which pays for start-up work, is left out of the mean once later ones exist).

    Args:
        every_n_steps: print every N optimizer steps (and always after the first and the last).
        name: prefix of each line (default: the logger's name, else nothing).
        stream: where to print (default ``sys.stdout``, flushed on every line).
    """

    def __init__(self, every_n_steps: int = 5, name: str | None = None, stream: TextIO | None = None) -> None:
        if isinstance(every_n_steps, bool) or int(every_n_steps) != every_n_steps or every_n_steps < 1:
            raise ValueError(f"ProgressLog: every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.every_n_steps = int(every_n_steps)
        self.name = name
        self.stream = stream
        self._start: float | None = None
        self._first_step_end: float | None = None
        self._last_printed_step = -1
        self._loss_sum = 0.0
        self._loss_count = 0

    def _total_steps(self, trainer: Trainer) -> int | None:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        try:
            total = float(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - an unsized dataloader: no total, no time left
            return None
        return int(total) if total != float("inf") else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        self._first_step_end = None
        self._start_step = trainer.global_step  # a resumed run counts its time from here
        if self.name is None:
            logger_name = getattr(trainer.logger, "name", None) if trainer.logger is not None else None
            self.name = logger_name if isinstance(logger_name, str) else ""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            self._loss_sum += value
            self._loss_count += 1
        step = trainer.global_step
        if step == self._last_printed_step or self._start is None:
            return  # mid-accumulation, or this step was already printed
        done = step - self._start_step
        if done == 1 and self._first_step_end is None:
            self._first_step_end = time.perf_counter()
        total = self._total_steps(trainer)
        if done < 1 or not (step % self.every_n_steps == 0 or done == 1 or step == total):
            return
        self._print(trainer, step, total)

    @rank_zero_only
    def _print(self, trainer: Trainer, step: int, total: int | None) -> None:
        now = time.perf_counter()
        elapsed = now - self._start
        done = step - self._start_step
        if self._first_step_end is not None and done > 1:
            per_step = (now - self._first_step_end) / (done - 1)
        else:
            per_step = elapsed / max(done, 1)
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        if self._loss_count:
            parts.append(f"loss {self._loss_sum / self._loss_count:.4g}")
        parts.append(f"{per_step:.1f} s/step")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if total:
            parts.append(f"~{format_duration(per_step * max(0, total - step))} left")
        prefix = f"[{self.name}] " if self.name else ""
        stream = self.stream or sys.stdout
        print(prefix + " | ".join(parts), file=stream, flush=True)
        self._last_printed_step = step
        self._loss_sum, self._loss_count = 0.0, 0
