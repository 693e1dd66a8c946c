"""The copy set: which token ids a row may "copy" from its own sequence.

For the row predicting position t+1 of sequence b, C = distinct ids at eligible positions s <= t of
the same sequence (the input at t included), optionally only the last ``window`` positions, minus the
gold token. Eligible: attention_mask[b, s] == 1 and, with ``context="response"``, labels[b, s] is not
ignored. Built per sequence (never across a flattened batch) and without assuming a pad id.

Distinctness without a [rows, V] mask: position s represents its token for row t iff it is the latest
eligible occurrence of that token at or before t, i.e. ``next_occurrence[b, s] > t``. With a window,
the latest occurrence is the only one that can be inside it, so the same test holds.
"""

from __future__ import annotations

import torch
from torch import Tensor


def next_eligible_occurrence(input_ids: Tensor, eligible: Tensor) -> Tensor:
    """For each position, the next eligible position holding the same token (or T if none).

    Args:
        input_ids: ``[B, T]`` token ids.
        eligible: ``[B, T]`` bool.

    Returns:
        ``[B, T]`` int64; entries at ineligible positions are meaningless (callers mask them).
    """
    B, T = input_ids.shape
    pos = torch.arange(T, device=input_ids.device).expand(B, T)
    # Sort eligible positions by (token, position); ineligible ones go to the end.
    big = input_ids.max().clamp_min(0).to(torch.int64) + 1 if input_ids.numel() else torch.tensor(1)
    token_key = torch.where(eligible, input_ids.to(torch.int64), big)
    key = token_key * T + pos
    order = key.argsort(dim=1)
    sorted_tok = token_key.gather(1, order)
    sorted_pos = order
    nxt = torch.full((B, T), T, dtype=torch.int64, device=input_ids.device)
    if T > 1:
        same = (sorted_tok[:, 1:] == sorted_tok[:, :-1]) & (sorted_tok[:, :-1] != big)
        follow = torch.where(same, sorted_pos[:, 1:], torch.full_like(sorted_pos[:, 1:], T))
        nxt.scatter_(1, sorted_pos[:, :-1], follow)
    return nxt


class CopySetIndex:
    """Per-sequence precomputation; ``rows(...)`` yields candidates and a mask for a chunk of rows."""

    def __init__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        labels: Tensor,
        ignore_index: int,
        context: str,
        window: int | None,
    ) -> None:
        eligible = torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is not None:
            eligible &= attention_mask.bool()
        if context == "response":
            eligible &= labels != ignore_index
        self.input_ids = input_ids
        self.eligible = eligible
        self.next_occ = next_eligible_occurrence(input_ids, eligible)
        self.window = window
        self.positions = torch.arange(input_ids.shape[1], device=input_ids.device)

    def rows(self, batch_idx: Tensor, time_idx: Tensor, gold: Tensor) -> tuple[Tensor, Tensor]:
        """Candidates of a chunk of rows.

        Args:
            batch_idx: ``[R]`` sequence of each row.
            time_idx: ``[R]`` position t of each row (predicting t+1).
            gold: ``[R]`` gold token of each row.

        Returns:
            ``(cand [R, T] int64, mask [R, T] bool)``: C of row r = {cand[r, s] : mask[r, s]}, each id once.
        """
        cand = self.input_ids[batch_idx]
        t = time_idx[:, None]
        s = self.positions[None, :]
        mask = self.eligible[batch_idx] & (s <= t) & (self.next_occ[batch_idx] > t) & (cand != gold[:, None])
        if self.window is not None:
            mask &= s > t - self.window
        return cand.to(torch.int64), mask
