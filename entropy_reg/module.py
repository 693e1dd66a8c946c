"""CausalLMModule: SFT of a Hugging Face causal LM with an EntropyRegularizedLoss, ready for LightningCLI."""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from entropy_reg.losses import EntropyRegularizedLoss
from entropy_reg.models.forward import hidden_path_blocker
from entropy_reg.objectives import Objective, ObjectiveRunner
from entropy_reg.training.nonfinite import TrainStepLog, nonfinite_on_any_rank
from entropy_reg.training.schedule import CoefficientSchedule
from entropy_reg.training.stats_window import StatsWindow


def _build_schedule(schedule: CoefficientSchedule | dict[str, Any] | None) -> CoefficientSchedule | None:
    if schedule is None or isinstance(schedule, CoefficientSchedule):
        return schedule
    if isinstance(schedule, dict):
        try:
            return CoefficientSchedule(**schedule)
        except TypeError as err:
            raise ValueError(f"CausalLMModule: schedule: {err}") from None
    raise ValueError(f"CausalLMModule: schedule must be a CoefficientSchedule, a dict of its arguments or None, "
                     f"got {type(schedule).__name__}")


def describe(obj: Any) -> Any:
    """``{"class_path", "init_args"}`` of an object built from constructor arguments it keeps as attributes.

    Used to keep the loss configuration in the checkpoint's hyper-parameters (the loss object itself
    is not a hyper-parameter); lists and plain values pass through.
    """
    if isinstance(obj, (list, tuple)):
        return [describe(o) for o in obj]
    if obj is None or isinstance(obj, (bool, int, float, str, dict)):
        return obj
    cls = type(obj)
    init_args = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if hasattr(obj, name):
            init_args[name] = describe(getattr(obj, name))
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def build_loss(loss: EntropyRegularizedLoss | dict | None) -> EntropyRegularizedLoss:
    """The loss object from an instance, a ``{"class_path", "init_args"}`` dict (checkpoints) or None."""
    if loss is None:
        return EntropyRegularizedLoss(regularizers=[])
    if isinstance(loss, dict):
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--loss", type=EntropyRegularizedLoss)
        # deepcopy: parse_object turns nested dicts of the caller's config into Namespaces in place.
        config = parser.parse_object({"loss": copy.deepcopy(loss)})
        return parser.instantiate_classes(config).loss
    if not isinstance(loss, EntropyRegularizedLoss):
        raise TypeError(f"CausalLMModule: loss must be an EntropyRegularizedLoss or None, got {type(loss).__name__}")
    return loss


