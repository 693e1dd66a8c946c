"""Finding the Hugging Face causal LM (and its tokenizer) inside a user's LightningModule.

Shared by the callbacks (regularizer attachment, generation eval): both must locate the model the
user wraps without asking the user to change their code.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn


def _is_causal_lm(module: nn.Module) -> bool:
    # A causal LM in the HF sense: a PreTrainedModel with an output embedding (an LM head).
    # Checked by duck typing so that peft-wrapped or torch.compile'd models still qualify.
    get_out = getattr(module, "get_output_embeddings", None)
    if get_out is None or not callable(getattr(module, "generate", None)):
        return False
    try:
        return get_out() is not None
    except (NotImplementedError, AttributeError):
        return False


def _peft_base(module: nn.Module) -> nn.Module | None:
    """The HF model inside a ``peft`` ``PeftModel`` (None for anything else; peft is not imported)."""
    get_base = getattr(type(module), "get_base_model", None)
    return get_base(module) if callable(get_base) else None


def find_causal_lm(root: nn.Module, attr: str | None = None) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, model)`` of the HF causal LM inside ``root``.

    The outermost candidate wins: for a ``peft`` ``PeftModel`` (LoRA) that is the ``PeftModel``
    itself, the module the user's ``training_step`` calls; it forwards ``get_output_embeddings()``,
    ``get_decoder()`` and ``generate()`` to the wrapped model, whose layers carry the adapters.

    Args:
        root: usually the LightningModule.
        attr: dotted attribute path (e.g. ``"model"`` or ``"backbone.lm"``) when the user names it.

    Raises:
        ValueError: no causal LM found, the named attribute is missing or not a causal LM, or several
            candidates exist and ``attr`` was not given.
    """
    if attr is not None:
        obj: Any = root
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(
                    f"{type(root).__name__} has no attribute {attr!r} (missing part {part!r}); "
                    "pass the dotted path of your Hugging Face causal LM as `model_attr`."
                )
            obj = getattr(obj, part)
        if not isinstance(obj, nn.Module) or not _is_causal_lm(obj):
            raise ValueError(
                f"{type(root).__name__}.{attr} is a {type(obj).__name__}, not a Hugging Face causal LM "
                "(a PreTrainedModel with an LM head and `generate`)."
            )
        return attr, obj

    if _is_causal_lm(root):
        return "", root
    found: list[tuple[str, nn.Module]] = []
    for name, module in root.named_modules():
        if name and _is_causal_lm(module):
            # Skip submodules of a candidate already found (outermost model wins).
            if any(name.startswith(prev + ".") for prev, _ in found):
                continue
            found.append((name, module))
    # A model also registered under its own name next to the PeftModel wrapping it (``self.backbone =
    # lm; self.model = get_peft_model(lm, ...)``): named_modules yields it once, under the first name,
    # so the prefix test above misses it. The wrapper is the one that runs with the adapters.
    wrapped = {id(_peft_base(m)) for _, m in found if _peft_base(m) is not None}
    found = [(n, m) for n, m in found if id(m) not in wrapped]
    if not found:
        raise ValueError(
            f"No Hugging Face causal LM found inside {type(root).__name__}: the module needs an attribute "
            "holding a transformers model with an LM head (e.g. AutoModelForCausalLM)."
        )
    if len(found) > 1:
        names = ", ".join(repr(n) for n, _ in found)
        raise ValueError(
            f"Several causal LMs found inside {type(root).__name__} ({names}); choose one with "
            "`model_attr=...`."
        )
    return found[0]


def find_tokenizer(pl_module: Any, trainer: Any = None) -> Any | None:
    """Best-effort lookup of a tokenizer: the module's, then the datamodule's."""
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        tok = getattr(owner, "tokenizer", None) if owner is not None else None
        if tok is not None:
            return tok
    return None


def model_device(model: nn.Module):
    """Device of a module's first parameter (CPU for a parameterless module)."""
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
