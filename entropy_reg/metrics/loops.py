"""Loop detection, stopping statistics and the per-continuation collapse class.

``detect_loop`` finds the longest *repeating tail*: for a period ``p``, the tail of period ``p`` is the
longest suffix ``s`` with ``s[i] == s[i + p]`` for every valid ``i``; its length is ``p`` plus the number
of trailing positions ``t`` with ``ids[t] == ids[t - p]``. Among all periods the longest tail wins (ties:
the smallest period, so ``a a a a`` is period 1, not 2). A tail counts as a loop when it spans at least
``min_repeats`` full periods and ``min_length`` tokens.

``collapse_class`` rule (thresholds in :class:`CollapseThresholds`):

1. **degenerate** — a loop exists, it covers at least ``min_loop_fraction`` of the continuation, and the
   mean entropy over the loop tail is at most ``degenerate_max_entropy`` nats (the model is confidently
   copying itself: the "probability black hole").
2. **divergent** — otherwise, if the mean entropy over the whole continuation is at least
   ``divergent_min_entropy`` nats *and* the continuation is unlikely: mean log-prob of the generated
   tokens at most ``divergent_max_logprob`` when log-probs are given; when they are not, "no loop
   covering ``min_loop_fraction``" stands in for low likelihood.
3. **healthy** — everything else.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from entropy_reg.metrics._inputs import as_id_list, as_id_lists
from entropy_reg.metrics.entropy import _as_float_list

CollapseClass = Literal["degenerate", "divergent", "healthy"]


@dataclass(frozen=True)
class Loop:
    """A repeating tail: ``ids[start:]`` has period ``period`` and spans ``length`` tokens."""

    period: int
    length: int
    start: int

    @property
    def repeats(self) -> float:
        return self.length / self.period


def detect_loop(
    ids: Any, min_repeats: int = 2, min_length: int = 4, max_period: int | None = None
) -> Loop | None:
    """Return the longest repeating tail of ``ids`` (see module docstring), or None if there is none.

    Args:
        ids: [T] token ids of one continuation (list or 1-D tensor).
        min_repeats: the tail must span at least this many full periods.
        min_length: ... and at least this many tokens (so ``"! !"`` is not a loop).
        max_period: longest period tried; default ``T // min_repeats``.
    """
    if min_repeats < 2:
        raise ValueError(f"min_repeats must be >= 2 (one copy is not a repetition), got {min_repeats}")
    a = np.asarray(as_id_list(ids, "ids"), dtype=np.int64)
    T = a.size
    limit = T // min_repeats if max_period is None else min(max_period, T // min_repeats)
    best: Loop | None = None
    for p in range(1, limit + 1):
        same = a[p:] == a[:-p]  # same[t - p] <=> ids[t] == ids[t - p]
        mismatch = np.flatnonzero(~same)
        trailing = same.size if mismatch.size == 0 else same.size - 1 - int(mismatch[-1])
        length = p + trailing
        if length >= min_repeats * p and length >= min_length and (best is None or length > best.length):
            best = Loop(period=p, length=length, start=T - length)
    return best


def _eos_set(eos_token_id: int | Collection[int]) -> set[int]:
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    ids = {int(e) for e in eos_token_id}
    if not ids:
        raise ValueError("eos_token_id must be an int or a non-empty collection of ints")
    return ids


def eos_rate(sequences: Any, eos_token_id: int | Collection[int]) -> float:
    """Share of continuations that contain an EOS token (i.e. stopped on their own)."""
    eos = _eos_set(eos_token_id)
    seqs = as_id_lists(sequences)
    return sum(any(t in eos for t in s) for s in seqs) / len(seqs)


def hit_max_length_rate(sequences: Any, max_new_tokens: int, eos_token_id: int | Collection[int]) -> float:
    """Share of continuations cut by the length limit: ``max_new_tokens`` tokens and no EOS."""
    eos = _eos_set(eos_token_id)
    seqs = as_id_lists(sequences)
    return sum(len(s) >= max_new_tokens and not any(t in eos for t in s) for s in seqs) / len(seqs)


@dataclass(frozen=True)
class CollapseThresholds:
    """Thresholds of :func:`collapse_class` (entropies in nats, log-probs natural log)."""

    min_loop_fraction: float = 0.25
    degenerate_max_entropy: float = 1.0
    divergent_min_entropy: float = 4.0
    divergent_max_logprob: float = -4.0
    min_loop_repeats: int = 2
    min_loop_length: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.min_loop_fraction <= 1.0:
            raise ValueError(f"min_loop_fraction must be in (0, 1], got {self.min_loop_fraction}")
        if self.degenerate_max_entropy < 0 or self.divergent_min_entropy < 0:
            raise ValueError("entropy thresholds must be >= 0 nats")


def collapse_class(
    ids: Any,
    entropies: Any,
    logprobs: Sequence[float] | None = None,
    thresholds: CollapseThresholds | None = None,
) -> CollapseClass:
    """Classify one continuation as "degenerate", "divergent" or "healthy" (rule in the module docstring).

    Args:
        ids: [T] generated token ids.
        entropies: [T] raw-distribution entropy at each generated position (nats).
        logprobs: optional [T] log-probability of each generated token under the raw distribution.
        thresholds: defaults to ``CollapseThresholds()``.

    Raises:
        ValueError: empty continuation or misaligned lengths.
    """
    t = thresholds or CollapseThresholds()
    id_list = as_id_list(ids, "ids")
    ent = _as_float_list(entropies)
    if not id_list:
        raise ValueError("collapse_class got an empty continuation")
    if len(ent) != len(id_list):
        raise ValueError(f"entropies ({len(ent)}) must align with ids ({len(id_list)})")
    loop = detect_loop(id_list, min_repeats=t.min_loop_repeats, min_length=t.min_loop_length)
    covering = loop is not None and loop.length / len(id_list) >= t.min_loop_fraction
    if covering:
        tail_entropy = float(np.mean(ent[loop.start :]))
        if tail_entropy <= t.degenerate_max_entropy:
            return "degenerate"
    if float(np.mean(ent)) >= t.divergent_min_entropy:
        if logprobs is not None:
            lp = _as_float_list(logprobs, "logprobs")
            if len(lp) != len(id_list):
                raise ValueError(f"logprobs ({len(lp)}) must align with ids ({len(id_list)})")
            unlikely = float(np.mean(lp)) <= t.divergent_max_logprob
        else:
            unlikely = not covering
        if unlikely:
            return "divergent"
    return "healthy"