class CausalLMModule(LightningModule):
    """Supervised fine-tuning of a Hugging Face causal LM with an :class:`EntropyRegularizedLoss`.

    The HF model is ``self.model`` (so checkpoint keys start with ``model.``, which
    :func:`entropy_reg.models.load_checkpoint_model` relies on) and the tokenizer ``self.tokenizer``
    (used by ``GenerationEval``); both are loaded in ``__init__``, so they exist before the trainer
    starts and a checkpoint can be rebuilt from its hyper-parameters alone (``model_name_or_path``,
    ``gguf_file``, ``tiny_config``, and ``loss`` as a ``class_path``/``init_args`` dict).

    Training uses the hidden-state path: the decoder's last hidden states and the LM-head weight go to
    the loss, which does the head matmul per chunk of rows, so [tokens, vocab] logits never exist. It
    falls back to the model's logits (one warning) when the head is not a plain ``nn.Linear``, the
    model transforms its logits (soft-capping, scaling), or the strategy shards parameters (FSDP,
    DeepSpeed), and when ``use_hidden_path=False``.

    Batches are dicts ``{input_ids, attention_mask, labels}`` (labels HF-style, ``-100`` ignored).

    Logs ``train/loss``, ``train/ce``, ``train/entropy``, ``train/tail_mass``, ``train/copy_mass``,
    ``train/<term>`` per regularizer, ``train/reg_scale`` (sums and counts reduced across ranks),
    and per validation epoch ``val/loss`` (plain token-mean CE), ``val/ppl`` (its exp),
    ``val/entropy``, ``val/tail_mass``, ``val/copy_mass``.

    Args:
        model_name_or_path: see :func:`entropy_reg.models.load_causal_lm` (``"tiny"``,
            ``"embedded:smollm2-135m-instruct"``, a directory, a ``.gguf``, a ``.ckpt``, a hub id).
        gguf_file: GGUF file inside the directory ``model_name_or_path``.
        tiny_config: ``"tiny"`` only: ``build_tiny_llama`` keyword arguments (and ``vocab_size``).
        loss: CE + regularizers; default plain CE (no regularizers).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW weight decay on matrices (biases, norms and 1-d params get none).
        warmup_steps: linear warm-up from 0 to ``learning_rate``.
        lr_schedule: ``"cosine"`` (to 0 at the last step) or ``"constant"`` after warm-up.
        gradient_checkpointing: recompute activations in backward (non-reentrant).
        dtype: model weights dtype (``None``: float32; ``"bfloat16"`` ...). For mixed precision
            prefer ``trainer.precision="bf16-mixed"`` with float32 weights.
        use_hidden_path: False always computes full logits (for debugging the fast path).
        token_normalization: ``"global"`` (default): under multi-process training the training loss
            is normalised by the number of non-ignored labels of the whole global batch (one
            all-reduce of a count per step), so DDP's gradient averaging yields the gradient of the
            global token mean, exactly as one process on the global batch would; ``"local"``: each
            rank's own token mean (ranks with fewer tokens then weigh their tokens more). Identical
            in a single process. Gradient accumulation still averages micro-batch losses.
        on_nonfinite: what a non-finite loss (NaN/inf logits or loss) does in training: ``"raise"``
            (default) a ``FloatingPointError`` naming the global step; ``"skip"`` drops the step
            (no weight update: ``training_step`` returns None in one process; under DDP, where
            Lightning refuses None, an exact 0 loss whose gradients are dropped before the update)
            with a warning, counted in ``train/nonfinite_skipped``. Under DDP the ranks agree first (one all-reduce
            of a flag per step), so all raise or all skip.
        objectives: sequence-level objectives (:mod:`entropy_reg.objectives`: ``RepetitionConsistency``,
            ``SequenceUnlikelihood``), each with its own batch and forward through ``self.model``; on
            the steps they run (``rate``) ``loss_fn.scale * weight * loss`` is added to the step's loss
            (so ``CoefficientSchedule`` ramps them with the regularizers). Logged as ``train/<name>``
            and ``train/<name>/<stat>``; kept in the hyper-parameters as ``class_path`` dicts.
        lora: LoRA settings (:mod:`entropy_reg.models.lora`: ``r``, ``alpha``, ``dropout``,
            ``target_modules`` (default ``"all-linear"``), any other ``peft.LoraConfig`` field); None
            (default) fine-tunes all weights. With LoRA only the adapters train, the hidden-state loss
            path still applies, and checkpoints hold only the adapter weights (the base model is
            rebuilt from ``model_name_or_path``); ``entropy-reg compare``/``export`` load them.
        schedule: the coefficient ``c(step)`` of every regularizer and objective
            (:class:`~entropy_reg.training.CoefficientSchedule`, or its arguments as a dict), set on
            ``loss_fn.scale`` before each training step; e.g. ``hold_steps=20`` lets plain SFT run
            first and turns the regularizers and objectives on afterwards (objectives do not run, and
            cost nothing, while ``c == 0``). None (default): ``c = 1`` throughout.
        init_from: a ``.ckpt`` written by this class whose model weights start a *new* run (fresh
            optimizer, step 0, this run's loss and settings), e.g. regularized fine-tuning of a
            finished baseline. The model built from ``model_name_or_path``/``tiny_config`` must have
            the checkpoint's architecture. (``--ckpt_path`` instead resumes the checkpoint's run.)
            Read as data (``torch.load(weights_only=True)``); a checkpoint holding more is refused unless
            ``ENTROPY_REG_TRUST_CHECKPOINT=1`` (:func:`entropy_reg.models.read_checkpoint`).
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny",
        gguf_file: str | None = None,
        tiny_config: dict[str, Any] | None = None,
        loss: EntropyRegularizedLoss | None = None,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        gradient_checkpointing: bool = False,
        dtype: str | None = None,
        use_hidden_path: bool = True,
        token_normalization: Literal["global", "local"] = "global",
        on_nonfinite: Literal["raise", "skip"] = "raise",
        objectives: list[Objective] | None = None,
        lora: dict[str, Any] | None = None,
        schedule: CoefficientSchedule | dict[str, Any] | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if not (learning_rate > 0 and math.isfinite(learning_rate)):
            raise ValueError(f"CausalLMModule: learning_rate must be a finite number > 0, got {learning_rate!r}")
        if weight_decay < 0:
            raise ValueError(f"CausalLMModule: weight_decay must be >= 0, got {weight_decay!r}")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"CausalLMModule: warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"CausalLMModule: lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        if token_normalization not in ("global", "local"):
            raise ValueError(
                f"CausalLMModule: token_normalization must be 'global' or 'local', got {token_normalization!r}"
            )
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"CausalLMModule: on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        self.loss_fn = build_loss(loss)
        # The hyper-parameters hold the loss as a config dict (rebuildable, YAML-friendly), not the
        # object: save_hyperparameters reads this frame's locals, so rebind the name first.
        loss = describe(self.loss_fn)  # noqa: F841
        self._objectives = ObjectiveRunner(objectives, "CausalLMModule")
        objectives = describe(self._objectives.objectives)  # noqa: F841
        self._schedule = _build_schedule(schedule)
        # Kept as its arguments (a plain dict) so the checkpoint's hyper-parameters rebuild it.
        schedule = None if self._schedule is None else self._schedule.state_dict()  # noqa: F841
        self.save_hyperparameters()

        from entropy_reg.models import load_model_and_tokenizer

        self.model, self.tokenizer = load_model_and_tokenizer(
            model_name_or_path, gguf_file=gguf_file, dtype=dtype, tiny_config=tiny_config
        )
        if init_from is not None:
            from entropy_reg.models import load_checkpoint_weights

            load_checkpoint_weights(self.model, init_from)  # before LoRA: a full model's weights
        # from_pretrained returns a model in eval mode and Lightning (>= 2.2) keeps submodule modes as
        # they are at fit start: without this, dropout would stay off during fine-tuning.
        self.model.train()
        self._objectives.setup(self.tokenizer)
        if gradient_checkpointing:
            self.model.config.use_cache = False
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            from entropy_reg.models.lora import apply_lora

            self.model = apply_lora(self.model, lora, "CausalLMModule: lora")
            # Checkpoints hold only the adapters (on_save_checkpoint): Lightning's load is then
            # non-strict, and on_load_checkpoint checks the keys itself.
            self.strict_loading = False
        self._train_stats = StatsWindow("train/", prog_bar=("loss", "entropy"))
        self._val_stats = StatsWindow("val/", prog_bar=())
        self._warned_fallback = False
        self._steps = TrainStepLog(
            "CausalLMModule", on_nonfinite, self._train_stats,
            "Lower the learning rate, enable gradient clipping or bf16-mixed precision, check the data, or set "
            "model.on_nonfinite='skip' to skip such steps.",
        )

    # -- forward paths --------------------------------------------------------------------------------
    def _hidden_path_blocker(self) -> str | None:
        """Why the hidden-state path cannot be used (None when it can)."""
        if not self.hparams.use_hidden_path:
            return "use_hidden_path=False"
        return hidden_path_blocker(self.model, self.trainer.strategy if self._trainer is not None else None)

    def _loss(self, batch: dict[str, Tensor], num_tokens: float | None = None):
        labels, input_ids = batch["labels"], batch["input_ids"]
        attention_mask = batch.get("attention_mask")
        blocker = self._hidden_path_blocker()
        if blocker is None:
            out = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            head = self.model.get_output_embeddings()
            return self.loss_fn(
                hidden=out.last_hidden_state, lm_head_weight=head.weight, lm_head_bias=head.bias,
                labels=labels, input_ids=input_ids, attention_mask=attention_mask, num_tokens=num_tokens,
            )
        if not self._warned_fallback and self.hparams.use_hidden_path:
            rank_zero_warn(f"CausalLMModule: computing full logits because {blocker}.")
            self._warned_fallback = True
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return self.loss_fn(
            logits=logits, labels=labels, input_ids=input_ids, attention_mask=attention_mask, num_tokens=num_tokens
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # -- steps ------------------------------------------------------------------------------------
    def _num_tokens(self, labels: Tensor) -> float | None:
        """Per-rank normaliser that makes DDP's gradient *average* the gradient of the global token mean.

        Each rank's loss is ``sum_rank / (N_global / world_size)``; averaging over ranks gives
        ``sum_all / N_global``. None (the loss' local count) in a single process or with "local".
        """
        world_size = self.trainer.world_size if self._trainer is not None else 1
        if world_size <= 1 or self.hparams.token_normalization == "local":
            return None
        count = (labels[:, 1:] != self.loss_fn.ignore_index).sum().to(torch.float64)
        total = float(self.trainer.strategy.reduce(count, reduce_op="sum"))
        # A global batch without any label: the loss is 0 anyway; any positive normaliser keeps it finite.
        return max(total, 1.0) / world_size

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if self._schedule is not None:
            self.loss_fn.scale = self._schedule(self.trainer.global_step)
        error: FloatingPointError | None = None
        out = None
        try:
            out = self._loss(batch, num_tokens=self._num_tokens(batch["labels"]))
            loss = out.loss
            if not torch.isfinite(loss.detach()).item():
                raise FloatingPointError(f"EntropyRegularizedLoss returned a non-finite loss ({loss.item()})")
        except FloatingPointError as exc:
            error = exc
        # Every rank runs the objectives whatever its own loss did: they join collectives.
        objectives = self._objectives_loss(batch)
        if objectives is not None and error is None:
            loss = loss + objectives
            if not torch.isfinite(loss.detach()).item():
                error = FloatingPointError(f"the objectives returned a non-finite loss ({objectives.item()})")
        if nonfinite_on_any_rank(error is not None, self._trainer, self.device):
            return self._handle_nonfinite(error, batch_idx)
        self._train_stats.update(out.sums, out.count)
        self._log_train_window()
        return loss

    def _objectives_loss(self, batch: dict[str, Tensor]) -> Tensor | None:
        """``sum scale * weight * loss`` of the objectives running at this step (None: none runs).

        They share the regularizers' coefficient ``loss_fn.scale`` (set by ``CoefficientSchedule``).
        """
        if not self._objectives:
            return None
        trainer = self._trainer
        return self._objectives(
            self.model, batch, step=trainer.global_step if trainer is not None else 0, scale=self.loss_fn.scale,
            strategy=trainer.strategy if trainer is not None else None,
            hidden_path=self._hidden_path_blocker() is None,
        )

    def _log_train_window(self, final: bool = False) -> None:
        self._steps.log_window(self.trainer, self, self.loss_fn.scale, self._objectives, final=final)

    def on_train_end(self) -> None:
        # A run shorter than log_every_n_steps (or ending mid-window) still logs its last window.
        self._log_train_window(final=True)

    def _handle_nonfinite(self, error: FloatingPointError | None, batch_idx: int) -> Tensor | None:
        self._steps.on_nonfinite = self.hparams.on_nonfinite
        return self._steps.handle_nonfinite(self.trainer, self, error, batch_idx, self.loss_fn.scale, self._objectives)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._steps.before_optimizer_step(optimizer, self._trainer)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self._loss(batch)
        sums = {k: out.sums[k] for k in ("ce", "entropy", "tail_mass", "copy_mass") if k in out.sums}
        self._val_stats.update(sums, out.count)

    def on_validation_epoch_start(self) -> None:
        self._val_stats.reset()

    def on_validation_epoch_end(self) -> None:
        means = self._val_stats.reduce(self.trainer.strategy)
        if not means:
            return
        ce = means.pop("val/ce")
        metrics = {"val/loss": ce, "val/ppl": torch.exp(ce.double()).float(), **means}
        for key, value in metrics.items():
            # Already reduced over ranks (sums and counts): no sync_dist, which would average means.
            self.log(key, value, prog_bar=key == "val/loss", sync_dist=False, on_epoch=True, batch_size=1)

    # -- checkpointing ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The log cadence counts training_step calls; a resumed run continues it (see StatsWindow).
        checkpoint["entropy_reg"] = {
            "train_stats": self._train_stats.state_dict(),
            "nonfinite_skipped": self._steps.skipped,
            "objectives": self._objectives.state_dict(),
        }
        if self.hparams.get("lora") is not None:  # the frozen base is rebuilt from model_name_or_path
            from entropy_reg.models.lora import trainable_state_dict

            checkpoint["state_dict"] = trainable_state_dict(self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("entropy_reg") or {}
        if "train_stats" in state:
            self._train_stats.load_state_dict(state["train_stats"])
        self._steps.skipped = int(state.get("nonfinite_skipped", 0))
        self._objectives.load_state_dict(state.get("objectives") or {})
        if self.hparams.get("lora") is not None:
            from entropy_reg.models.lora import check_adapter_keys

            check_adapter_keys(self, checkpoint.get("state_dict") or {}, "CausalLMModule")

    # -- optimization -----------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (decay if param.dim() >= 2 else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.learning_rate)
        warmup = int(self.hparams.warmup_steps)
        total = float(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0.0
        cosine = self.hparams.lr_schedule == "cosine"
        if cosine and (total <= 0 or not math.isfinite(total)):
            from entropy_reg.errors import UserError

            raise UserError(
                "CausalLMModule: lr_schedule='cosine' needs a finite number of steps (set trainer.max_steps "
                "or max_epochs), or use lr_schedule='constant'"
            )

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup  # never exactly 0: the first step should move the weights
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
