"""Loop detection, stopping statistics and the per-continuation collapse class.

``detect_loop`` finds the longest *repeating tail*: for a period ``p``, the tail of period ``p`` is the
longest suffix ``s`` with ``s[i] == s[i + p]`` for every valid ``i``; its length is ``p`` plus the number
of trailing positions ``t`` with ``ids[t] == ids[t - p]``. Among all periods the longest tail wins (ties:
the smallest period, so ``a a a a`` is period 1, not 2). A tail counts as a loop when it spans at least
``min_repeats`` full periods and ``min_length`` tokens.

Collapse classes
----------------
``collapse_class`` puts every continuation in exactly one of four classes (thresholds in
:class:`CollapseThresholds`, defaults in brackets). A continuation *loops* when :func:`detect_loop`
finds a repeating tail spanning at least ``min_loop_repeats`` [2] periods and ``min_loop_length`` [4]
tokens and covering at least ``min_loop_fraction`` [0: any such tail] of the continuation; this is the
tail the HTML report highlights. Then:

1. **degenerate** — it loops and the mean raw-logit entropy over the *copies* of the loop (the tail
   after its first period: what the model produced by repeating itself) is at most
   ``degenerate_max_entropy`` [1.0] nats: the model confidently copies itself, the self-reinforcing
   "probability black hole". The first period is left out because it is the text being repeated, not
   a repeat: in a short continuation it would dominate the mean and hide the collapse (measured on
   SmolLM2-135M after SFT: loop tails average 0.7-1.4 nats, their copies 0.5-1.2, their last period
   0.2-0.8).
2. **repetitive** — it loops at a higher tail entropy: argmax over a flat distribution, what an
   under-trained model does under greedy decoding. A looping continuation is never healthy.
3. **divergent** — it does not loop, its mean entropy is at least ``divergent_min_entropy`` [4.0] nats
   and it is unlikely: mean log-prob of the generated tokens at most ``divergent_max_logprob`` [-4.0]
   when log-probs are given (without them, high entropy alone decides): gibberish.
4. **healthy** — none of these.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from entropy_reg.metrics._inputs import as_id_list, as_id_lists
from entropy_reg.metrics.entropy import _as_float_list

CollapseClass = Literal["degenerate", "repetitive", "divergent", "healthy"]

#: The four classes of :func:`collapse_class`, in report order.
COLLAPSE_CLASSES: tuple[str, ...] = ("degenerate", "repetitive", "divergent", "healthy")


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
    """Thresholds of :func:`collapse_class` (module docstring; entropies in nats, log-probs natural log).

    Attributes:
        min_loop_fraction: share of the continuation the repeating tail must cover, in [0, 1]
            (0: any tail that meets ``min_loop_repeats`` and ``min_loop_length``).
        degenerate_max_entropy: a loop whose copies' mean entropy is at most this is degenerate, else
            repetitive.
        divergent_min_entropy: a continuation without loop at or above this mean entropy may be divergent.
        divergent_max_logprob: ... and is when its mean token log-prob is at most this.
        min_loop_repeats: full periods a repeating tail must span (>= 2).
        min_loop_length: tokens a repeating tail must span (>= 2).
    """

    min_loop_fraction: float = 0.0
    degenerate_max_entropy: float = 1.0
    divergent_min_entropy: float = 4.0
    divergent_max_logprob: float = -4.0
    min_loop_repeats: int = 2
    min_loop_length: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_loop_fraction <= 1.0:
            raise ValueError(f"min_loop_fraction must be in [0, 1], got {self.min_loop_fraction}")
        if not (self.degenerate_max_entropy >= 0 and self.divergent_min_entropy >= 0):
            raise ValueError("entropy thresholds must be >= 0 nats")
        if not self.divergent_max_logprob <= 0:
            raise ValueError(f"divergent_max_logprob is a log-probability and must be <= 0, got {self.divergent_max_logprob}")
        if self.min_loop_repeats < 2:
            raise ValueError(f"min_loop_repeats must be >= 2 (one copy is not a repetition), got {self.min_loop_repeats}")
        if self.min_loop_length < 2:
            raise ValueError(f"min_loop_length must be >= 2, got {self.min_loop_length}")

    def loop(self, ids: Any) -> Loop | None:
        """The repeating tail that makes ``ids`` loop under these thresholds, or None."""
        id_list = as_id_list(ids, "ids")
        found = detect_loop(id_list, min_repeats=self.min_loop_repeats, min_length=self.min_loop_length)
        if found is None or found.length < self.min_loop_fraction * len(id_list):
            return None
        return found


def collapse_class(
    ids: Any,
    entropies: Any,
    logprobs: Sequence[float] | None = None,
    thresholds: CollapseThresholds | None = None,
) -> CollapseClass:
    """Classify one continuation: "degenerate", "repetitive", "divergent" or "healthy" (module docstring).

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
    lp = None
    if logprobs is not None:
        lp = _as_float_list(logprobs, "logprobs")
        if len(lp) != len(id_list):
            raise ValueError(f"logprobs ({len(lp)}) must align with ids ({len(id_list)})")
    loop = t.loop(id_list)
    if loop is not None:
        copies_entropy = float(np.mean(ent[loop.start + loop.period :]))
        return "degenerate" if copies_entropy <= t.degenerate_max_entropy else "repetitive"
    if float(np.mean(ent)) >= t.divergent_min_entropy and (lp is None or float(np.mean(lp)) <= t.divergent_max_logprob):
        return "divergent"
    return "healthy"
