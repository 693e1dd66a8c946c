"""Teacher-forced repetition metrics (Welleck et al. 2019): rep/l, wrep/l and human rep/l.

Shift convention (HF style, same as the training loss): ``labels`` has the shape of ``input_ids``; the
logits at position ``t`` predict ``labels[:, t + 1]``. So a scored position is a label index
``j in 1..T-1`` with ``labels[:, j] != ignore_index``; its prediction is ``argmax(logits[:, j - 1])`` and
its context is the *previous l gold tokens* ``labels[:, j-l:j]`` (window clipped at the sequence start,
ignored entries such as prompt or padding dropped from the window).

- rep/l: share of scored positions whose prediction is in the context window.
- wrep/l: share of scored positions whose prediction is in the window *and* differs from the gold token
  (wrong repetitions); same denominator as rep/l.
- human rep/l: share of scored positions whose gold token is in the window (the data's own rate).
"""

from __future__ import annotations

import torch


def _validate(logits: torch.Tensor | None, labels: torch.Tensor, l: int) -> None:  # noqa: E741
    if isinstance(l, bool) or not isinstance(l, int) or l < 1:
        raise ValueError(f"l (context window) must be a positive int, got {l!r}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 2:
        raise ValueError(f"labels must be a [B, T] tensor, got {getattr(labels, 'shape', type(labels))}")
    if logits is not None:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
            raise ValueError(f"logits must be a [B, T, V] tensor, got {getattr(logits, 'shape', type(logits))}")
        if logits.shape[:2] != labels.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [B, T]")


def _in_window(tokens: torch.Tensor, labels: torch.Tensor, l: int, ignore_index: int) -> torch.Tensor:  # noqa: E741
    """[B, T-1] bool: ``tokens[:, j-1]`` occurs in ``labels[:, j-l:j]`` (valid entries), for j = 1..T-1."""
    B, T = labels.shape
    hit = torch.zeros(B, T - 1, dtype=torch.bool, device=labels.device)
    for k in range(1, min(l, T - 1) + 1):  # loop over the window offset, vectorised over B and T
        # For label index j (column j-1 of `hit`), the k-th previous gold token is labels[:, j-k];
        # only j >= k have one.
        prev = labels[:, : T - k]  # prev[:, i] = labels[:, i], pairs with j = i + k
        cand = tokens[:, k - 1 :]  # cand column i corresponds to j - 1 = i + k - 1
        match = (cand == prev) & (prev != ignore_index)
        hit[:, k - 1 :] |= match
    return hit


def _scored(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    mask = labels[:, 1:] != ignore_index
    if not bool(mask.any()):
        raise ValueError("no scored position: every label after the shift equals ignore_index")
    return mask


def rep_l(logits: torch.Tensor, labels: torch.Tensor, l: int = 16, ignore_index: int = -100) -> float:  # noqa: E741
    """rep/l: share of scored positions whose argmax is among the previous ``l`` gold tokens.

    Args:
        logits: [B, T, V]. labels: [B, T] (HF style, -100 ignored). l: window length.
    """
    _validate(logits, labels, l)
    mask = _scored(labels, ignore_index)
    pred = logits[:, :-1].argmax(dim=-1)  # [B, T-1], pred[:, j-1] predicts labels[:, j]
    hit = _in_window(pred, labels, l, ignore_index)
    return float((hit & mask).sum() / mask.sum())


def wrep_l(logits: torch.Tensor, labels: torch.Tensor, l: int = 16, ignore_index: int = -100) -> float:  # noqa: E741
    """wrep/l: share of scored positions whose argmax is in the window and is not the gold token."""
    _validate(logits, labels, l)
    mask = _scored(labels, ignore_index)
    pred = logits[:, :-1].argmax(dim=-1)
    hit = _in_window(pred, labels, l, ignore_index) & (pred != labels[:, 1:])
    return float((hit & mask).sum() / mask.sum())


def human_rep_l(labels: torch.Tensor, l: int = 16, ignore_index: int = -100) -> float:  # noqa: E741
    """human rep/l: share of scored gold tokens that occur among the previous ``l`` gold tokens."""
    _validate(None, labels, l)
    mask = _scored(labels, ignore_index)
    hit = _in_window(labels[:, 1:], labels, l, ignore_index)
    return float((hit & mask).sum() / mask.sum())
