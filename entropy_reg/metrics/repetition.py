"""Repetition and diversity of generated continuations (token-id based, so language-agnostic).

Definitions follow the project DESIGN.md exactly; the variant is in each name:

- ``seq_rep_n`` (Welleck et al. 2019): per continuation ``1 - |unique n-grams| / |n-grams|``, then the
  mean over continuations.
- ``rep_n`` (SimCTG, pooled): ``100 * (1 - |unique n-grams| / |n-grams|)`` where both counts pool the
  n-grams of *all* continuations (an n-gram shared by two continuations counts once in the unique set).
- ``diversity`` (SimCTG): ``prod_{n=2..4} (1 - rep_n / 100)``.
- ``distinct_n`` (Li et al. 2016, pooled): ``|unique n-grams| / |n-grams|`` over the whole set.
- ``uniq_seq``: number of distinct token ids over all continuations.
- ``sentence_repetition`` (DITTO): per text ``(#sentences - #distinct sentences) / #sentences``, mean over
  texts.

Short sequences: a continuation with fewer than ``n`` tokens has no n-gram. It is *skipped* (it does not
enter the mean of ``seq_rep_n`` and adds nothing to the pooled counts). When no continuation has an n-gram
at all, the repetition metrics return 0.0 (nothing repeats) and ``distinct_n`` returns 0.0 (nothing
distinct): a finite, documented value instead of a silent NaN. An empty collection raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from entropy_reg.metrics._inputs import as_id_lists, check_n


def _ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def seq_rep_n(sequences: Any, n: int = 4) -> float:
    """Welleck seq-rep-n: mean over continuations of ``1 - unique/total`` n-grams.

    Args:
        sequences: list of token-id sequences (lists or 1-D tensors) or a 2-D tensor [N, T].
        n: n-gram order.

    Returns:
        A float in [0, 1). Continuations shorter than ``n`` are skipped; 0.0 if all are.
    """
    check_n(n)
    values = []
    for ids in as_id_lists(sequences):
        grams = _ngrams(ids, n)
        if grams:
            values.append(1.0 - len(set(grams)) / len(grams))
    return sum(values) / len(values) if values else 0.0


def _pooled_counts(sequences: Any, n: int) -> tuple[int, int]:
    check_n(n)
    unique: set[tuple[int, ...]] = set()
    total = 0
    for ids in as_id_lists(sequences):
        grams = _ngrams(ids, n)
        total += len(grams)
        unique.update(grams)
    return len(unique), total


def rep_n(sequences: Any, n: int = 2) -> float:
    """SimCTG rep-n (pooled, in percent): ``100 * (1 - unique/total)`` over all continuations' n-grams.

    Returns:
        A float in [0, 100); 0.0 when no continuation has ``n`` tokens.
    """
    unique, total = _pooled_counts(sequences, n)
    return 100.0 * (1.0 - unique / total) if total else 0.0


def distinct_n(sequences: Any, n: int = 2) -> float:
    """distinct-n (pooled): ``unique / total`` n-grams over all continuations; 0.0 if there are none."""
    unique, total = _pooled_counts(sequences, n)
    return unique / total if total else 0.0


def diversity(sequences: Any) -> float:
    """SimCTG diversity: ``prod_{n=2..4} (1 - rep_n / 100)``, in [0, 1]."""
    out = 1.0
    for n in (2, 3, 4):
        out *= 1.0 - rep_n(sequences, n) / 100.0
    return out


def uniq_seq(sequences: Any) -> int:
    """Number of distinct token ids over all continuations."""
    return len({t for ids in as_id_lists(sequences) for t in ids})


# Sentence ends of Latin and CJK scripts; a run of them ("?!", "。。") is one boundary.
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f]+")


def split_sentences(text: str) -> list[str]:
    """Split on ``. ! ?`` and ``。！？``; strip whitespace; drop empty pieces.

    A trailing fragment without a terminator counts as a sentence (generation is often cut mid-sentence).
    """
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def sentence_repetition(texts: Sequence[str]) -> float:
    """DITTO sentence-level repetition: mean over texts of ``(#sent - #distinct sent) / #sent``.

    Texts with no sentence (empty or only punctuation) are skipped; 0.0 if all are.

    Raises:
        ValueError: ``texts`` is a single string, empty, or contains a non-string.
    """
    if isinstance(texts, str):
        raise ValueError("sentence_repetition expects a list of texts; wrap a single text as [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("sentence_repetition got no texts")
    values = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is a {type(text).__name__}, expected str")
        sentences = split_sentences(text)
        if sentences:
            values.append((len(sentences) - len(set(sentences))) / len(sentences))
    return sum(values) / len(values) if values else 0.0
