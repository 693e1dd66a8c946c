"""Entropy-aware losses: the one-pass kernel, the regularizers, and the composed loss."""

from .loss import EntropyRegularizedLoss, LossOutput
from .regularizers import (
    REGULARIZERS,
    AntiCopyPenalty,
    ConfidencePenalty,
    ContrastiveToken,
    EntropyFloor,
    LabelSmoothing,
    Regularizer,
    TailMassFloor,
)

__all__ = [
    "EntropyRegularizedLoss",
    "LossOutput",
    "Regularizer",
    "TailMassFloor",
    "EntropyFloor",
    "AntiCopyPenalty",
    "ConfidencePenalty",
    "LabelSmoothing",
    "ContrastiveToken",
    "REGULARIZERS",
]
