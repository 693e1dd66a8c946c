"""Batching SFT rows: padding collation and the resumable, rank-aware sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data.distributed import DistributedSampler

from entropy_reg.data.formatting import IGNORE_INDEX
from entropy_reg.errors import UserError


def resolve_pad_id(tokenizer) -> int:
    """The pad id for batching: ``pad_token_id``, else ``eos_token_id`` (padding is masked anyway)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise UserError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")


@dataclass
class SFTCollator:
    """Right-pads ``input_ids``/``labels`` rows to the longest in the batch.

    Returns ``{input_ids, attention_mask, labels}`` LongTensors; padding has attention 0 and label -100.
    A dataclass (not a closure) so DataLoader workers can pickle it.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class ResumableSampler(DistributedSampler):
    """Training order as a pure function of ``(seed, epoch)``, sharded over ranks, resumable mid-epoch.

    - The order of epoch ``e`` is ``randperm(n, seed + e)`` (DistributedSampler's), whatever happened
      before, so a run resumed at epoch ``e`` sees the same order as an uninterrupted one. (A seeded
      ``RandomSampler`` generator would instead restart at epoch 0's order after a resume.)
    - ``skip`` drops the first samples of this rank's share once (the batches a restored run already
      trained on in the current epoch); later epochs start at 0. Lightning 2.x would otherwise
      replay the epoch from its start after a mid-epoch resume.
    - It *is* a ``DistributedSampler``, so Lightning keeps it under DDP instead of replacing it;
      ``num_replicas=1, rank=0`` is plain single-process shuffling.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 skip: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = int(skip)

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


def _batches_done_in_epoch(trainer, n_batches: int) -> int:
    """Batches of the current epoch a restored trainer already trained on (0 when starting an epoch).

    Derived from ``global_step`` and ``current_epoch`` (restored from the checkpoint), not from the loop's
    batch counters, which a checkpoint written in ``on_train_batch_end`` records one batch short.
    Assumes every epoch has ``n_batches`` batches (the optimizer also steps on an epoch's last,
    incomplete accumulation window, as Lightning does).
    """
    if trainer is None or n_batches <= 0:
        return 0
    limit = getattr(trainer, "limit_train_batches", 1.0)
    if isinstance(limit, int) and not isinstance(limit, bool):
        n_batches = min(n_batches, limit)
    elif isinstance(limit, float) and limit != 1.0:
        n_batches = int(n_batches * limit)
    accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1)))
    steps_per_epoch = math.ceil(n_batches / accumulate) if n_batches else 0
    if not steps_per_epoch:
        return 0
    done_steps = int(trainer.global_step) - int(trainer.current_epoch) * steps_per_epoch
    if 0 < done_steps < steps_per_epoch:
        return done_steps * accumulate
    return 0
