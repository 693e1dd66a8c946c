"""Paired bootstrap confidence intervals for candidate - baseline differences (vectorised with numpy).

Resampling unit: a *unit* is one (prompt, seed) continuation for generation metrics, one text for
held-out metrics and one sentence for the probe. A resample draws prompts with replacement and,
independently, seeds with replacement; unit ``(p, s)`` then enters with multiplicity
``count_p * count_s``. The *same* multiplicities are applied to both models, so the difference is
paired: prompt difficulty cancels out, only the model effect varies between resamples.

Statistics are all expressed through these multiplicity weights ``W [B, U]``:

- ratio statistics ``sum_u W*num_u / sum_u W*den_u`` (a mean over continuations is num=value, den=1; a
  token-pooled mean is num=sum over tokens, den=token count; perplexity is exp of a CE ratio);
- pooled n-gram statistics (rep-n, distinct-n), recomputed per resample from the n-gram incidence of
  the units. Default ("attributed"): each distinct n-gram of the full set is split equally among the
  units containing it, so unit u owns ``g_u`` unique n-grams (``sum_u g_u`` = the full set's unique
  count) and a resample has ``sum W*g_u`` unique of ``sum W*total_u`` n-grams. Why not the literal
  recount (``literal=True``: unique = n-grams present in some unit with W > 0): a prompt drawn twice
  contributes two *identical* continuations, so every n-gram of the copy counts as repeated, which
  inflates rep-n by the resampling itself (a set with rep-4 = 0 gets a CI of about +-4 points);
  the attributed form is exact on the full set and has no such artefact;
- weighted quantiles of pooled token values (entropy p10/p50/p90), inverted-CDF definition.

The CI is the percentile interval (2.5%, 97.5%) of the resampled differences. Resamples where a
statistic is undefined (zero denominator) are dropped from the percentiles (NaN-aware).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
# Rows of W processed at once by the block-wise (n-gram / quantile) statistics: bounds memory at
# block * (#n-grams or #tokens) floats (~1.5 MB per 10k columns), whatever the resample count.
_BLOCK = 100


@dataclass(frozen=True)
class Resamples:
    """Multiplicity weights of ``B`` paired resamples over ``P`` prompts x ``S`` seeds (p-major units)."""

    weights: np.ndarray  # [B, P*S] float64

    @property
    def n(self) -> int:
        return int(self.weights.shape[0])


def resample_weights(n_prompts: int, n_seeds: int = 1, n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0) -> Resamples:
    """Draw ``n_resamples`` bootstrap resamples of prompts (and seeds) with a fixed RNG.

    Seeds are resampled only when there are several (greedy decoding has one).
    """
    if n_prompts < 1 or n_seeds < 1 or n_resamples < 1:
        raise ValueError(f"need >= 1 prompt, seed and resample, got {n_prompts}, {n_seeds}, {n_resamples}")
    rng = np.random.default_rng(seed)
    cp = rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_resamples)
    if n_seeds > 1:
        cs = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_resamples)
    else:
        cs = np.ones((n_resamples, 1), dtype=np.int64)
    w = (cp[:, :, None] * cs[:, None, :]).reshape(n_resamples, n_prompts * n_seeds)
    return Resamples(weights=w.astype(np.float64))


def ratio_stat(res: Resamples, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``[B]`` resampled ``sum W*num / sum W*den`` (NaN where the denominator is 0)."""
    num = np.asarray(num, dtype=np.float64).reshape(-1)
    den = np.asarray(den, dtype=np.float64).reshape(-1)
    _check_units(res, num.size)
    n, d = res.weights @ num, res.weights @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, n / np.where(d > 0, d, 1.0), np.nan)


