"""Reading and rewriting one forward call of a Hugging Face causal LM from hooks.

The :class:`~entropy_reg.callbacks.EntropyRegularizer` callback (and ``entropy_reg.hf``'s loss) replaces the model's own cross-entropy
by the one-pass CE + regularizers without touching the user's code: a forward pre-hook takes ``labels``
out of the call (so the model computes no loss), a forward hook puts the one-pass loss into the output.
This module holds the parts that know how a transformers causal LM is called and what it returns:

- :class:`CallArgs` reads (and removes) an argument given by keyword or by position;
- :func:`plain_ce_blocker` / :func:`hidden_path_blocker` say why the model's loss is not the plain
  shifted CE of its logits, or why its logits are not ``lm_head(hidden)`` (None when they are);
- :class:`HeadBypass` makes the LM head hand its input (the final hidden states) over instead of
  multiplying it out to ``[B, T, V]`` logits;
- :func:`output_logits`, :func:`with_loss` read the logits of an output and put a loss into it;
- :func:`loss_uses` tells whether a returned loss was computed from a given tensor.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from torch import Tensor

from entropy_reg.data.formatting import IGNORE_INDEX

# Config attributes of HF models whose logits are not `lm_head(hidden)`: for those, the hidden-state
# path would silently compute a different loss, so they take the logits path.
LOGIT_TRANSFORM_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
# Strategies that shard parameters: the LM-head weight outside the model's own forward is a shard.
SHARDING_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def logit_transform(model: nn.Module) -> str | None:
    """``"attr=value"`` of the first config setting by which ``model``'s logits are not plain
    ``lm_head(hidden)`` (soft-capping, scaling); None when there is none."""
    config = getattr(model, "config", None)
    for attr in LOGIT_TRANSFORM_ATTRS:
        value = getattr(config, attr, None)
        if value is not None and value != 1:
            return f"{attr}={value}"
    return None


class CallArgs:
    """Positions of a model's forward arguments, so that hooks read ``labels`` given either way."""

    def __init__(self, model: nn.Module) -> None:
        try:
            params = list(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):  # a C-implemented or oddly wrapped forward: keywords only
            params = []
        self._position = {name: i for i, name in enumerate(params)}

    def get(self, args: tuple, kwargs: dict, name: str) -> Any:
        if name in kwargs:
            return kwargs[name]
        i = self._position.get(name)
        return args[i] if i is not None and i < len(args) else None

    def without(self, args: tuple, kwargs: dict, name: str) -> tuple[tuple, dict]:
        """``(args, kwargs)`` with the argument ``name`` removed (set to None when given by position)."""
        if name in kwargs:
            return args, {k: v for k, v in kwargs.items() if k != name}
        i = self._position.get(name)
        if i is not None and i < len(args):
            args = args[:i] + (None,) + args[i + 1 :]
        return args, kwargs


def plain_ce_blocker(model: nn.Module, ignore_index: int) -> str | None:
    """Why the model's own loss is not transformers' shifted CE of the logits it returns (None if it is).

    Checked: the model's ``loss_function`` is ``ForCausalLMLoss`` (not a custom one), its config has no
    logit transform (soft-capping, scaling: to stay on the safe side, such models keep their own loss),
    and ``ignore_index`` is the ``-100`` the model's CE ignores.
    """
    from transformers.loss.loss_utils import LOSS_MAPPING

    loss_function = getattr(model, "loss_function", None)
    if loss_function is not LOSS_MAPPING["ForCausalLM"]:
        name = getattr(loss_function, "__qualname__", type(loss_function).__name__)
        return f"the model's loss_function is {name}, not transformers' ForCausalLMLoss"
    transform = logit_transform(model)
    if transform is not None:
        return f"the model transforms its logits ({transform})"
    if ignore_index != IGNORE_INDEX:
        return f"loss.ignore_index is {ignore_index} while the model's CE ignores {IGNORE_INDEX}"
    return None


def _call_getter(model: nn.Module, name: str) -> Any:
    getter = getattr(model, name, None)
    try:
        return getter() if getter is not None else None
    except (NotImplementedError, AttributeError):
        return None


