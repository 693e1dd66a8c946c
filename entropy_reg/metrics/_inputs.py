"""Input normalisation shared by the metric functions.

Metrics accept token-id sequences as lists/tuples of ints, 1-D tensors or 1-D numpy arrays, and a
*collection* of such sequences as a list/tuple or a 2-D tensor (rows). Everything is turned into plain
``list[list[int]]`` once, so the n-gram code below is simple Python over small integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def as_id_list(seq: Any, what: str = "sequence") -> list[int]:
    """One token-id sequence -> ``list[int]``.

    Raises:
        ValueError: not 1-D, or the items are not integers.
    """
    if isinstance(seq, torch.Tensor | np.ndarray):
        if seq.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got a tensor/array of shape {tuple(seq.shape)}")
        return [int(x) for x in seq.tolist()]
    if isinstance(seq, str | bytes) or not isinstance(seq, Sequence):
        raise ValueError(f"{what} must be a list of token ids or a 1-D tensor, got {type(seq).__name__}")
    out = []
    for x in seq:
        if isinstance(x, bool) or not isinstance(x, int | np.integer):
            raise ValueError(f"{what} must contain integer token ids, found {x!r} ({type(x).__name__})")
        out.append(int(x))
    return out


def as_id_lists(sequences: Any) -> list[list[int]]:
    """A collection of sequences -> ``list[list[int]]``.

    Raises:
        ValueError: empty collection, or a single flat sequence passed where a collection is expected.
    """
    if isinstance(sequences, torch.Tensor | np.ndarray):
        if sequences.ndim != 2:
            raise ValueError(
                f"a tensor of sequences must be 2-D [num_sequences, length], got shape {tuple(sequences.shape)}"
            )
        rows = list(sequences)
    elif isinstance(sequences, str | bytes) or not isinstance(sequences, Sequence):
        raise ValueError(f"expected a list of token-id sequences, got {type(sequences).__name__}")
    else:
        rows = list(sequences)
    if not rows:
        raise ValueError("expected at least one sequence, got an empty collection")
    if all(isinstance(r, int | np.integer) and not isinstance(r, bool) for r in rows):
        raise ValueError(
            "expected a list of sequences but got a flat list of ints; wrap a single sequence as [ids]"
        )
    return [as_id_list(r, what=f"sequence {i}") for i, r in enumerate(rows)]


def check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
