"""CausalLMModule: SFT of a Hugging Face causal LM with an EntropyRegularizedLoss, ready for LightningCLI."""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Literal

import torch
import torch.nn as nn
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from entropy_reg.logging_utils import StatsWindow
from entropy_reg.losses import EntropyRegularizedLoss

# Config attributes of HF models whose logits are not `lm_head(hidden)`: for those, the hidden-state
# path would silently compute a different loss, so they take the logits path.
_LOGIT_TRANSFORM_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
# Strategies that shard parameters: the LM-head weight outside the model's own forward is a shard.
_SHARDING_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


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
        self.loss_fn = build_loss(loss)
        # The hyper-parameters hold the loss as a config dict (rebuildable, YAML-friendly), not the
        # object: save_hyperparameters reads this frame's locals, so rebind the name first.
        loss = describe(self.loss_fn)  # noqa: F841
        self.save_hyperparameters()

        from entropy_reg.models import load_model_and_tokenizer

        self.model, self.tokenizer = load_model_and_tokenizer(
            model_name_or_path, gguf_file=gguf_file, dtype=dtype, tiny_config=tiny_config
        )
        if gradient_checkpointing:
            self.model.config.use_cache = False
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._train_stats = StatsWindow("train/", prog_bar=("loss", "entropy"))
        self._val_stats = StatsWindow("val/", prog_bar=())
        self._warned_fallback = False

    # -- forward paths --------------------------------------------------------------------------------
    def _hidden_path_blocker(self) -> str | None:
        """Why the hidden-state path cannot be used (None when it can)."""
        if not self.hparams.use_hidden_path:
            return "use_hidden_path=False"
        strategy = type(self.trainer.strategy).__name__ if self._trainer is not None else ""
        if strategy in _SHARDING_STRATEGIES:
            return f"{strategy} shards the LM-head weight"
        head = self.model.get_output_embeddings()
        if type(head) is not nn.Linear:
            return f"the LM head is a {type(head).__name__}, not a plain nn.Linear"
        config = getattr(self.model, "config", None)
        for attr in _LOGIT_TRANSFORM_ATTRS:
            value = getattr(config, attr, None)
            if value is not None and value != 1 and value != 1.0:
                return f"the model transforms its logits ({attr}={value})"
        get_decoder = getattr(self.model, "get_decoder", None)
        if get_decoder is None or get_decoder() is None:
            return "the model has no get_decoder()"
        return None

    def _loss(self, batch: dict[str, Tensor]):
        labels, input_ids = batch["labels"], batch["input_ids"]
        attention_mask = batch.get("attention_mask")
        blocker = self._hidden_path_blocker()
        if blocker is None:
            out = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            head = self.model.get_output_embeddings()
            return self.loss_fn(
                hidden=out.last_hidden_state, lm_head_weight=head.weight, lm_head_bias=head.bias,
                labels=labels, input_ids=input_ids, attention_mask=attention_mask,
            )
        if not self._warned_fallback and self.hparams.use_hidden_path:
            rank_zero_warn(f"CausalLMModule: computing full logits because {blocker}.")
            self._warned_fallback = True
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return self.loss_fn(logits=logits, labels=labels, input_ids=input_ids, attention_mask=attention_mask)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # -- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self._loss(batch)
        self._train_stats.update(out.sums, out.count)
        if self._train_stats.step_is_log_step(self.trainer):
            metrics = self._train_stats.reduce(self.trainer.strategy)
            metrics["train/reg_scale"] = torch.tensor(float(self.loss_fn.scale))
            self._train_stats.log(self.trainer, self, metrics)
        return out.loss

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
            raise ValueError(
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
