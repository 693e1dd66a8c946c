"""Metric rows of the report: point values from :mod:`entropy_reg.metrics`, CIs from the bootstrap.

Each row says which variant of a metric it is (DESIGN.md "say which variant a number is"). Point
values always come from the metric functions themselves; the bootstrap only re-weights per-unit
quantities (values, sums, n-gram incidence) that reproduce those functions on the full set, which
``tests/test_report_bootstrap.py`` checks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from entropy_reg.metrics import (
    COLLAPSE_CLASSES,
    CollapseThresholds,
    collapse_class,
    distinct_n,
    diversity,
    entropy_summary,
    eos_rate,
    hit_max_length_rate,
    rep_n,
    sentence_repetition,
    seq_rep_n,
    split_sentences,
    uniq_seq,
)
from entropy_reg.report import bootstrap as bs
from entropy_reg.report.generate import Runs
from entropy_reg.report.heldout import HeldoutStats

ROLES = ("baseline", "candidate")
REFERENCE = "reference"  # optional third model (``compare --reference``), e.g. the base before SFT


@dataclass
class Row:
    section: str
    key: str
    label: str
    variant: str
    baseline: float
    candidate: float
    interval: bs.Interval | None = None
    # ``--reference`` (e.g. the model before fine-tuning): its value, and the paired CIs of
    # baseline - reference and candidate - reference (same resamples as the main interval).
    reference: float | None = None
    baseline_vs_reference: bs.Interval | None = None
    candidate_vs_reference: bs.Interval | None = None

    @property
    def diff(self) -> float:
        return self.candidate - self.baseline

    @property
    def relative(self) -> float | None:
        """Relative change in percent (None when the baseline is 0)."""
        return 100.0 * self.diff / abs(self.baseline) if self.baseline else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("interval", "baseline_vs_reference", "candidate_vs_reference"):
            d.pop(name)
        iv = self.interval
        d.update(diff=self.diff, relative_pct=self.relative, ci_low=iv.low if iv else None,
                 ci_high=iv.high if iv else None, ci_resamples=iv.n_resamples if iv else 0)
        if self.reference is None:
            d.pop("reference")
            return d
        for role, value, ref_iv in (("baseline", self.baseline, self.baseline_vs_reference),
                                    ("candidate", self.candidate, self.candidate_vs_reference)):
            d[f"{role}_minus_reference"] = value - self.reference
            d[f"{role}_minus_reference_ci_low"] = ref_iv.low if ref_iv else None
            d[f"{role}_minus_reference_ci_high"] = ref_iv.high if ref_iv else None
        return d


def _paired(section: str, key: str, label: str, variant: str, point: Callable[[str], float],
            boot: Callable[[str], np.ndarray], roles: Iterable[str] = ROLES) -> Row:
    """One row; with a ``"reference"`` role also its value and the two paired CIs against it."""
    b, c = point("baseline"), point("candidate")
    boot_b, boot_c = boot("baseline"), boot("candidate")
    row = Row(section, key, label, variant, b, c, bs.paired_interval(b, c, boot_b, boot_c))
    if REFERENCE in roles:
        r, boot_r = point(REFERENCE), boot(REFERENCE)
        row.reference = r
        row.baseline_vs_reference = bs.paired_interval(r, b, boot_r, boot_b)
        row.candidate_vs_reference = bs.paired_interval(r, c, boot_r, boot_c)
    return row


def per_continuation_values(runs: Runs, thresholds: CollapseThresholds) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{metric: (values [U], valid [U])}`` for metrics defined per continuation."""
    ids, ents = runs.token_ids, runs.entropies
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for n in (2, 4):
        vals = [seq_rep_n([x], n) if len(x) >= n else 0.0 for x in ids]
        out[f"seq_rep_{n}"] = (np.asarray(vals), np.asarray([len(x) >= n for x in ids], dtype=float))
    sent = [(len(split_sentences(t)) > 0) for t in runs.texts]
    out["sentence_repetition"] = (
        np.asarray([_sentence_rep(t) for t in runs.texts]), np.asarray(sent, dtype=float)
    )
    for n in (2, 3, 4):
        # SimCTG's script per text: n-grams but the last one, and their distinct count (summed later).
        grams = [[tuple(x[i : i + n]) for i in range(len(x) - n)] for x in ids]
        out[f"_simctg_unique_{n}"] = (np.asarray([len(set(g)) for g in grams], dtype=float), np.ones(len(ids)))
        out[f"_simctg_total_{n}"] = (np.asarray([len(g) for g in grams], dtype=float), np.ones(len(ids)))
    classes = [collapse_class(x, e, lp, thresholds) if x else "healthy"
               for x, e, lp in zip(ids, ents, runs.logprobs, strict=True)]
    for name in COLLAPSE_CLASSES:
        out[f"{name}_share"] = (np.asarray([c == name for c in classes], dtype=float), np.ones(len(ids)))
    eos = set(runs.eos_token_ids)
    out["eos_rate"] = (np.asarray([any(t in eos for t in x) for x in ids], dtype=float), np.ones(len(ids)))
    out["max_length_rate"] = (
        np.asarray([len(x) >= runs.max_new_tokens and not any(t in eos for t in x) for x in ids], dtype=float),
        np.ones(len(ids)),
    )
    out["_classes"] = (np.asarray(classes, dtype=object), np.ones(len(ids)))
    return out


