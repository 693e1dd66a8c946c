"""EntropyEvalCallback: the Lightning ``GenerationEval`` evaluation for ``transformers.Trainer``.

The metric code is the Lightning callback's own: this callback holds a ``GenerationEvaluator`` (what
``GenerationEval`` measures with, built from the same arguments, which validates them) and calls its ``measure`` (generation, metrics, probe) and
``wandb_extras``, so both paths compute identical numbers.

Names: the Trainer's reporting integrations rename keys (``eval_x`` -> ``eval/x``, anything else ->
``train/x``), so the scalars go into the Trainer's logs as ``eval_<decoding>/<metric>`` and arrive in
W&B / TensorBoard as ``eval/<decoding>/<metric>``, the Lightning names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from entropy_reg.generation import DecodingConfig, GenerationEvaluator
from entropy_reg.metrics import DEFAULT_LOW_ENTROPY_THRESHOLD, CollapseThresholds


class EntropyEvalCallback(TrainerCallback):
    """Generate from fixed prompts every N steps and/or after each evaluation; log collapse metrics.

    Runs on the main process only (``state.is_world_process_zero``); the other ranks skip it and wait
    at their next collective (keep generation well under the process-group timeout,
    ``TrainingArguments.ddp_timeout``). Needs the whole model on the main process, so FSDP and DeepSpeed
    multi-process runs are rejected at ``on_train_begin``. Generation runs in eval mode under
    ``no_grad``, restores the training mode and forks the RNG (see ``generate_with_entropy``).

    Logged through ``Trainer.log`` (so to ``log_history`` and every ``report_to`` integration), per
    decoding ``d``: ``eval_<d>/entropy_mean``, ``entropy_p10``, ``seq_rep_4``, ``rep_2``, ``distinct_2``,
    ``uniq_seq``, ``eos_rate``, ``degenerate_frac``, ``repetitive_frac``, ``divergent_frac``, ``healthy_frac``,
    ``low_entropy_run`` (W&B shows
    ``eval/<d>/...``). With ``"wandb"`` in ``report_to`` and a W&B run active, also the completions table
    ``eval/completions`` and the histograms ``eval/<d>/entropy_hist``, logged straight to the run at
    ``train/global_step`` (tables do not belong in ``log_history``, which is saved as JSON).

    Call :func:`entropy_reg.hf.attach` on the trainer after building it: the callback logs through the
    trainer, which callbacks are not given.

    Args:
        prompts: None (built-in English + Chinese prompts), a list of strings, or a ``.txt`` / ``.jsonl``
            file (see ``GenerationEval``).
        every_n_steps: run after every N-th optimizer step (None: off).
        on_evaluate: run after each ``Trainer.evaluate`` (skipped when the step was just evaluated).
        decodings: preset names / specs (see :func:`entropy_reg.generation.parse_decoding`) or configs.
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per ``generate`` call.
        seed: sampling seed (the same each time, so runs compare over steps).
        tokenizer: the tokenizer; default: the trainer's ``processing_class`` (or its ``.tokenizer``).
        log_table: W&B completions table.
        log_histogram: W&B token-entropy histograms.
        low_entropy_threshold: nats, for ``low_entropy_run``.
        collapse_thresholds: thresholds of :func:`entropy_reg.metrics.collapse_class`.
        use_chat_template: wrap each prompt as a user turn with the tokenizer's chat template.
        progress: tqdm bar over generation batches.

    Attributes:
        last_metrics: the latest scalars under their W&B / Lightning names (``eval/<d>/<metric>``).
    """

    def __init__(
        self,
        prompts: None | Sequence[str] | str | Path = None,
        every_n_steps: int | None = None,
        on_evaluate: bool = True,
        decodings: Sequence[str | DecodingConfig] = ("greedy", "top_p"),
        max_new_tokens: int = 64,
        batch_size: int = 8,
        seed: int = 0,
        tokenizer: Any = None,
        log_table: bool = True,
        log_histogram: bool = True,
        low_entropy_threshold: float = DEFAULT_LOW_ENTROPY_THRESHOLD,
        collapse_thresholds: CollapseThresholds | None = None,
        use_chat_template: bool = False,
        progress: bool = False,
    ) -> None:
        if every_n_steps is None and not on_evaluate:
            raise ValueError("EntropyEvalCallback would never run: set every_n_steps or on_evaluate=True")
        try:
            self._eval = GenerationEvaluator(
                prompts=prompts, every_n_steps=every_n_steps, on_validation_end=on_evaluate,
                decodings=decodings, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                log_table=log_table, log_histogram=log_histogram, low_entropy_threshold=low_entropy_threshold,
                collapse_thresholds=collapse_thresholds, use_chat_template=use_chat_template, progress=progress,
            )
        except ValueError as exc:
            raise ValueError(f"EntropyEvalCallback: {exc}") from exc
        self.every_n_steps = every_n_steps
        self.run_on_evaluate = on_evaluate
        self.tokenizer = tokenizer
        self.last_metrics: dict[str, float] = {}
        self._trainer: Any = None
        self._last_step: int | None = None

    def bind(self, trainer: Any) -> None:
        """Set the trainer to log through (done by :func:`entropy_reg.hf.attach`)."""
        self._trainer = trainer

    # ---- hooks -------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, processing_class=None, **kwargs):
        if self._trainer is None:
            raise RuntimeError(
                "EntropyEvalCallback is not attached: call entropy_reg.hf.attach(trainer) after building the "
                "Trainer (the callback logs through it)."
            )
        sharded = bool(getattr(args, "fsdp", None)) or bool(getattr(args, "deepspeed", None))
        if args.world_size > 1 and sharded:
            raise ValueError(
                "EntropyEvalCallback generates on the main process only and needs the full model there; "
                "FSDP/DeepSpeed shard it. Use DDP, or run the generation evaluation after training."
            )
        tokenizer = self._tokenizer(processing_class)
        if self._eval.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("EntropyEvalCallback(use_chat_template=True) but the tokenizer has no chat_template")
        self._last_step = None

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._run(args, state, control, model, processing_class)

    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.run_on_evaluate and state.global_step != self._last_step:
            self._run(args, state, control, model, processing_class)

    # ---- work --------------------------------------------------------------------------------------
    def _tokenizer(self, processing_class: Any) -> Any:
        tokenizer = self.tokenizer if self.tokenizer is not None else processing_class
        # A multimodal processor carries its text tokenizer as `.tokenizer`.
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        if tokenizer is None:
            raise ValueError(
                "EntropyEvalCallback has no tokenizer: pass processing_class=tokenizer to the Trainer or "
                "tokenizer=... to the callback"
            )
        return tokenizer

    def _run(self, args: Any, state: Any, control: Any, model: Any, processing_class: Any) -> None:
        self._last_step = state.global_step
        if not state.is_world_process_zero:
            return
        if self._trainer is None:
            raise RuntimeError("EntropyEvalCallback is not attached: call entropy_reg.hf.attach(trainer)")
        tokenizer = self._tokenizer(processing_class)
        step = state.global_step
        scalars, results, probe = self._eval.measure(model, tokenizer)
        self.last_metrics = scalars
        # The base Trainer.log, not the subclass's: TRL's SFTTrainer.log merges and clears its pending
        # training metrics, which must not happen from a main-process-only call.
        from transformers import Trainer

        # Trainer.log's on_log event clears control.should_log; from on_step_end that would swallow the
        # step's own training log (loss, learning rate, our statistics), so the flag is restored.
        should_log = control.should_log
        Trainer.log(self._trainer, {"eval_" + k[len("eval/"):]: v for k, v in scalars.items()})
        control.should_log = should_log
        run = self._wandb_run(args)
        if run is not None and (self._eval.log_table or self._eval.log_histogram):
            run.log({**self._eval.wandb_extras(results, probe, step), "train/global_step": step})

    @staticmethod
    def _wandb_run(args: Any) -> Any:
        report_to = getattr(args, "report_to", None) or []
        if "wandb" not in report_to and "all" not in report_to:
            return None
        try:
            import wandb
        except ImportError:
            return None
        return wandb.run
