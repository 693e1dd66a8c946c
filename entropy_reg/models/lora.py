"""LoRA adapters through ``peft``, configured by a plain dict (YAML-friendly), and their checkpoints.

``CausalLMModule(lora={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"})`` wraps
its Hugging Face model with :func:`apply_lora`; only the adapter weights train. The dict is a
hyper-parameter, so a checkpoint names the base model (``model_name_or_path``) and the LoRA config,
and its ``state_dict`` holds the adapter weights only (:func:`trainable_state_dict`): a few MiB instead
of the whole model. :func:`load_adapter_weights` rebuilds the same ``PeftModel`` from base + adapters.

Why the hidden-state loss path still works: ``PeftModel`` forwards ``get_decoder()`` and
``get_output_embeddings()`` to the wrapped model, whose attention and MLP ``nn.Linear`` layers peft
has replaced *in place* by ``lora.Linear`` (base + B @ A): the decoder called by the loss is the
adapted one. ``"all-linear"`` never adapts the LM head, so the head stays a plain ``nn.Linear`` (a
config that adapts it makes the module fall back to the logits path, with a warning).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from entropy_reg.errors import UserError

# Short names accepted in YAML next to peft's own field names.
ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
DEFAULTS: dict[str, Any] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}
# LoraConfig fields that this module sets itself or that describe a saved adapter, not a choice.
_RESERVED = ("task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
             "inference_mode")


def _peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a dependency; this guards broken installs
        raise ImportError("LoRA needs the `peft` package: pip install 'peft>=0.13'") from None
    return peft


def lora_config(settings: Mapping[str, Any] | None, owner: str = "lora") -> Any:
    """A ``peft.LoraConfig`` (task CAUSAL_LM) from ``settings``; unknown keys and bad values raise.

    Args:
        settings: ``r``, ``alpha`` (or ``lora_alpha``), ``dropout`` (or ``lora_dropout``),
            ``target_modules`` (default ``"all-linear"``: every linear layer of attention and MLP,
            not the LM head; a list of names, a bare name ``"q_proj"`` meaning ``[q_proj]``, or another
            string as peft's regex over the full module path) and any other ``peft.LoraConfig`` field (``use_rslora``, ``bias``, ...).
        owner: prefix of error messages (e.g. ``"CausalLMModule: lora"``).

    Raises:
        UserError: a key that is not a LoRA setting, a key given twice (alias and full name), or
            ``r`` / ``alpha`` / ``dropout`` out of range.
    """
    peft = _peft()
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise UserError(f"{owner} must be a dict of LoRA settings (r, alpha, dropout, target_modules, ...), "
                         f"got {type(settings).__name__}")
    allowed = {f.name for f in dataclasses.fields(peft.LoraConfig)} - set(_RESERVED)
    kwargs = dict(DEFAULTS)
    given: dict[str, str] = {}
    for key, value in settings.items():
        name = ALIASES.get(key, key)
        if name not in allowed:
            raise UserError(f"{owner}: unknown LoRA setting {key!r}; use r, alpha, dropout, target_modules or a "
                             f"peft.LoraConfig field ({', '.join(sorted(allowed))})")
        if name in given:
            raise UserError(f"{owner}: {given[name]!r} and {key!r} set the same LoRA setting {name!r}")
        given[name] = key
        kwargs[name] = list(value) if isinstance(value, tuple) else value
    target = kwargs["target_modules"]
    if isinstance(target, str) and target != "all-linear" and re.fullmatch(r"[A-Za-z_]\w*", target):
        # peft reads a string as a regex over the full module path ("model.layers.0.self_attn.q_proj"),
        # so a bare name would match nothing: it means the list of that one name, as ``[q_proj]`` does.
        kwargs["target_modules"] = [target]
    r, alpha, dropout = kwargs["r"], kwargs["lora_alpha"], kwargs["lora_dropout"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise UserError(f"{owner}: r must be an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise UserError(f"{owner}: alpha must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise UserError(f"{owner}: dropout must be in [0, 1), got {dropout!r}")
    try:
        return peft.LoraConfig(task_type="CAUSAL_LM", **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{owner}: peft rejected the LoRA config {kwargs}: {err}") from None


def apply_lora(model: nn.Module, settings: Mapping[str, Any] | None, owner: str = "lora") -> nn.Module:
    """Wrap a Hugging Face causal LM in a ``PeftModel`` with fresh LoRA adapters; only they train.

    Raises:
        UserError: bad settings (see :func:`lora_config`), or ``target_modules`` matched no layer.
    """
    peft = _peft()
    config = lora_config(settings, owner)
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. "Target modules {...} not found in the base model"
        raise UserError(f"{owner}: {err}") from None
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    if not trainable:
        raise UserError(f"{owner}: no trainable parameter after adding adapters (target_modules="
                         f"{config.target_modules!r})")
    return wrapped


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def trainable_state_dict(module: nn.Module) -> dict[str, Any]:
    """The entries of ``module.state_dict()`` that are trainable parameters (the adapters under LoRA)."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k in names}


def check_adapter_keys(module: nn.Module, state_dict: Mapping[str, Any], where: str) -> None:
    """Raise UserError unless ``state_dict`` holds every trainable weight of ``module`` and nothing unknown.

    The check a non-strict load (adapters only; the frozen base comes from ``model_name_or_path``)
    needs so that a wrong or truncated checkpoint still fails loudly.
    """
    expected = set(module.state_dict())
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        parts = [f"{len(missing)} adapter weights missing (e.g. {missing[:3]})"] if missing else []
        parts += [f"{len(unexpected)} unknown keys (e.g. {unexpected[:3]})"] if unexpected else []
        raise UserError(f"{where}: the checkpoint does not match the LoRA model built from its hyper-parameters: "
                         f"{'; '.join(parts)}")


def load_adapter_weights(model: nn.Module, weights: Mapping[str, Any], where: str) -> None:
    """Load adapter weights (or a full state dict) into a ``PeftModel`` built by :func:`apply_lora`."""
    check_adapter_keys(model, weights, where)
    model.load_state_dict(dict(weights), strict=False)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain Hugging Face model with the adapters added into its weights (W + scale * B @ A)."""
    return model.merge_and_unload() if is_peft_model(model) else model


def restore_lora_model(base: nn.Module, settings: Mapping[str, Any], weights: Mapping[str, Any], where: str,
                       merge: bool = True) -> nn.Module:
    """Rebuild a LoRA fine-tuned model: adapters from ``settings`` on ``base``, ``weights`` loaded into them.

    Args:
        base: the base model named by the checkpoint's ``model_name_or_path``.
        settings: the checkpoint's ``lora`` hyper-parameter.
        weights: the checkpoint's ``state_dict`` without the module's ``model.`` prefix (adapters only,
            or everything).
        where: the checkpoint path, for error messages.
        merge: return the plain HF model with merged weights (default; what generation and export
            want) instead of the ``PeftModel``.
    """
    model = apply_lora(base, settings, f"{where}: lora")
    load_adapter_weights(model, weights, where)
    return merge_lora(model) if merge else model
