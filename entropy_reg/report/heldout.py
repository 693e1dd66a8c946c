"""Teacher-forced evaluation on held-out text: perplexity, rep/l, wrep/l, and the DITTO probe.

Everything is kept *per text* (sums and counts, not ratios) so that the bootstrap can resample texts
and recompute the pooled ratios: perplexity is ``exp(sum CE / sum tokens)`` over the whole set (token
mean, as in training's val perplexity), rep/l is hits / scored positions over the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from entropy_reg.data.formatting import IGNORE_INDEX
from entropy_reg.metrics import human_rep_l, rep_l, self_reinforcement_probe, wrep_l


@dataclass
class HeldoutStats:
    """Per-text sums for one model: CE sum, predicted tokens, and rep/l, wrep/l, human-rep/l hits."""

    ce_sum: np.ndarray
    n_tokens: np.ndarray
    rep_hits: np.ndarray
    wrep_hits: np.ndarray
    human_hits: np.ndarray
    window: int

    def perplexity(self) -> float:
        return float(np.exp(self.ce_sum.sum() / self.n_tokens.sum()))


def encode_heldout(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, cut to ``max_length``; texts with < 2 tokens (nothing to predict) dropped."""
    rows = [list(tokenizer(text, add_special_tokens=True)["input_ids"])[:max_length] for text in texts]
    return [r for r in rows if len(r) >= 2]


@torch.no_grad()
def teacher_forced(model: Any, rows: list[list[int]], batch_size: int, window: int = 16) -> HeldoutStats:
    """Forward the held-out rows in batches (no grad) and collect per-text sums."""
    if not rows:
        raise ValueError("no held-out text has at least 2 tokens; perplexity needs text")
    device = next(model.parameters()).device
    n = len(rows)
    ce, cnt = np.zeros(n), np.zeros(n)
    rep, wrep, human = np.zeros(n), np.zeros(n), np.zeros(n)
    order = sorted(range(n), key=lambda i: len(rows[i]))  # similar lengths per batch: little padding
    for start in range(0, n, batch_size):
        batch = order[start : start + batch_size]
        width = max(len(rows[i]) for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for k, i in enumerate(batch):  # right padding: position ids stay 0..L-1 for every row
            ids[k, : len(rows[i])] = torch.tensor(rows[i])
            labels[k, : len(rows[i])] = torch.tensor(rows[i])
            mask[k, : len(rows[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        token_ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
        )
        for k, i in enumerate(batch):
            length = len(rows[i])
            lg, lb = logits[k : k + 1, :length], labels[k : k + 1, :length]
            scored = length - 1
            ce[i] = float(token_ce[k, :scored].sum())
            cnt[i] = scored
            # metrics.rep_l & co. return shares over scored positions; times the count gives hits, so
            # that pooled ratios over any resampled set of texts can be formed.
            rep[i] = rep_l(lg, lb, l=window) * scored
            wrep[i] = wrep_l(lg, lb, l=window) * scored
            human[i] = human_rep_l(lb, l=window) * scored
    return HeldoutStats(ce, cnt, rep, wrep, human, window)


def run_probe(model: Any, tokenizer: Any, sentences: list[list[int]], n_repeats: int) -> list[dict[str, Any]]:
    """One :func:`self_reinforcement_probe` result per sentence (kept apart for the bootstrap)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    prefix = [int(bos)] if bos is not None else None
    usable = [s for s in sentences if len(s) >= (1 if prefix else 2)]
    return [self_reinforcement_probe(model, s, n_repeats=n_repeats, prefix_ids=prefix) for s in usable]
