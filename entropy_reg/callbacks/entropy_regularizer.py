"""EntropyRegularizer: add entropy-aware regularizers to the loss of a LightningModule you wrote."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from entropy_reg.data.formatting import IGNORE_INDEX
from entropy_reg.losses import EntropyRegularizedLoss
from entropy_reg.losses.loss import LossOutput
from entropy_reg.models.find import find_causal_lm, find_tokenizer
from entropy_reg.models.forward import (
    CallArgs,
    HeadBypass,
    hidden_path_blocker,
    loss_uses,
    num_items,
    output_logits,
    plain_ce_blocker,
    with_loss,
)
from entropy_reg.objectives import Objective, ObjectiveRunner
from entropy_reg.training.nonfinite import TrainStepLog, nonfinite_on_any_rank
from entropy_reg.training.schedule import CoefficientSchedule
from entropy_reg.training.stats_window import StatsWindow

_PROG_BAR_KEYS = ("loss", "ce", "reg_loss", "entropy", "tail_mass", "copy_mass", "reg_scale")

# The three ways the regularizers reach the loss (see the class docstring); `EntropyRegularizer.path`.
ONE_PASS, HIDDEN, ADDITIVE = "one-pass", "hidden", "additive"


class _Capture:
    """The causal LM's grad-enabled forward calls during one training_step (one dict per call)."""

    def __init__(self) -> None:
        self.active = False
        self.calls: list[dict[str, Any]] = []