def _sentence_rep(text: str) -> float:
    return sentence_repetition([text])


_VARIANTS = {
    "entropy_mean": ("generation entropy, mean", "raw-logit next-token entropy (nats), pooled over generated tokens"),
    "entropy_p10": ("generation entropy, p10", "quantile of pooled token entropies (nats)"),
    "entropy_p50": ("generation entropy, p50", "quantile of pooled token entropies (nats)"),
    "entropy_p90": ("generation entropy, p90", "quantile of pooled token entropies (nats)"),
    "low_entropy_frac": ("low-entropy token share", "share of generated tokens with entropy < 0.5 nats"),
    "seq_rep_4": ("seq-rep-4", "Welleck, per continuation 1-unique/total 4-grams, mean over continuations"),
    "seq_rep_2": ("seq-rep-2", "Welleck, per continuation, mean over continuations"),
    "rep_2": ("rep-2", "pooled: 1 - unique/total 2-grams over all continuations' token ids, percent"),
    "rep_4": ("rep-4", "pooled: 1 - unique/total 4-grams over all continuations' token ids, percent"),
    "rep_2_simctg": ("rep-2 (SimCTG script)", "SimCTG's counting on token ids: per text, last 2-gram dropped, "
                     "unique counts summed over texts, percent"),
    "rep_4_simctg": ("rep-4 (SimCTG script)", "SimCTG's counting on token ids: per text, last 4-gram dropped, "
                     "unique counts summed over texts, percent"),
    "distinct_2": ("distinct-2", "Li et al., pooled unique/total 2-grams"),
    "diversity": ("diversity", "prod_{n=2..4}(1 - rep-n/100), pooled rep-n"),
    "diversity_simctg": ("diversity (SimCTG script)", "prod_{n=2..4}(1 - rep-n/100), SimCTG-script rep-n"),
    "uniq_seq": ("uniq-seq", "distinct token ids over all continuations (no CI: a count, biased by resampling)"),
    "sentence_repetition": ("sentence repetition", "split on . ! ? 。！？, per continuation (1 - distinct/all "
                            "sentences), mean over continuations with a sentence"),
    "degenerate_share": ("degenerate share", "collapse_class: repeating tail whose copies have mean entropy <= threshold (black hole)"),
    "repetitive_share": ("repetitive share", "collapse_class: repeating tail at higher entropy (flat argmax loop)"),
    "divergent_share": ("divergent share", "collapse_class: no loop, high entropy, low likelihood"),
    "healthy_share": ("healthy share", "collapse_class: none of the three"),
    "eos_rate": ("EOS rate", "share of continuations that stopped with EOS"),
    "max_length_rate": ("max-length rate", "share cut at max_new_tokens without EOS"),
}


