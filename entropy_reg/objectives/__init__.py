"""Sequence-level objectives: losses that build their own batch and run their own forward pass.

- :class:`RepetitionConsistency` (DITTO, Xu et al. 2022): pseudo-repetitive sequences; a token's
  probability must not grow from one copy of a sentence to the next.
- :class:`SequenceUnlikelihood` (Welleck et al. 2019): unlikelihood on the n-gram repeats of the
  model's own greedy continuations.
- :class:`ReferenceAnchor`: KL to the model before fine-tuning on the model's own continuations only.
- :class:`LoopEntropyFloor`: copies n >= 2 of a repeated sentence pay when their entropy (or tail
  mass) falls below copy 1's: the entropy floor where the black hole forms.

Pass them as ``objectives=[...]`` to ``CausalLMModule``, ``EntropyRegularizer`` or
``EntropyRegularizedTrainerLoss``; :class:`ObjectiveRunner` is what those entry points share. May import
``losses``, ``models``, ``generation``, ``training`` and ``validation``; no Lightning.
"""

from .base import Objective, ObjectiveContext, ObjectiveOutput
from .loop_entropy_floor import LoopEntropyFloor
from .reference_anchor import ReferenceAnchor
from .repetition_consistency import RepetitionConsistency
from .runner import ObjectiveRunner, build_objectives
from .sequence_unlikelihood import SequenceUnlikelihood

__all__ = [
    "Objective",
    "ObjectiveContext",
    "ObjectiveOutput",
    "ObjectiveRunner",
    "LoopEntropyFloor",
    "ReferenceAnchor",
    "RepetitionConsistency",
    "SequenceUnlikelihood",
    "build_objectives",
]
