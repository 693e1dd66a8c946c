"""entropy-reg: training-time entropy regularization against low-entropy collapse in LLM fine-tuning."""

from .losses import (
    AntiCopyPenalty,
    ConfidencePenalty,
    EntropyFloor,
    EntropyRegularizedLoss,
    LabelSmoothing,
    LossOutput,
    TailMassFloor,
)

__version__ = "0.1.0"

__all__ = [
    "EntropyRegularizedLoss",
    "LossOutput",
    "TailMassFloor",
    "EntropyFloor",
    "AntiCopyPenalty",
    "ConfidencePenalty",
    "LabelSmoothing",
    "CausalLMModule",
    "SFTDataModule",
    "EntropyRegularizer",
    "CoefficientSchedule",
    "GenerationEval",
]


def __getattr__(name):
    # Lightning-side objects import lazily so that `import entropy_reg` stays light for loss-only users.
    if name == "CausalLMModule":
        from .module import CausalLMModule

        return CausalLMModule
    if name == "SFTDataModule":
        from .data import SFTDataModule

        return SFTDataModule
    if name in ("EntropyRegularizer", "CoefficientSchedule", "GenerationEval"):
        from . import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'entropy_reg' has no attribute {name!r}")