def generation_rows(section: str, runs: dict[str, Runs], thresholds: CollapseThresholds,
                    n_resamples: int, seed: int) -> tuple[list[Row], dict[str, Any]]:
    """Rows for one decoding, and the per-sample values kept for metrics.json."""
    base = runs["baseline"]
    res = bs.resample_weights(base.n_prompts, base.n_seeds, n_resamples, seed)
    per = {role: per_continuation_values(r, thresholds) for role, r in runs.items()}
    summ = {role: entropy_summary(r.entropies) for role, r in runs.items()}
    rows: list[Row] = []
    pair = functools.partial(_paired, roles=runs)

    def v(key: str) -> tuple[str, str]:
        return _VARIANTS[key]

    ent_sum = {role: np.asarray([sum(e) for e in r.entropies]) for role, r in runs.items()}
    ent_len = {role: np.asarray([len(e) for e in r.entropies], dtype=float) for role, r in runs.items()}
    rows.append(pair(section, "entropy_mean", *v("entropy_mean"), lambda m: summ[m]["mean"],
                     lambda m: bs.ratio_stat(res, ent_sum[m], ent_len[m])))
    for q, key in ((0.1, "entropy_p10"), (0.5, "entropy_p50"), (0.9, "entropy_p90")):
        rows.append(pair(section, key, *v(key), lambda m, k=key: summ[m][k.split("_")[1]],
                         lambda m, q=q: bs.quantile_stat(res, runs[m].entropies, q)))
    low = {role: np.asarray([sum(h < 0.5 for h in e) for e in r.entropies], dtype=float) for role, r in runs.items()}
    rows.append(pair(section, "low_entropy_frac", *v("low_entropy_frac"), lambda m: summ[m]["low_entropy_frac"],
                     lambda m: bs.ratio_stat(res, low[m], ent_len[m])))
    for key in ("seq_rep_4", "seq_rep_2"):
        n = int(key[-1])
        rows.append(pair(section, key, *v(key), lambda m, n=n: seq_rep_n(runs[m].token_ids, n),
                         lambda m, k=key: bs.mean_stat(res, *per[m][k])))
    inc = {(role, n): bs.NgramIncidence(r.token_ids, n) for role, r in runs.items() for n in (2, 3, 4)}
    for n in (2, 4):
        rows.append(pair(section, f"rep_{n}", *v(f"rep_{n}"), lambda m, n=n: rep_n(runs[m].token_ids, n),
                         lambda m, n=n: bs.rep_n_stat(res, inc[(m, n)])))

    def simctg_boot(m: str, n: int) -> np.ndarray:
        ratio = bs.ratio_stat(res, per[m][f"_simctg_unique_{n}"][0], per[m][f"_simctg_total_{n}"][0])
        return np.where(np.isnan(ratio), 0.0, 100.0 * (1.0 - ratio))  # no n-gram: 0, as metrics.rep_n

    for n in (2, 4):
        rows.append(pair(section, f"rep_{n}_simctg", *v(f"rep_{n}_simctg"),
                         lambda m, n=n: rep_n(runs[m].token_ids, n, convention="simctg"),
                         lambda m, n=n: simctg_boot(m, n)))
    rows.append(pair(section, "distinct_2", *v("distinct_2"), lambda m: distinct_n(runs[m].token_ids, 2),
                     lambda m: bs.distinct_n_stat(res, inc[(m, 2)])))
    rows.append(pair(section, "diversity", *v("diversity"), lambda m: diversity(runs[m].token_ids),
                     lambda m: np.prod([1 - bs.rep_n_stat(res, inc[(m, n)]) / 100 for n in (2, 3, 4)], axis=0)))
    rows.append(pair(section, "diversity_simctg", *v("diversity_simctg"),
                     lambda m: diversity(runs[m].token_ids, convention="simctg"),
                     lambda m: np.prod([1 - simctg_boot(m, n) / 100 for n in (2, 3, 4)], axis=0)))
    rows.append(Row(section, "uniq_seq", *v("uniq_seq"), float(uniq_seq(base.token_ids)),
                    float(uniq_seq(runs["candidate"].token_ids)),
                    reference=float(uniq_seq(runs[REFERENCE].token_ids)) if REFERENCE in runs else None))
    rows.append(pair(section, "sentence_repetition", *v("sentence_repetition"),
                     lambda m: sentence_repetition(runs[m].texts),
                     lambda m: bs.mean_stat(res, *per[m]["sentence_repetition"])))
    for key in (f"{name}_share" for name in COLLAPSE_CLASSES):
        rows.append(pair(section, key, *v(key), lambda m, k=key: _masked_mean(*per[m][k]),
                         lambda m, k=key: bs.mean_stat(res, *per[m][k])))
    eos_ids = base.eos_token_ids or [-1]
    rows.append(pair(section, "eos_rate", *v("eos_rate"), lambda m: eos_rate(runs[m].token_ids, eos_ids),
                     lambda m: bs.mean_stat(res, *per[m]["eos_rate"])))
    rows.append(pair(section, "max_length_rate", *v("max_length_rate"),
                     lambda m: hit_max_length_rate(runs[m].token_ids, base.max_new_tokens, eos_ids),
                     lambda m: bs.mean_stat(res, *per[m]["max_length_rate"])))
    kept = {role: {k: val.tolist() for k, (val, _) in p.items() if not k.startswith("_simctg")}
            for role, p in per.items()}
    for role in kept:
        kept[role]["entropy_mean"] = (ent_sum[role] / np.maximum(ent_len[role], 1)).tolist()
        kept[role]["collapse_class"] = kept[role].pop("_classes")
    return rows, kept


def _masked_mean(values: np.ndarray, valid: np.ndarray) -> float:
    return float((values * valid).sum() / valid.sum()) if valid.sum() else 0.0


