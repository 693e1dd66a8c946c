"""Entropy-aware regularizers as row-wise functions of per-token statistics.

Each regularizer maps the per-token statistics of one chunk of rows (a dict of ``[R]`` float tensors,
see ``STAT_KEYS`` in ``stats.py``) to a per-token penalty ``[R]``. Because every penalty is row-wise,
the loss can compute the penalty and its gradient chunk by chunk inside one pass over the vocabulary
(``stats.py``): autograd on the tiny ``[R]`` stat vectors gives the upstream weights, and the
closed-form vocabulary gradient does the rest.

A regularizer declares which statistics it reads (``requires``) so that the kernel only computes what
is used (top-k, copy gathers and unlikelihood are not free).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_weight(name: str, value: float, what: str = "weight") -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: {what} must be a finite number >= 0, got {value!r}")
    return value


class Regularizer:
    """Base class: a weighted, row-wise penalty on per-token statistics.

    Subclasses set ``name`` (the metric key), ``requires`` (stat keys) and implement ``penalty``.
    """

    name: str = "regularizer"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = _check_weight(type(self).__name__, weight)

    def requires(self) -> set[str]:
        raise NotImplementedError

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        """Per-token penalty (before ``weight``).

        Args:
            stats: dict of ``[R]`` float tensors keyed by stat name.

        Returns:
            ``[R]`` penalty.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
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

    def __init__(self, top_k: int = 1, floor: float = 0.1, weight: float = 1.0) -> None:
        super().__init__(weight)
        if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
            raise ValueError(f"TailMassFloor: top_k must be an integer >= 1, got {top_k!r}")
        floor = _check_weight("TailMassFloor", floor, "floor")
        if floor > 1:
            raise ValueError(f"TailMassFloor: floor is a probability mass and must be <= 1, got {floor!r}")
        self.top_k = int(top_k)
        self.floor = floor

    def requires(self) -> set[str]:
        return {f"tail@{self.top_k}"}

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return torch.relu(self.floor - stats[f"tail@{self.top_k}"])


class EntropyFloor(Regularizer):
    """Hinge on the predictive entropy: ``relu(min_entropy - H)`` (nats).

    Args:
        min_entropy: entropy (nats, >= 0) below which a position is penalised.
        weight: multiplier (>= 0).
    """

    name = "entropy_floor"

    def __init__(self, min_entropy: float = 0.5, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.min_entropy = _check_weight("EntropyFloor", min_entropy, "min_entropy")

    def requires(self) -> set[str]:
        return {"entropy"}

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return torch.relu(self.min_entropy - stats["entropy"])


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

    def __init__(self, weight: float = 1.0, mode: str = "unlikelihood", eps: float = 1e-6) -> None:
        super().__init__(weight)
        if mode not in ("unlikelihood", "mass"):
            raise ValueError(f"AntiCopyPenalty: mode must be 'unlikelihood' or 'mass', got {mode!r}")
        if not 0 < float(eps) < 1:
            raise ValueError(f"AntiCopyPenalty: eps must be in (0, 1), got {eps!r}")
        self.mode = mode
        self.eps = float(eps)

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


class LabelSmoothing(Regularizer):
    """Label smoothing as an additive term: ``(1-eps) CE + eps * CE_uniform = CE + eps * (CE_uniform - CE)``.

    ``CE_uniform = lse - mean_j z_j`` is the cross-entropy against the uniform distribution, matching
    ``F.cross_entropy(label_smoothing=epsilon)``.

    Args:
        epsilon: smoothing in [0, 1]; it is this term's weight.
    """

    name = "label_smoothing"

    def __init__(self, epsilon: float = 0.1) -> None:
        epsilon = _check_weight("LabelSmoothing", epsilon, "epsilon")
        if epsilon > 1:
            raise ValueError(f"LabelSmoothing: epsilon must be <= 1, got {epsilon!r}")
        super().__init__(epsilon)
        self.epsilon = epsilon

    def requires(self) -> set[str]:
        return {"smooth"}

    def penalty(self, stats: dict[str, Tensor]) -> Tensor:
        return stats["smooth"] - stats["ce"]


REGULARIZERS = {
    cls.name: cls for cls in (TailMassFloor, EntropyFloor, AntiCopyPenalty, ConfidencePenalty, LabelSmoothing)
}
