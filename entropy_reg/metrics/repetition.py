"""Repetition and diversity of generated continuations (token-id based, so language-agnostic).

Definitions follow the project DESIGN.md exactly; the variant is in each name:

- ``seq_rep_n`` (Welleck et al. 2019): per continuation ``1 - |unique n-grams| / |n-grams|``, then the
  mean over continuations.
- ``rep_n`` (in percent), two conventions:

  - ``convention="pooled"`` (default): ``100 * (1 - |unique n-grams| / |n-grams|)`` where both counts
    pool the n-grams of *all* continuations (an n-gram shared by two continuations counts once).
  - ``convention="simctg"``: what SimCTG's evaluation script (``measure_repetition_and_diversity``)
    computes: per text it drops the last n-gram (its loop stops at ``end < len``) and counts that
    text's unique n-grams; unique and total counts are then *added up* over texts. Two identical
    texts ``[1, 2, 3]`` give rep-2 ``0.0`` here and ``50.0`` pooled. SimCTG splits text on whitespace;
    here the units are token ids (the same counting on different units).
- ``diversity``: ``prod_{n=2..4} (1 - rep_n / 100)`` with the chosen ``rep_n`` convention.
- ``distinct_n`` (Li et al. 2016, pooled): ``|unique n-grams| / |n-grams|`` over the whole set.
- ``uniq_seq``: number of distinct token ids over all continuations.
- ``sentence_repetition``: per text ``(#sentences - #distinct sentences) / #sentences``, mean over
  texts, two conventions:

  - ``convention="split"`` (default): sentences split on ``. ! ?`` and ``。！？`` (:func:`split_sentences`);
    texts without a sentence are skipped.
  - ``convention="ditto"``: what DITTO's ``report_metrics.py`` (``sentence_repetition_count``) computes:
    whitespace tokens, a token equal to ``"."`` ends a sentence, the text before the first ``"."`` is
    ignored, the last sentence runs from the last ``"."`` to the end *minus the last token* (so a text
    ending in ``"."`` gets an empty trailing sentence), and a text without ``"."`` counts as 0 in the
    mean. ``"a b . c d . a b . c d ."`` gives 0.25 here and 0.5 split. DITTO's texts are Wikitext-103,
    tokenized with spaces around ``"."``; on raw model text ``"end."`` is one token and ends nothing.

Short sequences: a continuation with fewer than ``n`` tokens has no n-gram. It is *skipped* (it does not
enter the mean of ``seq_rep_n`` and adds nothing to the pooled counts). When no continuation has an n-gram
at all, the repetition metrics return 0.0 (nothing repeats) and ``distinct_n`` returns 0.0 (nothing
distinct): a finite, documented value instead of a silent NaN. An empty collection raises ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from entropy_reg.metrics._inputs import as_id_lists, check_n

RepConvention = Literal["pooled", "simctg"]
SentenceConvention = Literal["split", "ditto"]


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


def _simctg_counts(sequences: Any, n: int) -> tuple[int, int]:
    """SimCTG's ``eval_text`` summed over texts: per text the n-grams but the last, unique per text."""
    check_n(n)
    unique = total = 0
    for ids in as_id_lists(sequences):
        grams = _ngrams(ids, n)[:-1]  # SimCTG's `while end_idx < len(tokens)` never takes the last one
        total += len(grams)
        unique += len(set(grams))
    return unique, total


def _check_convention(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what}: convention must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def rep_n(sequences: Any, n: int = 2, convention: RepConvention = "pooled") -> float:
    """rep-n in percent: ``100 * (1 - unique/total)`` n-grams (conventions in the module docstring).

    Args:
        sequences: list of token-id sequences (lists or 1-D tensors) or a 2-D tensor [N, T].
        n: n-gram order.
        convention: "pooled" (unique n-grams over the whole set) or "simctg" (SimCTG's script).

    Returns:
        A float in [0, 100); 0.0 when there is no n-gram at all.
    """
    _check_convention(convention, ("pooled", "simctg"), "rep_n")
    counts = _pooled_counts if convention == "pooled" else _simctg_counts
    unique, total = counts(sequences, n)
    return 100.0 * (1.0 - unique / total) if total else 0.0


def distinct_n(sequences: Any, n: int = 2) -> float:
    """distinct-n (pooled): ``unique / total`` n-grams over all continuations; 0.0 if there are none."""
    unique, total = _pooled_counts(sequences, n)
    return unique / total if total else 0.0


def diversity(sequences: Any, convention: RepConvention = "pooled") -> float:
    """``prod_{n=2..4} (1 - rep_n / 100)`` in [0, 1], with ``rep_n`` of the given convention."""
    out = 1.0
    for n in (2, 3, 4):
        out *= 1.0 - rep_n(sequences, n, convention) / 100.0
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


def ditto_sentences(text: str) -> list[str]:
    """Sentences of ``text`` as DITTO's ``sentence_repetition_count`` cuts them (module docstring)."""
    tokens = text.split()
    dots = [i for i, tok in enumerate(tokens) if tok == "."]
    out = []
    for k, i in enumerate(dots):
        end = dots[k + 1] if k + 1 < len(dots) else -1  # the script's `end = -1`: drops the last token
        out.append(" ".join(tokens[i + 1 : end]))
    return out


def sentence_repetition(texts: Sequence[str], convention: SentenceConvention = "split") -> float:
    """Sentence-level repetition: mean over texts of ``(#sent - #distinct sent) / #sent``.

    Args:
        texts: decoded continuations.
        convention: "split" (split on ``. ! ? 。！？``; texts with no sentence are skipped; 0.0 if all
            are) or "ditto" (DITTO's script; a text without ``"."`` counts as 0) — module docstring.

    Raises:
        ValueError: ``texts`` is a single string, empty, or contains a non-string; unknown convention.
    """
    _check_convention(convention, ("split", "ditto"), "sentence_repetition")
    if isinstance(texts, str):
        raise ValueError("sentence_repetition expects a list of texts; wrap a single text as [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("sentence_repetition got no texts")
    values = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is a {type(text).__name__}, expected str")
        sentences = split_sentences(text) if convention == "split" else ditto_sentences(text)
        if sentences:
            values.append((len(sentences) - len(set(sentences))) / len(sentences))
        elif convention == "ditto":
            values.append(0.0)
    return sum(values) / len(values) if values else 0.0
