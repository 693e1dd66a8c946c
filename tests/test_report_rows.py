"""Report rows: all four collapse shares, both rep-n conventions, honest variant labels."""

import numpy as np
import pytest

from entropy_reg.generation import parse_decoding
from entropy_reg.metrics import COLLAPSE_CLASSES, CollapseThresholds, diversity, rep_n
from entropy_reg.report.generate import Runs
from entropy_reg.report.rows import _VARIANTS, generation_rows


def _runs(token_ids, entropies):
    return Runs(decoding=parse_decoding("greedy"), seeds=[0], n_prompts=len(token_ids), max_new_tokens=12,
                eos_token_ids=[0], token_ids=token_ids, entropies=entropies,
                logprobs=[[-1.0] * len(x) for x in token_ids], texts=["a. a."] * len(token_ids),
                hit_eos=[False] * len(token_ids))


def test_generation_rows_have_four_shares_and_simctg_rows():
    ids = [[5, 6] * 6, [7] * 12, list(range(1, 13)), list(range(20, 32))]
    base = _runs(ids, [[0.1] * 12, [3.0] * 12, [6.0] * 12, [2.0] * 12])  # degenerate, repetitive, divergent*, healthy
    cand = _runs(ids, [[2.0] * 12] * 4)  # repetitive, repetitive, healthy, healthy
    rows, kept = generation_rows("greedy", {"baseline": base, "candidate": cand}, CollapseThresholds(), 50, 0)
    by_key = {r.key: r for r in rows}
    shares = {c: by_key[f"{c}_share"] for c in COLLAPSE_CLASSES}
    # *logprob -1 > -4: the high-entropy continuation without loop is likely -> healthy
    assert [shares[c].baseline for c in COLLAPSE_CLASSES] == [0.25, 0.25, 0.0, 0.5]
    assert [shares[c].candidate for c in COLLAPSE_CLASSES] == [0.0, 0.5, 0.0, 0.5]
    assert kept["baseline"]["collapse_class"] == ["degenerate", "repetitive", "healthy", "healthy"]
    assert not any(k.startswith("_") for k in kept["baseline"])  # helper counts stay out of metrics.json
    for n in (2, 4):
        r = by_key[f"rep_{n}_simctg"]
        assert r.baseline == pytest.approx(rep_n(ids, n, convention="simctg"))
        assert np.isfinite(r.interval.low) and r.interval.low <= r.diff <= r.interval.high
    assert by_key["diversity_simctg"].baseline == pytest.approx(diversity(ids, convention="simctg"))
    assert by_key["rep_2"].baseline == pytest.approx(rep_n(ids, 2))


def test_variant_labels_name_only_what_is_computed():
    for key, (label, variant) in _VARIANTS.items():
        if "SimCTG" in label + variant:
            assert key.endswith("_simctg"), key  # only the rows that run SimCTG's counting say SimCTG
        assert "DITTO" not in label + variant, key  # the report's sentence repetition is the plain split
