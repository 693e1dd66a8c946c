"""Lightning callbacks: regularizer attachment, coefficient schedule, generation eval, progress lines."""

from entropy_reg.callbacks.entropy_regularizer import EntropyRegularizer
from entropy_reg.callbacks.final_checkpoint import FinalCheckpoint
from entropy_reg.callbacks.progress import ProgressLog
from entropy_reg.callbacks.schedule import CoefficientSchedule

__all__ = ["EntropyRegularizer", "CoefficientSchedule", "FinalCheckpoint", "ProgressLog"]

try:  # GenerationEval lands separately (entropy_reg/callbacks/generation_eval.py)
    from entropy_reg.callbacks.generation_eval import GenerationEval  # noqa: F401
except ModuleNotFoundError as exc:  # only its own absence is tolerated, not a missing dependency inside it
    if exc.name != "entropy_reg.callbacks.generation_eval":
        raise
else:
    __all__.append("GenerationEval")