class EntropyRegularizer(Callback):
    """Puts ``CE + scale * sum_i w_i R_i`` of an :class:`~entropy_reg.losses.EntropyRegularizedLoss`
    into the loss your ``training_step`` returns, without changes to your code.

    A Lightning callback cannot change the loss Lightning backpropagates, so this one attaches itself
    at ``setup("fit")`` and detaches at ``teardown`` (or on an exception): it finds the Hugging Face
    causal LM inside your module (``model_attr`` names it when there are several), registers a forward
    pre-hook and a forward hook on it, and wraps ``pl_module.training_step`` (an instance attribute;
    the class is untouched). Each grad-enabled model call inside ``training_step`` takes one of three
    paths; an info line names the path (and why) the first time it is taken, and ``self.path`` holds
    the latest one:

    - ``"one-pass"`` (default, when you call the model with ``labels``): the pre-hook takes ``labels``
      out of the call, so the model computes no loss of its own; the forward hook computes CE +
      regularizers in one chunked pass over the logits and returns the output with that in
      ``out.loss``. Your step keeps using ``out.loss`` (returns it, logs it, adds its own terms), and
      Lightning backpropagates one loss whose logits gradient is one ``[tokens, V]`` tensor (no
      float32 copy of the logits, no second gradient). The CE is the one the model would have
      computed (transformers' ``ForCausalLMLoss``): logits at t predict ``labels`` at t+1, ``-100``
      ignored, divided by the number of predicted tokens, or by ``num_items_in_batch`` when you pass
      it to the model; the regularizers share that normaliser.
    - ``"hidden"`` (opt-in, ``hidden_path=True``): like one-pass, but the LM head is bypassed: it
      hands its input (the final hidden states) over instead of computing logits, and the loss does
      the head matmul chunk by chunk, so ``[tokens, V]`` logits never exist. Contract: the model
      computes ``logits = lm_head(final hidden states)`` once per call with a plain ``nn.Linear``
      head and no logit transform, and ``logits_to_keep`` is not passed; ``out.logits`` is None, so
      your step must not read it. Under a strategy that shards parameters (FSDP, DeepSpeed) or with a
      head that is not a plain ``nn.Linear`` (e.g. LoRA on the head) the one-pass path on logits is
      taken instead.
    - ``"additive"``: the model keeps its own loss and ``loss(..., include_ce=False)`` from the
      captured logits (a second pass) is added to the loss your step returns. Taken when the model's
      loss is not the plain shifted CE of its logits (a custom ``loss_function``, logit soft-capping
      or scaling in its config, an ``ignore_index`` other than -100, ``shift_labels`` passed), when
      you call the model without ``labels`` (you compute the loss from the logits), when the loss
      your step returns does not use ``out.loss`` (checked on its autograd graph, per step), and with
      ``one_pass=False``.

    Contract (checked; a violation raises with a message saying which):

    - automatic optimization (``self.automatic_optimization`` is True): with manual optimization you
      call ``backward`` yourself, so there is no returned loss to add to — call the loss directly;
    - exactly one HF causal LM in the module, or ``model_attr`` set (dotted path, e.g. ``"model"``);
    - ``training_step`` calls that causal LM (not its base model: the head must run) exactly once with
      grad enabled, with ``input_ids`` (not ``inputs_embeds``); calls under ``torch.no_grad()`` (e.g.
      a reference pass) are left alone and keep their own loss;
    - ``training_step`` returns a loss (returning ``None`` to skip a batch is not supported);
    - labels: the ``labels`` passed to the model (Hugging Face convention: unshifted, ``-100``
      ignored) are used. Without ``labels`` in the call, ``input_ids`` are used as labels with
      positions where ``attention_mask == 0`` set to ``-100`` (plain causal-LM training); if your
      loss masks more than padding (prompt tokens), pass ``labels`` to the model.

    Gradient accumulation and DDP behave as they do without the callback: each micro-batch loss is
    normalised like the model's own. Passing ``num_items_in_batch`` (the predicted tokens of the
    accumulated global batch, divided by the world size under DDP) makes CE and regularizers together
    exactly the global token mean.

    Logged (token-weighted over the steps since the last log and over all ranks: sums and counts are
    reduced, then divided): ``train/loss`` (the loss your step returned, regularizers included),
    ``train/reg_loss``, ``train/ce``, ``train/entropy``, ``train/tail_mass``, ``train/copy_mass``,
    ``train/<term>`` for each regularizer (unweighted penalty), and ``train/reg_scale`` (the
    coefficient in effect).

    Args:
        loss: the regularizers and their weights (its own ``include_ce`` is not used: the one-pass
            paths always include the CE, the additive path never does).
        schedule: sets ``loss.scale`` from ``trainer.global_step`` before every step; ``None`` leaves
            ``loss.scale`` as it is.
        model_attr: dotted attribute path of the causal LM inside your module.
        log_every_n_steps: optimizer steps per logged value; ``None``: ``trainer.log_every_n_steps``.
        prog_bar: statistics (names without ``train/``) shown in the progress bar.
        on_nonfinite: a non-finite loss (NaN/inf logits, or your loss + regularizers not finite):
            ``"raise"`` a ``FloatingPointError`` naming the global step (before any weight update);
            ``"skip"`` drops the step's weight update (returns None in one process; under DDP, where
            Lightning refuses None, an exact 0 loss whose gradients are dropped) with a warning,
            counted in ``train/nonfinite_skipped``. Under DDP the ranks agree first (one all-reduce
            of a flag per step), so all raise or all skip.
        one_pass: False always takes the additive path (the model's own loss + regularizers).
        hidden_path: True takes the hidden-state path where the contract above allows it.
        objectives: sequence-level objectives (:mod:`entropy_reg.objectives`): each builds its own
            batch from the captured ``input_ids``/``labels``/``attention_mask`` of the causal LM call
            and runs it through that causal LM; ``loss.scale * weight * loss`` is added to the loss
            your step returns on the steps it runs. Logged as ``train/<name>`` and
            ``train/<name>/<stat>`` (``train/loss`` excludes them). A tokenizer is looked up on your
            module or datamodule (``tokenizer`` attribute) for the sentence ends.

    Example::

        trainer = Trainer(callbacks=[EntropyRegularizer(
            EntropyRegularizedLoss([TailMassFloor(top_k=5, floor=0.15), AntiCopyPenalty(weight=0.5)]),
            schedule=CoefficientSchedule(warmup_steps=100))])
    """

    def __init__(
        self,
        loss: EntropyRegularizedLoss,
        schedule: CoefficientSchedule | None = None,
        model_attr: str | None = None,
        log_every_n_steps: int | None = None,
        prog_bar: Iterable[str] = ("loss", "entropy"),
        on_nonfinite: str = "raise",
        one_pass: bool = True,
        hidden_path: bool = False,
        objectives: list[Objective] | None = None,
    ) -> None:
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"EntropyRegularizer: on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        if not isinstance(loss, EntropyRegularizedLoss):
            raise TypeError(
                f"EntropyRegularizer: loss must be an EntropyRegularizedLoss, got {type(loss).__name__}"
            )
        if schedule is not None and not isinstance(schedule, CoefficientSchedule):
            raise TypeError(
                f"EntropyRegularizer: schedule must be a CoefficientSchedule or None, got {type(schedule).__name__}"
            )
        if model_attr is not None and (not isinstance(model_attr, str) or not model_attr):
            raise ValueError(
                f"EntropyRegularizer: model_attr must be a non-empty dotted path or None, got {model_attr!r}"
            )
        for name, flag in (("one_pass", one_pass), ("hidden_path", hidden_path)):
            if not isinstance(flag, bool):
                raise TypeError(f"EntropyRegularizer: {name} must be True or False, got {flag!r}")
        if hidden_path and not one_pass:
            raise ValueError(
                "EntropyRegularizer: hidden_path=True needs one_pass=True (the hidden path replaces the "
                "model's own loss; the additive path needs the model's logits)"
            )
        prog_bar = (prog_bar,) if isinstance(prog_bar, str) else tuple(prog_bar)
        unknown = [k for k in prog_bar if k not in _PROG_BAR_KEYS and k not in loss.term_names]
        if unknown:
            raise ValueError(
                f"EntropyRegularizer: unknown prog_bar keys {unknown}; choose from "
                f"{list(_PROG_BAR_KEYS) + list(loss.term_names)}"
            )
        self.loss = loss
        self.schedule = schedule
        self.model_attr = model_attr
        self.prog_bar = prog_bar
        self.on_nonfinite = on_nonfinite
        self.one_pass = one_pass
        self.hidden_path = hidden_path
        self._objectives = ObjectiveRunner(objectives, "EntropyRegularizer")
        self._window = StatsWindow("train/", prog_bar, log_every_n_steps)
        self._steps = TrainStepLog(
            "EntropyRegularizer", on_nonfinite, self._window,
            "Lower the learning rate, clip gradients, check the data, or pass on_nonfinite='skip' to skip such steps.",
        )
        self.last_scale: float = float(loss.scale)
        self.last_step: int | None = None
        self.path: str | None = None
        self._announced: set[tuple[str, str | None]] = set()
        self._capture = _Capture()
        self._handles: list[Any] = []
        self._module: LightningModule | None = None
        self._lm: torch.nn.Module | None = None
        self._call_args: CallArgs | None = None
        self._one_pass_blocker: str | None = None
        self._hidden_blocker: str | None = None
        self._bypass: HeadBypass | None = None
        self._had_instance_step = False
        self._original_step: Any = None
        self._warned_label_fallback = False

    # -- attach / detach -----------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                "EntropyRegularizer needs automatic optimization: it adds the regularizers to the loss "
                f"that {type(pl_module).__name__}.training_step returns, and with "
                "`automatic_optimization = False` you call backward yourself. Call an "
                "EntropyRegularizedLoss in your training_step instead."
            )
        name, model = find_causal_lm(pl_module, self.model_attr)
        self._detach()  # a second fit() on the same trainer: never stack two wrappers
        if self._objectives:
            self._objectives.check_strategy(type(trainer.strategy).__name__)  # FSDP + generation: fail now
            self._objectives.setup(find_tokenizer(pl_module, trainer))
        self._lm = model
        self._call_args = CallArgs(model)
        self._one_pass_blocker = (
            plain_ce_blocker(model, self.loss.ignore_index) if self.one_pass else "one_pass=False"
        )
        self._hidden_blocker = hidden_path_blocker(model, trainer.strategy, needs_decoder=False) if self.hidden_path else None
        if self.hidden_path and self._hidden_blocker is None:
            self._bypass = HeadBypass(model.get_output_embeddings())
        self._handles = [
            model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            model.register_forward_hook(self._post_hook, with_kwargs=True),
        ]
        self._module = pl_module
        self._had_instance_step = "training_step" in vars(pl_module)
        self._original_step = original = pl_module.training_step

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            return self._training_step(trainer, *args, **kwargs)

        pl_module.training_step = training_step
        rank_zero_info(
            f"EntropyRegularizer: regularizing {type(model).__name__} at "
            f"{type(pl_module).__name__}.{name or '<module itself>'} with {self.loss.term_names or 'no terms'}"
        )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The strategy has placed the module by now (it has not at setup); keep any loss state with it.
        self.loss.to(pl_module.device)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._detach()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._detach()

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._bypass is not None:
            self._bypass.remove()
        self._bypass = None
        module = self._module
        if module is not None:
            if self._had_instance_step:
                module.training_step = self._original_step
            else:
                vars(module).pop("training_step", None)  # the class method shows through again
        self._module = None
        self._lm = None
        self._original_step = None
        self._capture = _Capture()
        self._window.reset()

    # -- choosing the path ----------------------------------------------------------------------------
    def _path_for(self, call: dict[str, Any], kwargs: dict) -> tuple[str, str | None]:
        """``(path, reason)`` for one model call; the reason says why a faster path was not taken."""
        if self._one_pass_blocker is not None:
            return ADDITIVE, self._one_pass_blocker
        if call["labels"] is None:
            return ADDITIVE, "the causal LM is called without `labels` (your training_step computes the loss)"
        if call["input_ids"] is None:
            return ADDITIVE, "the causal LM is called without input_ids"
        for key in ("shift_labels", "logits_to_keep"):
            if kwargs.get(key) not in (None, 0):
                return ADDITIVE, f"the call passes {key}"
        if kwargs.get("ignore_index", IGNORE_INDEX) != self.loss.ignore_index:
            return ADDITIVE, f"the call passes ignore_index={kwargs['ignore_index']}"
        if not self.hidden_path:
            return ONE_PASS, None
        return (HIDDEN, None) if self._hidden_blocker is None else (ONE_PASS, self._hidden_blocker)

    def _announce(self, path: str, reason: str | None) -> None:
        self.path = path
        if (path, reason) in self._announced:
            return
        self._announced.add((path, reason))
        if path == HIDDEN:
            what = ("hidden-state path: the LM head is bypassed and CE + regularizers are computed from the "
                    "final hidden states chunk by chunk into out.loss ([tokens, vocab] logits never exist; "
                    "out.logits is None)")
        elif path == ONE_PASS:
            what = ("one-pass path: the model skips its own loss; CE + regularizers are computed in one pass "
                    "over its logits into out.loss")
            what += f" (not the hidden path: {reason})" if reason else ""
        else:
            what = (f"additive path because {reason}: the regularizers are added to your loss (a second "
                    "pass over the logits)")
        rank_zero_info(f"EntropyRegularizer: {what}.")

    # -- hooks ------------------------------------------------------------------------------------
    def _pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not self._capture.active or not torch.is_grad_enabled():
            return None
        get = functools.partial(self._call_args.get, args, kwargs)
        call = {"input_ids": get("input_ids"), "labels": get("labels"), "attention_mask": get("attention_mask")}
        self._capture.calls.append(call)
        call["path"], reason = self._path_for(call, kwargs)
        self._announce(call["path"], reason)
        if call["path"] == ADDITIVE:
            return None
        call["num_tokens"] = num_items(kwargs.get("num_items_in_batch"))
        if call["path"] == HIDDEN:
            self._bypass.install()
        return self._call_args.without(args, kwargs, "labels")  # the model computes no loss

    def _post_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if not self._capture.active or not torch.is_grad_enabled() or not self._capture.calls:
            return None
        call = self._capture.calls[-1]
        if call["path"] == ADDITIVE:
            call["logits"] = output_logits(output, had_labels=call["labels"] is not None)
            return None
        if call["path"] == HIDDEN:
            self._bypass.remove()
            call["hidden"], self._bypass.hidden = self._bypass.hidden, None
            if call["hidden"] is None:
                raise RuntimeError(
                    f"EntropyRegularizer(hidden_path=True): {type(module).__name__} did not call its LM head "
                    "on the final hidden states; the hidden path needs logits = lm_head(hidden). Use "
                    "hidden_path=False."
                )
            device = call["hidden"].device
        else:
            call["logits"] = output_logits(output, had_labels=False)
            if not isinstance(call["logits"], Tensor):
                raise RuntimeError(self._no_logits_message())
            device = call["logits"].device
        try:
            call["out"] = self._compute(call, include_ce=True)
            call["loss"] = call["out"].loss
        except FloatingPointError as exc:
            # Handled after your training_step returns (raise or skip, all ranks alike); until then
            # out.loss is NaN.
            call["error"], call["out"] = exc, None
            call["loss"] = torch.full((), float("nan"), device=device)
        return with_loss(output, call["loss"], drop_logits=call["path"] == HIDDEN)

    def _compute(self, call: dict[str, Any], include_ce: bool) -> LossOutput:
        """CE + regularizers (``include_ce``, the model's normaliser) or the regularizers alone."""
        inputs = {
            "labels": self._labels(call),
            "input_ids": call["input_ids"],
            "attention_mask": call["attention_mask"],
            "num_tokens": call.get("num_tokens") if include_ce else None,
            "include_ce": include_ce,
        }
        if "hidden" in call:
            head = self._bypass.head
            return self.loss(hidden=call["hidden"], lm_head_weight=head.weight, lm_head_bias=head.bias, **inputs)
        return self.loss(logits=call["logits"], **inputs)

    # -- the wrapped step -------------------------------------------------------------------------
    def _training_step(self, trainer: Trainer, *args: Any, **kwargs: Any) -> Any:
        if self.schedule is not None:
            self.loss.scale = self.schedule(trainer.global_step)
        self.last_scale, self.last_step = float(self.loss.scale), trainer.global_step
        self._capture.calls = []
        self._capture.active = True
        try:
            result = self._original_step(*args, **kwargs)
        finally:
            self._capture.active = False
            if self._bypass is not None:  # a model call that raised must not leave the head bypassed
                self._bypass.remove()
        calls, self._capture.calls = self._capture.calls, []
        user_loss = self._user_loss(result)
        # The captured batch of the causal LM call (call["input_ids"], call["labels"],
        # call["attention_mask"]) and the model itself (self._lm) are available from here on.
        call = self._single_call(calls)
        error: FloatingPointError | None = call.get("error")
        out, total = call.get("out"), user_loss
        if error is None:
            try:
                if out is not None and not loss_uses(user_loss, call["loss"]):
                    self._announce(ADDITIVE, "your training_step's loss does not use the model's out.loss")
                    out = None
                if out is None:
                    out = self._compute(call, include_ce=False)
                    total = user_loss + out.loss.to(user_loss.dtype)
                if not torch.isfinite(total.detach()).item():
                    raise FloatingPointError(f"non-finite loss {total.item()} (CE + regularizers, your terms)")
            except FloatingPointError as exc:
                error = exc
        # Objectives (own batch from the captured inputs, same causal LM) run on every rank whatever
        # its own loss did: they join collectives.
        extra = self._objectives_loss(trainer, call)
        if extra is not None and error is None and not torch.isfinite(extra.detach()).item():
            error = FloatingPointError(f"non-finite loss {extra.item()} from the objectives")
        if nonfinite_on_any_rank(error is not None, trainer, user_loss.device):
            return self._handle_nonfinite(trainer, error, args)

        sums = dict(out.sums)
        count = out.count
        # The one-pass loss holds CE + regularizers; the additive one the regularizers alone.
        reg_sum = sums.pop("loss")
        sums["reg_loss"] = reg_sum - sums["ce"] if total is user_loss else reg_sum
        sums["loss"] = total.detach().to(torch.float64) * count.to(torch.float64)
        self._window.update(sums, count)
        self._log_window(trainer)

        if extra is not None:
            total = total + extra.to(total.dtype)
        if total is user_loss:
            return result
        if isinstance(result, Tensor):
            return total
        return {**result, "loss": total}

    def _objectives_loss(self, trainer: Trainer, call: dict[str, Any]) -> Tensor | None:
        if not self._objectives:
            return None
        batch = {k: call[k] for k in ("input_ids", "attention_mask", "labels")}
        return self._objectives(
            self._lm, batch, step=trainer.global_step, scale=self.loss.scale, strategy=trainer.strategy
        )

    @property
    def nonfinite_skipped(self) -> int:
        """Training steps skipped for a non-finite loss (``on_nonfinite="skip"``)."""
        return self._steps.skipped

    def _log_window(self, trainer: Trainer, final: bool = False) -> None:
        self._steps.log_window(trainer, self._module, self.last_scale, self._objectives, final=final)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A run shorter than log_every_n_steps (or ending mid-window) still logs its last window.
        self._log_window(trainer, final=True)

    def _handle_nonfinite(self, trainer: Trainer, error: FloatingPointError | None, args: tuple) -> Tensor | None:
        batch_idx = args[1] if len(args) > 1 else "?"
        self._steps.on_nonfinite = self.on_nonfinite
        return self._steps.handle_nonfinite(trainer, self._module, error, batch_idx, self.last_scale, self._objectives)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self._steps.before_optimizer_step(optimizer, trainer)

    def _user_loss(self, result: Any) -> Tensor:
        name = type(self._module).__name__
        if result is None:
            raise RuntimeError(
                f"EntropyRegularizer: {name}.training_step returned None. Skipping a batch by returning "
                "None is not supported while the regularizer is attached: return the loss."
            )
        loss = result.get("loss") if isinstance(result, dict) else result
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise RuntimeError(
                f"EntropyRegularizer: {name}.training_step must return a scalar loss tensor or a dict with "
                f"a 'loss' tensor, got {type(result).__name__}"
            )
        return loss

    def _no_logits_message(self) -> str:
        return (
            f"EntropyRegularizer: the causal LM call in {type(self._module).__name__}.training_step produced "
            "no logits (did a fused-loss option skip them?). The regularizers need the [B, T, V] logits."
        )

    def _single_call(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        name = type(self._module).__name__
        if not calls:
            raise RuntimeError(
                f"EntropyRegularizer: {name}.training_step did not call the causal LM with grad enabled. "
                "Call the causal LM itself (e.g. `self.model(**batch)`), not its base model, so its "
                "logits can be captured."
            )
        if len(calls) > 1:
            raise RuntimeError(
                f"EntropyRegularizer: {name}.training_step called the causal LM {len(calls)} times with "
                "grad enabled; exactly one call is supported (wrap extra passes in torch.no_grad())."
            )
        call = calls[0]
        if call["path"] != HIDDEN and not isinstance(call.get("logits"), Tensor):
            raise RuntimeError(self._no_logits_message())
        if call["input_ids"] is None:
            raise RuntimeError(
                f"EntropyRegularizer: {name}.training_step called the causal LM without input_ids "
                "(inputs_embeds?); the regularizer needs token ids for labels and the copy set."
            )
        return call

    def _labels(self, call: dict[str, Any]) -> Tensor:
        labels = call["labels"]
        if labels is not None:
            return labels
        if not self._warned_label_fallback:
            rank_zero_warn(
                "EntropyRegularizer: the causal LM was called without `labels`; using input_ids with "
                "padding (attention_mask == 0) set to ignore_index. Pass labels to the model if your "
                "loss masks prompt tokens."
            )
            self._warned_label_fallback = True
        labels = call["input_ids"].clone()
        if call["attention_mask"] is not None:
            labels[call["attention_mask"] == 0] = self.loss.ignore_index
        return labels
    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "last_scale": self.last_scale,
            "last_step": self.last_step,
            "window": self._window.state_dict(),
            "nonfinite_skipped": self.nonfinite_skipped,
            "objectives": self._objectives.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("schedule")
        if saved is not None:
            # Like EarlyStopping, the checkpoint wins: a resumed run continues the schedule it started.
            if self.schedule is None:
                self.schedule = CoefficientSchedule(**saved)
            elif self.schedule.state_dict() != saved:
                rank_zero_warn(
                    f"EntropyRegularizer: resuming with the checkpoint's schedule {saved} instead of the "
                    f"configured {self.schedule.state_dict()}"
                )
                self.schedule.load_state_dict(saved)
        self.last_scale = float(state_dict.get("last_scale", self.last_scale))
        self.last_step = state_dict.get("last_step")
        self._steps.skipped = int(state_dict.get("nonfinite_skipped", 0))
        self._objectives.load_state_dict(state_dict.get("objectives") or {})
        if "window" in state_dict:
            self._window.load_state_dict(state_dict["window"])
        # Without a schedule the scale is otherwise untouched; restore it so the first resumed step
        # uses the coefficient the interrupted run ended with.
        self.loss.scale = self.last_scale
