"""What the training data teaches about ending and repeating: statistics of tokenised SFT rows.

Data can teach the collapse by itself: rows cut at ``max_length`` before their end-of-turn teach the
model never to stop, and repetitive responses breed repetitive generations (RIRO, Li et al. 2023).
:func:`row_statistics` measures it on the rows as they are trained on (after truncation):

- ``rows``; ``truncated_share``: rows cut at ``max_length`` (their end is never seen);
- ``label_tokens_mean`` / ``_min`` / ``_max``: trained (labelled) tokens per row;
- ``rep_2``, ``rep_4``: seq-rep-n of the responses (the labelled tokens of each row), Welleck et al.:
  per row ``1 - unique/total`` n-grams, mean over rows (:func:`entropy_reg.metrics.seq_rep_n`);
- ``duplicate_share``: rows whose response repeats the response of an earlier row exactly.

:data:`THRESHOLDS` are the values past which :class:`~entropy_reg.data.SFTDataModule` warns at setup
(``entropy-reg eval --data`` reports them too): any truncated row (threshold 0, the existing
truncation warning), ``rep_4`` > 0.2 (a fifth of a response's 4-grams repeat inside it: natural answers
are near 0.02), ``duplicate_share`` > 0.05. Repetition is measured on at most :data:`MAX_ROWS_MEASURED`
rows (the first ones) to keep setup fast on large datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100
MAX_ROWS_MEASURED = 20_000
THRESHOLDS = {"truncated_share": 0.0, "rep_4": 0.2, "duplicate_share": 0.05}


def row_statistics(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                   truncated: Sequence[bool] | None = None, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """Statistics of tokenised rows (module docstring); ``truncated[i]``: row i was cut at max_length."""
    # The one use of metrics/ from data/: imported here, at setup, so importing data never loads metrics.
    from entropy_reg.metrics.repetition import seq_rep_n

    rows = len(labels)
    if not rows:
        return {"rows": 0}
    responses = [[int(t) for t, label in zip(ids, labs, strict=False) if label != ignore_index]
                 for ids, labs in zip(input_ids, labels, strict=True)]
    counts = [len(r) for r in responses]
    seen: set[tuple[int, ...]] = set()
    duplicates = 0
    for response in responses:
        key = tuple(response)
        duplicates += key in seen
        seen.add(key)
    measured = responses[:MAX_ROWS_MEASURED]
    return {
        "rows": rows,
        "truncated_share": (sum(bool(t) for t in truncated) / rows) if truncated is not None else 0.0,
        "label_tokens_mean": sum(counts) / rows,
        "label_tokens_min": min(counts),
        "label_tokens_max": max(counts),
        "rep_2": seq_rep_n(measured, 2),
        "rep_4": seq_rep_n(measured, 4),
        "duplicate_share": duplicates / rows,
    }


def describe(stats: dict[str, Any]) -> str:
    """One line: ``1065 rows; truncated 0.0% (never ending); label tokens/row 64.2 (3-120); ...``."""
    if not stats.get("rows"):
        return "0 rows"
    return (f"{stats['rows']} rows; truncated {100 * stats['truncated_share']:.1f}% (cut before their end, never "
            f"ending); label tokens/row {stats['label_tokens_mean']:.1f} (min {stats['label_tokens_min']}, max "
            f"{stats['label_tokens_max']}); responses rep-2 {stats['rep_2']:.3f}, rep-4 {stats['rep_4']:.3f} "
            f"(seq-rep-n); duplicate responses {100 * stats['duplicate_share']:.1f}%")


def warnings_for(stats: dict[str, Any], truncation: bool = False) -> list[str]:
    """What in ``stats`` is past :data:`THRESHOLDS`.

    Truncation is warned about where rows are cut (SFTDataModule's own count); ``truncation=True`` adds
    it here (``entropy-reg eval --data``).
    """
    out = []
    if truncation and stats.get("rows") and stats["truncated_share"] > THRESHOLDS["truncated_share"]:
        cut = round(stats["truncated_share"] * stats["rows"])
        out.append(f"{cut} of {stats['rows']} rows ({100 * stats['truncated_share']:.1f}%) are cut at max_length "
                   "before their end: the model is trained never to see them end (raise max_length or shorten "
                   "the rows)")
    if stats.get("rows") and stats["rep_4"] > THRESHOLDS["rep_4"]:
        out.append(f"responses repeat themselves: rep-4 {stats['rep_4']:.3f} > {THRESHOLDS['rep_4']} (a share of "
                   "each response's 4-grams repeated inside it); repetitive training text breeds repetitive "
                   "generations")
    if stats.get("rows") and stats["duplicate_share"] > THRESHOLDS["duplicate_share"]:
        out.append(f"{100 * stats['duplicate_share']:.1f}% of the responses are exact duplicates of an earlier one "
                   f"(> {100 * THRESHOLDS['duplicate_share']:.0f}%)")
    return out