def heldout_rows(stats: dict[str, HeldoutStats], n_resamples: int, seed: int) -> list[Row]:
    """Perplexity, its ratio, rep/l, wrep/l and the data's own human rep/l, bootstrapped over texts."""
    base, cand = stats["baseline"], stats["candidate"]
    res = bs.resample_weights(len(base.ce_sum), 1, n_resamples, seed)
    section, l = "held-out (teacher forced)", base.window  # noqa: E741
    ppl_boot = {m: np.exp(bs.ratio_stat(res, s.ce_sum, s.n_tokens)) for m, s in stats.items()}
    pair = functools.partial(_paired, roles=stats)
    rows = [pair(section, "perplexity", "perplexity", "exp(token-mean CE) over all held-out tokens",
                 lambda m: stats[m].perplexity(), lambda m: ppl_boot[m])]
    ratio = cand.perplexity() / base.perplexity()
    rows.append(Row(section, "perplexity_ratio", "perplexity ratio cand/base",
                    "baseline column 1; candidate column = ratio (success: <= 1.03)", 1.0, ratio,
                    bs.transformed_interval(ratio - 1.0, ppl_boot["candidate"] / ppl_boot["baseline"] - 1.0)))
    for key, attr, label, variant in (
        ("rep_l", "rep_hits", f"rep/{l}", f"Welleck, share of positions whose argmax is in the previous {l} gold tokens"),
        ("wrep_l", "wrep_hits", f"wrep/{l}", "rep/l counting only wrong predictions (argmax != gold)"),
        ("human_rep_l", "human_hits", f"human rep/{l}", "the data's own rate (same text: no model difference)"),
    ):
        point = {m: float(getattr(s, attr).sum() / s.n_tokens.sum()) for m, s in stats.items()}
        boot = {m: bs.ratio_stat(res, getattr(s, attr), s.n_tokens) for m, s in stats.items()}
        rows.append(pair(section, key, label, variant, point.__getitem__, boot.__getitem__))
    return rows


def probe_rows(probes: dict[str, list[dict[str, Any]]], n_resamples: int, seed: int) -> list[Row]:
    """TP(1), TP(N), IP(N), WR(N) averaged over probe sentences; bootstrap over sentences."""
    base = probes["baseline"]
    if not base:
        return []
    big_n = base[0]["n"][-1]
    res = bs.resample_weights(len(base), 1, n_resamples, seed)
    section = f"self-reinforcement probe ({len(base)} held-out sentences, N={big_n})"
    rows = []
    pair = functools.partial(_paired, roles=probes)
    for key, idx, label, variant in (
        ("tp_1", 0, "TP(1)", "DITTO, mean prob. of the sentence's tokens in its first copy"),
        ("tp_N", -1, f"TP({big_n})", f"DITTO, mean prob. in copy {big_n} (black hole when -> 1)"),
        ("ip_N", -1, f"IP({big_n})", "DITTO, share of tokens more likely than in copy 1"),
        ("wr_N", -1, f"WR({big_n})", "DITTO, share of tokens that are the argmax"),
    ):
        metric = key.split("_")[0]
        vals = {m: np.asarray([r[metric][idx] for r in p]) for m, p in probes.items()}
        rows.append(pair(section, key, label, variant, lambda m, vals=vals: float(vals[m].mean()),
                         lambda m, vals=vals: bs.mean_stat(res, vals[m])))
    return rows


def report_rows(runs: dict[str, dict[str, Runs]], heldout: dict[str, HeldoutStats],
                probes: dict[str, list[dict[str, Any]]], thresholds: CollapseThresholds, n_resamples: int,
                seed: int) -> tuple[list[Row], dict[str, Any]]:
    """All rows of a report and its per-sample values, from ``{decoding: {role: Runs}}``, ``{role:
    HeldoutStats}`` and ``{role: [probe result per sentence]}`` (roles: baseline, candidate, reference).

    Used by ``compare_models`` and by ``pair_evaluations`` (two saved one-model evaluations), so both
    give the same rows and CIs for the same inputs.
    """
    rows: list[Row] = []
    per_sample: dict[str, Any] = {}
    for i, name in enumerate(runs):
        # One RNG stream per section, derived from the user's seed: reproducible and independent.
        section_rows, kept = generation_rows(name, runs[name], thresholds, n_resamples, seed + 101 * i)
        rows += section_rows
        per_sample[name] = kept
    rows += heldout_rows(heldout, n_resamples, seed + 7919)
    rows += probe_rows(probes, n_resamples, seed + 104729)
    per_sample["heldout"] = {role: {"ce_sum": s.ce_sum.tolist(), "n_tokens": s.n_tokens.tolist(),
                                    "rep_hits": s.rep_hits.tolist(), "wrep_hits": s.wrep_hits.tolist()}
                             for role, s in heldout.items()}
    per_sample["probe"] = {role: [{k: r[k] for k in ("tp", "ip", "wr")} for r in p] for role, p in probes.items()}
    return rows, per_sample
