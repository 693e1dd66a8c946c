"""Sequence-level objectives: losses that build their own batch and run their own forward pass.

- :class:`RepetitionConsistency` (DITTO, Xu et al. 2022): pseudo-repetitive sequences; a token's
  probability must not grow from one copy of a sentence to the next.
- :class:`SequenceUnlikelihood` (Welleck et al. 2019): unlikelihood on the n-gram repeats of the
  model's own greedy continuations.

Pass them as ``objectives=[...]`` to ``CausalLMModule``, ``EntropyRegularizer`` or
``EntropyRegularizedTrainerLoss``; :class:`ObjectiveRunner` is what those entry points share.
"""

from .base import Objective, ObjectiveContext, ObjectiveOutput
from .repetition_consistency import RepetitionConsistency
from .runner import ObjectiveRunner, build_objectives
from .sequence_unlikelihood import SequenceUnlikelihood

__all__ = [
    "Objective",
    "ObjectiveContext",
    "ObjectiveOutput",
    "ObjectiveRunner",
    "RepetitionConsistency",
    "SequenceUnlikelihood",
    "build_objectives",
]