def hidden_path_blocker(model: nn.Module, strategy: Any = None, needs_decoder: bool = True) -> str | None:
    """Why ``model``'s loss cannot be computed from its final hidden states and LM-head weight chunk by
    chunk (None when it can): the one test of the module, the callback and the objectives.

    The logits must be exactly ``lm_head(hidden)``: a plain ``nn.Linear`` head (LoRA on the head makes it
    something else), no logit transform, a strategy that does not shard the head's weight (FSDP,
    DeepSpeed), and (``needs_decoder``: the caller runs the decoder itself) a ``get_decoder()``.
    Duck-typed, so a peft-wrapped model qualifies.
    """
    if type(strategy).__name__ in SHARDING_STRATEGIES:
        return f"{type(strategy).__name__} shards the LM-head weight"
    head = _call_getter(model, "get_output_embeddings")
    if type(head) is not nn.Linear:
        return f"the LM head is a {type(head).__name__}, not a plain nn.Linear"
    transform = logit_transform(model)
    if transform is not None:
        return f"the model transforms its logits ({transform})"
    if needs_decoder and _call_getter(model, "get_decoder") is None:
        return "the model has no get_decoder()"
    return None


class HeadBypass:
    """While installed, ``head(hidden)`` records ``hidden`` and returns empty ``[..., 0]`` logits.

    The model's forward then runs its decoder as usual and builds no ``[B, T, V]`` logits; the loss is
    computed from the recorded hidden states and ``head.weight`` chunk by chunk. Installing sets the
    head's instance attribute ``forward`` (the class is untouched); :meth:`remove` deletes it.
    """

    def __init__(self, head: nn.Linear) -> None:
        self.head = head
        self.hidden: Tensor | None = None

    def install(self) -> None:
        self.hidden = None
        self.head.forward = self._record

    def remove(self) -> None:
        vars(self.head).pop("forward", None)

    def _record(self, hidden: Tensor) -> Tensor:
        if self.hidden is not None:
            raise RuntimeError(
                "EntropyRegularizer(hidden_path=True): the LM head ran twice in one model call; the hidden "
                "path needs logits = lm_head(final hidden states) once. Use hidden_path=False."
            )
        self.hidden = hidden
        return hidden.new_empty(*hidden.shape[:-1], 0)


def output_logits(output: Any, had_labels: bool) -> Tensor | None:
    """The ``logits`` of a model output (a ``ModelOutput``, a dict, or a ``return_dict=False`` tuple)."""
    if isinstance(output, Mapping):  # ModelOutput is an OrderedDict
        return output.get("logits")
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        # return_dict=False: (loss, logits, ...) when the model computed a loss, else (logits, ...).
        return output[1] if had_labels and len(output) > 1 else output[0]
    return getattr(output, "logits", None)


def with_loss(output: Any, loss: Tensor, drop_logits: bool) -> Any:
    """A copy of ``output`` whose ``loss`` is ``loss`` (and ``logits`` None if ``drop_logits``).

    A ``ModelOutput`` is rebuilt rather than assigned to, so that ``loss`` comes first in its keys and
    ``to_tuple()``, as when the model computed the loss itself; a tuple gets ``loss`` prepended.
    """
    if dataclasses.is_dataclass(output) and isinstance(output, Mapping):
        fields = {f.name for f in dataclasses.fields(output)}
        if "loss" not in fields:
            raise RuntimeError(
                f"EntropyRegularizer: the causal LM returned a {type(output).__name__}, which has no `loss` "
                "field to put the one-pass loss into; pass one_pass=False."
            )
        values = {**dict(output), "loss": loss}
        if drop_logits:
            values["logits"] = None
        return type(output)(**values)
    if isinstance(output, Mapping):
        return {"loss": loss, **output, **({"logits": None} if drop_logits else {})}
    if isinstance(output, tuple):
        return (loss, None, *output[1:]) if drop_logits else (loss, *output)
    raise RuntimeError(
        f"EntropyRegularizer: cannot put a loss into a causal LM output of type {type(output).__name__}; "
        "pass one_pass=False."
    )


def loss_uses(root: Tensor, part: Tensor) -> bool:
    """Whether autograd reaches ``part`` from ``root`` (``root`` was computed from ``part``).

    Breadth-first from ``root``: a loss like ``out.loss`` or ``out.loss + aux`` is found within a few
    nodes; only a loss that does not use ``part`` walks its whole graph.
    """
    if root is part:
        return True
    target, start = part.grad_fn, root.grad_fn
    if target is None or start is None:
        return False
    seen = {start}
    queue = collections.deque([start])
    while queue:
        fn = queue.popleft()
        if fn is target:
            return True
        for nxt, _ in fn.next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return False


def num_items(value: Tensor | float | None) -> float | None:
    """HF's ``num_items_in_batch`` as the loss' ``num_tokens`` (None: the local token count divides)."""
    if value is None:
        return None
    n = float(value.reshape(-1)[0]) if isinstance(value, Tensor) else float(value)
    return n if n > 0 else None

