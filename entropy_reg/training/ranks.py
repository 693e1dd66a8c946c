"""Rank-zero warnings without Lightning: one warning per job, not one per process."""

from __future__ import annotations

import os
import warnings


def global_rank() -> int:
    """This process' rank: ``torch.distributed`` when initialised, else ``RANK`` / ``LOCAL_RANK`` (0 if unset)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(key)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 2) -> None:
    """``warnings.warn`` on rank 0 only (what Lightning's ``rank_zero_warn`` does, for code without it)."""
    if global_rank() == 0:
        warnings.warn(message, category, stacklevel=stacklevel + 1)
