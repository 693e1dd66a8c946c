"""Sentence boundaries in token ids, for any tokenizer (English and Chinese punctuation alike)."""

from __future__ import annotations

from typing import Any

# A token ends a sentence when its decoded text ends with one of these (after trailing spaces).
SENTENCE_END_CHARS = (".", "!", "?", "。", "！", "？", "\n")


def sentence_end_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens whose decoded text ends a sentence, read once from the decoded vocabulary.

    Special tokens (BOS/EOS/pad, chat markers) never end a sentence.

    Raises:
        ValueError: the tokenizer has no such token (a sentence could never be found).
    """
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ends = frozenset(
        i for i, text in enumerate(texts) if i not in special and text.rstrip(" \t").endswith(SENTENCE_END_CHARS)
    )
    if not ends:
        raise ValueError(
            f"{type(tokenizer).__name__}: no token of its {size}-token vocabulary decodes to text ending in "
            f"one of {SENTENCE_END_CHARS!r}; pass sentence_end_ids explicitly"
        )
    return ends


def sentence_spans(
    ids: list[int], start: int, end: int, ends: frozenset[int], min_tokens: int, max_tokens: int
) -> list[tuple[int, int]]:
    """Complete sentences ``[a, b)`` inside ``ids[start:end]`` whose length is in [min_tokens, max_tokens].

    A sentence runs from the token after the previous sentence end (or ``start``) to a sentence-end
    token, inclusive; the text after the last sentence end is not a complete sentence.
    """
    spans = []
    begin = start
    for t in range(start, end):
        if ids[t] in ends:
            if min_tokens <= t + 1 - begin <= max_tokens:
                spans.append((begin, t + 1))
            begin = t + 1
    return spans
