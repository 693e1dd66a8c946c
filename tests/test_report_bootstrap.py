"""Paired bootstrap arithmetic on hand-made data (no models)."""

import numpy as np
import pytest

from entropy_reg.metrics import distinct_n, rep_n
from entropy_reg.report import bootstrap as bs


def test_resample_weights_shapes_sums_and_determinism():
    r = bs.resample_weights(5, 3, 200, seed=1)
    assert r.weights.shape == (200, 15)
    assert np.all(r.weights.sum(axis=1) == 15)  # P draws x S draws
    # unit (p, s) weight factorises as count_p * count_s
    w = r.weights.reshape(200, 5, 3)
    cp, cs = w.sum(axis=2) / 3, w.sum(axis=1) / 5
    np.testing.assert_allclose(w, cp[:, :, None] * cs[:, None, :] / (w.sum(axis=(1, 2))[:, None, None] / 15))
    np.testing.assert_array_equal(r.weights, bs.resample_weights(5, 3, 200, seed=1).weights)
    assert not np.array_equal(r.weights, bs.resample_weights(5, 3, 200, seed=2).weights)
    # one seed: only prompts are resampled
    assert np.all(bs.resample_weights(4, 1, 50).weights.sum(axis=1) == 4)


def test_identical_models_zero_difference_ci_contains_zero():
    rng = np.random.default_rng(0)
    values = rng.random((10, 3)).reshape(-1)
    res = bs.resample_weights(10, 3, 500)
    b = bs.mean_stat(res, values)
    iv = bs.paired_interval(values.mean(), values.mean(), b, bs.mean_stat(res, values.copy()))
    assert iv.diff == 0.0 and iv.low == 0.0 and iv.high == 0.0 and iv.n_resamples == 500


def test_constant_shift_is_recovered_exactly():
    rng = np.random.default_rng(1)
    base = rng.normal(size=40)
    cand = base + 0.3
    res = bs.resample_weights(40, 1, 1000)
    iv = bs.paired_interval(base.mean(), cand.mean(), bs.mean_stat(res, base), bs.mean_stat(res, cand))
    assert iv.diff == pytest.approx(0.3)
    assert iv.low == pytest.approx(0.3) and iv.high == pytest.approx(0.3)


def test_noisy_shift_ci_covers_truth_and_excludes_zero_with_sane_width():
    rng = np.random.default_rng(2)
    P, S = 60, 3
    base = rng.normal(size=(P, S))
    cand = base + 0.5 + rng.normal(scale=0.2, size=(P, S))
    res = bs.resample_weights(P, S, 2000, seed=3)
    iv = bs.paired_interval(base.mean(), cand.mean(), bs.mean_stat(res, base), bs.mean_stat(res, cand))
    assert iv.low < 0.5 < iv.high and iv.low > 0
    # pairing removes the (large) between-prompt spread: width ~ 2 * 1.96 * 0.2 / sqrt(P * S), not ~ 1/sqrt(P)
    assert iv.high - iv.low < 0.15


def test_unpaired_spread_would_be_much_wider():
    # sanity of the pairing claim above: resampling base and cand independently gives a far wider CI
    rng = np.random.default_rng(4)
    base = rng.normal(size=60)
    cand = base + 0.5 + rng.normal(scale=0.05, size=60)
    paired = bs.resample_weights(60, 1, 1000, seed=0)
    other = bs.resample_weights(60, 1, 1000, seed=99)
    w_paired = np.ptp(np.quantile(bs.mean_stat(paired, cand) - bs.mean_stat(paired, base), [0.025, 0.975]))
    w_unpaired = np.ptp(np.quantile(bs.mean_stat(other, cand) - bs.mean_stat(paired, base), [0.025, 0.975]))
    assert w_paired * 5 < w_unpaired


def test_mean_stat_skips_invalid_units_and_ratio_is_pooled():
    res = bs.Resamples(np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0], [0.0, 3.0, 0.0]]))
    vals, valid = np.array([1.0, 5.0, 3.0]), np.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(bs.mean_stat(res, vals, valid), [2.0, (2 + 3) / 3, np.nan])
    np.testing.assert_allclose(bs.ratio_stat(res, np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])), [2, 2, 2])


def test_all_nan_resamples_give_no_interval():
    iv = bs.paired_interval(0.0, 0.0, np.full(10, np.nan), np.full(10, np.nan))
    assert iv.low is None and iv.high is None and iv.n_resamples == 0


@pytest.mark.parametrize("n", [1, 2, 4])
def test_pooled_ngram_bootstrap_matches_metrics_on_explicit_resamples(n):
    rng = np.random.default_rng(n)
    units = [list(rng.integers(0, 6, size=int(rng.integers(0, 12)))) for _ in range(7)]
    inc = bs.NgramIncidence(units, n)
    res = bs.resample_weights(7, 1, 30, seed=5)
    reps, dists = bs.rep_n_stat(res, inc, literal=True), bs.distinct_n_stat(res, inc, literal=True)
    for b, w in enumerate(res.weights.astype(int)):
        explicit = [u for u, k in zip(units, w, strict=True) for _ in range(k)]
        assert reps[b] == pytest.approx(rep_n(explicit, n))
        assert dists[b] == pytest.approx(distinct_n(explicit, n))
    ones = bs.Resamples(np.ones((1, 7)))
    for literal in (True, False):
        assert bs.rep_n_stat(ones, inc, literal)[0] == pytest.approx(rep_n(units, n))
        assert bs.distinct_n_stat(ones, inc, literal)[0] == pytest.approx(distinct_n(units, n))


def test_attributed_ngram_counts_have_no_duplication_artefact():
    # 6 continuations without any repeated 4-gram, within or across: rep-4 = 0 on every resample
    units = [list(range(10 * u, 10 * u + 8)) for u in range(6)]
    inc = bs.NgramIncidence(units, 4)
    res = bs.resample_weights(6, 1, 200, seed=0)
    assert np.all(bs.rep_n_stat(res, inc) == 0.0)
    assert bs.rep_n_stat(res, inc, literal=True).max() > 0  # a duplicated prompt "repeats" itself
    # an n-gram shared by 2 of 3 units is owned half by each
    inc = bs.NgramIncidence([[1, 2], [1, 2], [3, 4]], 2)
    np.testing.assert_allclose(inc.owned, [0.5, 0.5, 1.0])


def test_weighted_quantile_matches_inverted_cdf_on_explicit_resamples():
    rng = np.random.default_rng(6)
    units = [list(rng.random(int(rng.integers(1, 9)))) for _ in range(5)]
    res = bs.resample_weights(5, 1, 20, seed=7)
    for q in (0.1, 0.5, 0.9):
        got = bs.quantile_stat(res, units, q)
        for b, w in enumerate(res.weights.astype(int)):
            explicit = np.concatenate([np.asarray(u) for u, k in zip(units, w, strict=True) for _ in range(k)])
            assert got[b] == pytest.approx(np.quantile(explicit, q, method="inverted_cdf"))


def test_unit_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="cover 3 units but the data has 2"):
        bs.mean_stat(bs.resample_weights(3, 1, 5), np.zeros(2))
