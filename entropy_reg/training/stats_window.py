"""Training statistics across ranks: token-weighted means over the steps since the last log.

:class:`StatsWindow` accumulates the detached float64 sums and the row count of ``EntropyRegularizedLoss``
outputs between logging steps, reduces sums and counts across ranks (one collective of one small
tensor), and only then divides: a token-weighted mean, never a mean of per-rank means. The window still
open when training ends is logged too (``log(..., final=True)`` from ``on_train_end``): a run shorter
than the log cadence, e.g. 2 steps at Lightning's default ``log_every_n_steps=50``, still logs its
``train/entropy``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor


class StatsWindow:
    """Token-weighted statistics over the training steps since the last log, reduced across ranks.

    Args:
        prefix: prepended to every key (``"train/"``).
        prog_bar: keys (without prefix) shown in the progress bar.
        log_every_n_steps: optimizer steps per logged value; ``None`` follows
            ``trainer.log_every_n_steps``; 0 disables logging.
    """

    def __init__(
        self,
        prefix: str = "train/",
        prog_bar: Iterable[str] = ("loss", "entropy"),
        log_every_n_steps: int | None = None,
    ) -> None:
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or int(log_every_n_steps) != log_every_n_steps
            or log_every_n_steps < 0
        ):
            raise ValueError(f"log_every_n_steps must be an integer >= 0 or None, got {log_every_n_steps!r}")
        self.prefix = prefix
        self.prog_bar = tuple(prog_bar)
        self.log_every_n_steps = log_every_n_steps
        self.reset()
        self._calls = 0

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._count: Tensor | None = None

    def update(self, sums: Mapping[str, Tensor], count: Tensor) -> None:
        """Add one loss call's float64 sums (over non-ignored rows) and its row count."""
        for key, value in sums.items():
            value = value.detach().to(torch.float64)
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        count = count.detach().to(torch.float64)
        self._count = count if self._count is None else self._count + count

    def step_is_log_step(self, trainer: Any) -> bool:
        """Count one training_step call; True on the last micro-batch of every n-th optimizer step.

        Call exactly once per training_step on every rank: the answer decides who joins the
        collective in :meth:`reduce`, so it must be the same on all ranks (it only depends on counts).
        """
        self._calls += 1
        n = trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps
        if not n:
            return False
        return self._calls % (n * max(1, int(trainer.accumulate_grad_batches))) == 0

    def state_dict(self) -> dict[str, int]:
        """The log cadence (training_step calls so far), for checkpoints.

        A resumed run continues the cadence of the interrupted one instead of restarting it at 0.
        The partial sums of an unfinished window are not saved (under DDP each rank holds its own,
        and a checkpoint has one copy): the first value logged after resuming from a checkpoint
        taken mid-window averages only the steps since the resume. Checkpoint every multiple of
        ``log_every_n_steps`` to avoid that.
        """
        return {"calls": self._calls}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._calls = int(state.get("calls", 0))
        self.reset()

    def reduce(self, strategy: Any = None) -> dict[str, Tensor]:
        """Means over all rows of all ranks since the last reset (``{prefix+key: 0-dim float32}``); resets."""
        if self._count is None:
            return {}
        keys = sorted(self._sums)
        packed = torch.stack([self._sums[k] for k in keys] + [self._count])
        if strategy is not None:
            # One collective for all statistics; sums and count travel separately, division after.
            packed = strategy.reduce(packed, reduce_op="sum")
        total = packed[-1].clamp_min(1.0)
        self.reset()
        return {self.prefix + k: (packed[i] / total).to(torch.float32) for i, k in enumerate(keys)}

    def has_open_window(self) -> bool:
        """True when updates arrived since the last :meth:`reduce` (the same answer on every rank:
        every rank updates at every step that is not skipped, and skips are agreed across ranks)."""
        return self._count is not None

    def log(self, trainer: Any, pl_module: Any, metrics: Mapping[str, Tensor | float], final: bool = False) -> None:
        """Send ``metrics`` to every logger at ``trainer.global_step`` and to the progress bar.

        Loggers get the values directly (not through ``LightningModule.log``), so the cadence is
        exactly this window's; ``LightningModule.log(logger=False)`` puts the values into
        ``trainer.callback_metrics`` (checkpoint monitors) and the progress bar. ``final=True`` (the
        flush from ``on_train_end``, where Lightning forbids ``self.log``): loggers only, then
        ``logger.save()`` so that a logger that buffers (CSV) writes the last row.
        """
        if not metrics:
            return
        scalars = {k: float(v) for k, v in metrics.items()}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
                if final:
                    logger.save()
        if final:
            return
        shown = {self.prefix + k for k in self.prog_bar}
        for key, value in metrics.items():
            value = value if isinstance(value, Tensor) else torch.tensor(float(value))
            pl_module.log(
                key,
                value,
                prog_bar=key in shown,
                logger=False,
                on_step=True,
                on_epoch=False,
                batch_size=1,
                sync_dist=False,
            )
