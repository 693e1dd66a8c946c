"""Entropy-aware losses: the one-pass kernel, the regularizers, and the composed loss.

Imports only ``entropy_reg.validation`` (no Lightning, no W&B, no transformers).
"""

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
