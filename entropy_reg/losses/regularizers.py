"""Entropy-aware regularizers as row-wise functions of per-token statistics.

Each regularizer maps the per-token statistics of one chunk of rows (a dict of ``[R]`` float tensors,
see ``STAT_KEYS`` in ``stats.py``) to a per-token penalty ``[R]``. Because every penalty is row-wise,
the loss can compute the penalty and its gradient chunk by chunk inside one pass over the vocabulary
(``stats.py``): autograd on the tiny ``[R]`` stat vectors gives the upstream weights, and the
closed-form vocabulary gradient does the rest.

A regularizer declares which statistics it reads (``requires``) so that the kernel only computes what
is used (top-k, copy gathers and unlikelihood are not free).

Parameters are validated whenever they are set, not only in ``__init__``: ``reg.weight = float("nan")``
raises the same ``ValueError`` as ``TailMassFloor(weight=float("nan"))`` (each parameter is a
:class:`_Checked` descriptor), so no attribute path can smuggle a NaN, a negative or an infinite weight
into the loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from entropy_reg.validation import as_integer, check_int, check_nonnegative, check_open_unit, check_unit  # noqa: F401


# Adapters of the shared validators (entropy_reg.validation) to the (owner, value, what) order of _Checked.
def _check_weight(name: str, value: Any, what: str = "weight") -> float:
    return check_nonnegative(name, what, value)


def _check_probability(name: str, value: Any, what: str) -> float:
    return check_unit(name, what, value, "is a probability mass and must be <= 1")


def _check_positive_int(name: str, value: Any, what: str) -> int:
    return check_int(name, what, value, 1)


class _Checked:
    """A regularizer parameter whose every assignment goes through ``check(owner_name, value, attr)``."""

    def __init__(self, check: Callable[[str, Any, str], Any]) -> None:
        self.check = check

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.slot)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, self.check(type(obj).__name__, value, self.name))


class Regularizer:
    """Base class: a weighted, row-wise penalty on per-token statistics.

    Subclasses set ``name`` (the metric key), ``params`` (constructor arguments, for ``repr``),
    ``requires`` (stat keys) and implement ``penalty``.
    """

    name: str = "regularizer"
    params: tuple[str, ...] = ("weight",)
    weight = _Checked(_check_weight)

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def requires(self) -> set[str]:
        raise NotImplementedError

    def check_vocab(self, vocab_size: int) -> None:
        """Called by the loss with the vocabulary size at each call (no-op unless a subclass needs it)."""

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        """Per-token penalty (before ``weight``).

        Args:
            stats: dict of ``[R]`` float tensors keyed by stat name.

        Returns:
            ``[R]`` penalty.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.params)
        return f"{type(self).__name__}({args})"