def mean_stat(res: Resamples, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Resampled mean of per-unit values over valid units (invalid units, e.g. too short, are skipped)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    valid = np.ones_like(values) if valid is None else np.asarray(valid, dtype=np.float64).reshape(-1)
    return ratio_stat(res, np.where(valid > 0, values, 0.0), valid)


class NgramIncidence:
    """Which distinct n-grams occur in which unit, for pooled rep-n / distinct-n under resampling."""

    def __init__(self, units: Sequence[Sequence[int]], n: int):
        index: dict[tuple[int, ...], int] = {}
        rows, cols, totals = [], [], []
        for u, ids in enumerate(units):
            ids = list(ids)
            grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
            totals.append(len(grams))
            for g in set(grams):
                rows.append(u)
                cols.append(index.setdefault(g, len(index)))
        self.n = n
        self.totals = np.asarray(totals, dtype=np.float64)
        self.matrix = np.zeros((len(totals), max(len(index), 1)), dtype=np.float32)
        self.matrix[rows, cols] = 1.0
        spread = self.matrix.sum(axis=0)  # units containing each distinct n-gram
        # unique n-grams owned by each unit (an n-gram in k units gives 1/k to each)
        self.owned = (self.matrix / np.maximum(spread, 1.0)).sum(axis=1).astype(np.float64)

    def counts(self, weights: np.ndarray, literal: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(unique [B], total [B])`` n-gram counts of each weighted resample (module docstring)."""
        _check_units(Resamples(weights), self.totals.size)
        total = weights @ self.totals
        if not literal:
            return weights @ self.owned, total
        unique = np.empty(weights.shape[0])
        present = (weights > 0).astype(np.float32)
        for start in range(0, weights.shape[0], _BLOCK):
            block = present[start : start + _BLOCK] @ self.matrix  # [b, G]: units containing each n-gram
            unique[start : start + _BLOCK] = (block > 0).sum(axis=1)
        return unique, total


def rep_n_stat(res: Resamples, inc: NgramIncidence, literal: bool = False) -> np.ndarray:
    """Resampled pooled rep-n (percent); 0 where a resample has no n-gram (as ``metrics.rep_n``)."""
    unique, total = inc.counts(res.weights, literal)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * (1.0 - unique / np.where(total > 0, total, 1.0)), 0.0)


def distinct_n_stat(res: Resamples, inc: NgramIncidence, literal: bool = False) -> np.ndarray:
    """Resampled distinct-n; 0 where a resample has no n-gram (as ``metrics.distinct_n``)."""
    unique, total = inc.counts(res.weights, literal)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, unique / np.where(total > 0, total, 1.0), 0.0)


def quantile_stat(res: Resamples, unit_values: Sequence[Sequence[float]], q: float) -> np.ndarray:
    """Resampled weighted ``q``-quantile (inverted CDF) of the token values pooled over units.

    (The point estimate elsewhere uses ``np.quantile``'s linear interpolation; for the CI the step
    definition is what weighted resampling supports, the two differ by less than one token gap.)
    """
    _check_units(res, len(unit_values))
    flat = np.asarray([v for vals in unit_values for v in vals], dtype=np.float64)
    if flat.size == 0:
        return np.full(res.n, np.nan)
    unit = np.repeat(np.arange(len(unit_values)), [len(v) for v in unit_values])
    order = np.argsort(flat, kind="stable")
    flat, unit = flat[order], unit[order]
    out = np.empty(res.n)
    for start in range(0, res.n, _BLOCK):
        w = res.weights[start : start + _BLOCK][:, unit]  # [b, N] token weights, in value order
        cum = np.cumsum(w, axis=1)
        target = q * cum[:, -1:]
        idx = np.minimum((cum < target).sum(axis=1), flat.size - 1)  # first index with cum >= target
        out[start : start + _BLOCK] = np.where(cum[:, -1] > 0, flat[idx], np.nan)
    return out


@dataclass(frozen=True)
class Interval:
    """A paired difference: point estimate and percentile CI (None when no resample was defined)."""

    diff: float
    low: float | None
    high: float | None
    n_resamples: int


def paired_interval(point_base: float, point_cand: float, boot_base: np.ndarray, boot_cand: np.ndarray,
                    level: float = 0.95) -> Interval:
    """Difference ``cand - base`` of the point estimates and the percentile CI of the resampled ones."""
    return transformed_interval(point_cand - point_base, boot_cand - boot_base, level)


def transformed_interval(point: float, boot: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile CI of any resampled statistic (e.g. a perplexity ratio) around its point value."""
    boot = np.asarray(boot, dtype=np.float64)
    ok = boot[np.isfinite(boot)]
    if ok.size == 0:
        return Interval(float(point), None, None, 0)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(ok, [alpha, 1.0 - alpha])
    return Interval(float(point), float(low), float(high), int(ok.size))


def _check_units(res: Resamples, n_units: int) -> None:
    if res.weights.shape[1] != n_units:
        raise ValueError(f"resample weights cover {res.weights.shape[1]} units but the data has {n_units}")
