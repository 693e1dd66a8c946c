"""Lightning callbacks, one per file: regularizer attachment, generation evaluation, progress lines.

May import ``losses``, ``objectives``, ``models``, ``generation``, ``metrics``, ``training`` and Lightning;
nothing imports it but ``module``/``cli`` users. ``CoefficientSchedule`` is re-exported from ``training``.
"""

from entropy_reg.callbacks.entropy_regularizer import EntropyRegularizer
from entropy_reg.callbacks.generation_eval import GenerationEval
from entropy_reg.callbacks.progress import ProgressLog
from entropy_reg.training.schedule import CoefficientSchedule

__all__ = ["EntropyRegularizer", "CoefficientSchedule", "GenerationEval", "ProgressLog"]