class TailMassFloor(Regularizer):
    """Hinge on the probability mass outside the top-k: ``relu(floor - tail_k)``.

    Where the model has collapsed (top-k holds almost all mass) this pushes some mass back into the
    tail; where the tail already holds ``floor`` or more it does nothing, so open-ended positions are
    left alone.

    Args:
        top_k: size of the head; the tail is everything outside the k most likely tokens (k >= 1;
            a k at or above the vocabulary size makes the tail empty, and the penalty a constant).
        floor: the tail mass below which the penalty starts, in [0, 1].
        weight: multiplier (>= 0).
    """

    name = "tail_mass_floor"
    params = ("top_k", "floor", "weight")
    top_k = _Checked(_check_positive_int)
    floor = _Checked(_check_probability)

    def __init__(self, top_k: int = 1, floor: float = 0.1, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.top_k = top_k
        self.floor = floor

    def requires(self) -> set[str]:
        return {f"tail@{self.top_k}"}

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return torch.relu(self.floor - stats[f"tail@{self.top_k}"])


class EntropyFloor(Regularizer):
    """Hinge on the predictive entropy: ``relu(min_entropy - H)`` (nats).

    No distribution over V tokens has an entropy above ``ln V``: a ``min_entropy`` above it penalises
    every position, whatever the model does. The loss warns about it at the first call that reveals V.

    Args:
        min_entropy: entropy (nats, >= 0) below which a position is penalised.
        weight: multiplier (>= 0).
    """

    name = "entropy_floor"
    params = ("min_entropy", "weight")
    min_entropy = _Checked(_check_weight)

    def __init__(self, min_entropy: float = 0.5, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.min_entropy = min_entropy
        self._warned: tuple[float, int] | None = None

    def requires(self) -> set[str]:
        return {"entropy"}

    def check_vocab(self, vocab_size: int) -> None:
        ln_v = math.log(vocab_size)
        if self.min_entropy > ln_v and self._warned != (self.min_entropy, vocab_size):
            self._warned = (self.min_entropy, vocab_size)  # once per (value, vocabulary), not per step
            warnings.warn(
                f"EntropyFloor: min_entropy={self.min_entropy:g} nats is above ln V = ln({vocab_size}) = "
                f"{ln_v:.3f} nats, the largest entropy any distribution over this vocabulary can have: "
                f"every position is penalised. Use a value below {ln_v:.3f} (e.g. 0.5-2 nats).",
                UserWarning,
                stacklevel=6,  # check_vocab < _Plan < forward < Module._call_impl < __call__ < caller
            )

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return torch.relu(self.min_entropy - stats["entropy"])


def _check_mode(name: str, value: Any, what: str) -> str:
    if value not in ("unlikelihood", "mass"):
        raise ValueError(f"{name}: {what} must be 'unlikelihood' or 'mass', got {value!r}")
    return value


def _check_open_unit(name: str, value: Any, what: str) -> float:
    return check_open_unit(name, what, value)


class AntiCopyPenalty(Regularizer):
    """Push probability off tokens copied from the context (the copy set, minus the gold token).

    ``mode="unlikelihood"`` (default; token-level unlikelihood, Welleck et al. 2019):
    ``sum_{c in C} -log(max(1 - p_c, eps))``. ``mode="mass"``: the copy mass ``sum_{c in C} p_c``.
    Which tokens form C is set on the loss (``copy_context``, ``copy_window``).

    Args:
        weight: multiplier (>= 0).
        mode: "unlikelihood" or "mass".
        eps: clamp of ``1 - p`` in the unlikelihood (0 < eps < 1).
    """

    name = "anti_copy"
    params = ("weight", "mode", "eps")
    mode = _Checked(_check_mode)
    eps = _Checked(_check_open_unit)

    def __init__(self, weight: float = 1.0, mode: str = "unlikelihood", eps: float = 1e-6) -> None:
        super().__init__(weight)
        self.mode = mode
        self.eps = eps

    def requires(self) -> set[str]:
        return {"unlikelihood"} if self.mode == "unlikelihood" else {"copy"}

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return stats["unlikelihood"] if self.mode == "unlikelihood" else stats["copy"]


class ConfidencePenalty(Regularizer):
    """Pereyra et al. (2017): ``-H`` per token, i.e. reward entropy everywhere.

    Args:
        weight: multiplier (>= 0).
    """

    name = "confidence_penalty"

    def requires(self) -> set[str]:
        return {"entropy"}

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return -stats["entropy"]


def _check_epsilon(name: str, value: Any, what: str) -> float:
    return check_unit(name, what, value, "must be <= 1")


class LabelSmoothing(Regularizer):
    """Label smoothing as an additive term: ``(1-eps) CE + eps * CE_uniform = CE + eps * (CE_uniform - CE)``.

    ``CE_uniform = lse - mean_j z_j`` is the cross-entropy against the uniform distribution, matching
    ``F.cross_entropy(label_smoothing=epsilon)``; with ``-inf`` (masked) logits the uniform
    distribution is over the unmasked tokens (a masked token is not a class).

    Args:
        epsilon: smoothing in [0, 1]; it is this term's weight (``epsilon`` and ``weight`` are one value).
    """

    name = "label_smoothing"
    params = ("epsilon",)
    weight = _Checked(_check_epsilon)

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__(_check_epsilon("LabelSmoothing", epsilon, "epsilon"))

    @property
    def epsilon(self) -> float:
        return self.weight

    @epsilon.setter
    def epsilon(self, value: float) -> None:
        self.weight = _check_epsilon(type(self).__name__, value, "epsilon")

    def requires(self) -> set[str]:
        return {"smooth"}

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return stats["smooth"] - stats["ce"]


def _check_window(name: str, value: Any, what: str) -> int | None:
    return None if value is None else _check_positive_int(name, value, what)


def contrastive_key(window: int | None, context: str = "all") -> str:
    """Stat key of the contrastive-token term with negatives from the last ``window`` inputs (None: all),
    among every attended input (``context="all"``) or the response's only (``"response"``)."""
    return f"ct@{'all' if window is None else window}:{context}"


def parse_contrastive_key(key: str) -> tuple[int | None, str]:
    """``(window, context)`` of a :func:`contrastive_key`."""
    window, context = key[3:].split(":")
    return (None if window == "all" else int(window)), context


def _check_context(name: str, value: Any, what: str) -> str:
    if value not in ("all", "response"):
        raise ValueError(f"{name}: {what} must be 'all' or 'response', got {value!r}")
    return value


class ContrastiveToken(Regularizer):
    """Contrastive token loss (Jiang et al. 2022, "A Simple Contrastive Learning Objective for
    Alleviating Neural Text Degeneration"): ``log(1 + sum_{n in N_t} exp(z_n - z_y))``.

    At the position that predicts label ``y``, the negatives ``N_t`` are the distinct token ids among
    the last ``window`` input tokens the model sees there (``input_ids[t-window+1 .. t]`` for the row
    predicting ``input_ids[t+1]``; prompt included, padding excluded), minus ``y``; the penalty is 0
    where ``N_t`` is empty. It is a softmax cross-entropy of the label against the recent tokens only:
    once the label outranks the repeats the push fades, where unlikelihood keeps pushing ``p(neg) -> 0``
    over the whole vocabulary's normaliser. So it acts where copying competes with the gold token, not
    on every confident position. Mean over label tokens like every regularizer.

    Difference from the reference code (ShaojieJiang/CT-Loss, ``ct_loss.py``): there ``N_t`` is built
    from the *labels* (so copying the prompt is never penalised and padding is never a negative) and a
    repeated id counts once per occurrence; here from ``input_ids`` under the attention mask, prompt
    included (``context="all"``), each id once. ``context="response"`` takes the negatives from the
    response (positions whose label is not ignored) only, as the reference does: the prompt's and chat
    template's tokens are then never pushed down. Where every input token is also a label (no prompt
    masking) and no id repeats in a window the definitions agree (tested).

    Args:
        weight: multiplier (>= 0); the authors use 1.
        window: how many preceding input tokens form the negatives (>= 1; None: the whole sequence so
            far). The authors use 1/8 of the training sequence length (16 for 128 tokens).
        context: ``"all"`` (every attended input, prompt included) or ``"response"`` (inputs whose
            label is not ignored) form the negatives.
    """

    name = "contrastive_token"
    params = ("weight", "window", "context")
    window = _Checked(_check_window)
    context = _Checked(_check_context)

    def __init__(self, weight: float = 1.0, window: int | None = 16, context: str = "all") -> None:
        super().__init__(weight)
        self.window = window
        self.context = context

    def requires(self) -> set[str]:
        return {contrastive_key(self.window, self.context)}

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return stats[contrastive_key(self.window, self.context)]


REGULARIZERS = {
    cls.name: cls
    for cls in (TailMassFloor, EntropyFloor, AntiCopyPenalty, ConfidencePenalty, LabelSmoothing, ContrastiveToken)
}
