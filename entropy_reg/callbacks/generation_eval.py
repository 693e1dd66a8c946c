"""GenerationEval: generate on fixed prompts during training and log collapse metrics.

Contract (like Lightning's ``BackboneFinetuning`` "your model must have a backbone attribute"):

- the LightningModule must hold a Hugging Face causal LM (found by
  :func:`entropy_reg.models.find.find_causal_lm`; name it with ``model_attr`` when there are several), and a
  tokenizer must be reachable as ``pl_module.tokenizer`` or ``trainer.datamodule.tokenizer``;
- under multi-process training only rank 0 generates and the other ranks wait at
  ``trainer.strategy.barrier()``; this needs the whole model on rank 0, so sharded strategies (FSDP,
  DeepSpeed) are rejected at setup;
- the callback never touches the loss: it runs under ``no_grad`` in eval mode, restores the training mode,
  and forks the RNG (sampling does not shift the training random stream).

What it logs (``step = trainer.global_step``), per decoding ``d``: ``eval/<d>/entropy_mean``,
``entropy_p10``, ``seq_rep_4``, ``rep_2`` (pooled), ``distinct_2``, ``uniq_seq``, ``eos_rate``, the shares of
the four collapse classes ``degenerate_frac``, ``repetitive_frac``, ``divergent_frac``, ``healthy_frac``
(:func:`entropy_reg.metrics.collapse_class`), ``low_entropy_run`` (longest run of raw-logit entropy below ``low_entropy_threshold``),
to every logger; with probe sentences also ``eval/probe/tp_1``, ``tp_<N>``, ``ip_<N>``, ``wr_<N>``. With a
``WandbLogger`` additionally: a ``wandb.Table`` of completions (``eval/completions``), a
``wandb.Histogram`` of token entropies per decoding (``eval/<d>/entropy_hist``) and the probe curve as a
table + line plot (``eval/probe/curve``). Other loggers get scalars only.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from entropy_reg.generation.evaluation import DEFAULT_PROMPTS, GenerationEvaluator
from entropy_reg.models.find import find_causal_lm, find_tokenizer

__all__ = ["DEFAULT_PROMPTS", "GenerationEval"]


class GenerationEval(GenerationEvaluator, Callback):
    """Generate from fixed prompts every N steps and/or at validation end; log repetition/entropy metrics.

    The arguments are :class:`~entropy_reg.generation.GenerationEvaluator`'s (which measures); this
    callback decides when to run it (``every_n_steps``, ``on_validation_end``) and logs the results.
    """

    # ---- hooks -------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = type(trainer.strategy).__name__
        if trainer.world_size > 1 and ("FSDP" in strategy or "DeepSpeed" in strategy):
            raise ValueError(
                f"GenerationEval generates on rank 0 only and needs the full model there; {strategy} shards "
                "it. Use DDP, or run generation evaluation after training."
            )
        self._model_name, _ = find_causal_lm(pl_module, self.model_attr)  # raises a clear ValueError
        tokenizer = find_tokenizer(pl_module, trainer)
        if tokenizer is None:
            raise ValueError(
                "GenerationEval found no tokenizer: set `self.tokenizer` on your LightningModule or on the "
                "datamodule."
            )
        if self.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("GenerationEval(use_chat_template=True) but the tokenizer has no chat_template")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # global_step only advances on optimizer steps: with gradient accumulation several batches share
        # one step, hence the last-step guard; step 0 is "before training".
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._run(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.run_on_validation_end and not trainer.sanity_checking and trainer.global_step != self._last_step:
            self._run(trainer, pl_module)

    # ---- work --------------------------------------------------------------------------------------
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        try:
            if trainer.is_global_zero:
                self.evaluate(trainer, pl_module)
        finally:
            # Every rank reaches this barrier for the same step (the trigger depends only on global_step
            # and the loop state), so it cannot hang; ranks > 0 do no generation work. It sits in
            # `finally` so that an error on rank 0 releases the waiting ranks instead of deadlocking them.
            trainer.strategy.barrier("GenerationEval")

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Generate, compute metrics and log them; returns the scalar metrics (rank 0)."""
        _, model = find_causal_lm(pl_module, self._model_name or self.model_attr)
        tokenizer = find_tokenizer(pl_module, trainer)
        if tokenizer is None:
            raise ValueError("GenerationEval found no tokenizer on the module or datamodule")
        step = trainer.global_step
        scalars, results, probe = self.measure(model, tokenizer)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # One call, so scalars, table, histograms and probe share a single W&B history row.
                logger.log_metrics({**scalars, **self.wandb_extras(results, probe, step)}, step=step)
            else:
                logger.log_metrics(scalars, step=step)
        return scalars
