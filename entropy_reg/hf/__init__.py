"""Entropy regularization for ``transformers.Trainer`` and TRL's ``SFTTrainer`` (no Lightning needed).

- :class:`EntropyRegularizedTrainerLoss`: pass as ``compute_loss_func``.
- :class:`EntropyEvalCallback`: generation evaluation (``eval/<decoding>/...``) as a ``TrainerCallback``.
- :func:`attach`: call once on the built trainer; hooks the model for ``input_ids`` and adds the
  callback that logs ``entropy``, ``tail_mass``, ``copy_mass``, ``ce`` and the regularizer terms.

Needs transformers >= 4.46 (``compute_loss_func``); see ``docs/hf_trainer.md``. May import ``losses``,
``objectives``, ``models``, ``generation``, ``metrics`` and ``training``, never Lightning (a test checks).
"""

from entropy_reg.hf.callback import EntropyEvalCallback
from entropy_reg.hf.trainer import Attachment, attach
from entropy_reg.hf.trainer_loss import MIN_TRANSFORMERS, EntropyRegularizedTrainerLoss

__all__ = ["EntropyRegularizedTrainerLoss", "EntropyEvalCallback", "attach", "Attachment", "MIN_TRANSFORMERS"]
