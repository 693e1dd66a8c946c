"""What the Lightning module, the Lightning callback and the ``transformers`` loss share: the coefficient
schedule, the statistics window, non-finite steps, rank-zero warnings, resuming, the W&B environment.

No Lightning at import (``entropy_reg.hf`` uses it); may import ``errors``, ``validation`` and ``models``.
"""

from entropy_reg.training.nonfinite import TrainStepLog, drop_gradients, nonfinite_on_any_rank, skip_step_loss
from entropy_reg.training.ranks import rank_zero_warn
from entropy_reg.training.schedule import CoefficientSchedule
from entropy_reg.training.stats_window import StatsWindow
from entropy_reg.training.wandb_env import configure_wandb_env, wandb_api_key_configured, wandb_available

__all__ = [
    "CoefficientSchedule",
    "StatsWindow",
    "TrainStepLog",
    "configure_wandb_env",
    "drop_gradients",
    "nonfinite_on_any_rank",
    "rank_zero_warn",
    "skip_step_loss",
    "wandb_api_key_configured",
    "wandb_available",
]
