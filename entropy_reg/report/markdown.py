"""Markdown rendering of the metric table (report.md and the stdout summary)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from entropy_reg.report.rows import Row

HEADER = ("metric", "baseline", "candidate", "difference", "95% CI", "rel.", "variant")
# With ``--reference``: its value and both models' paired differences against it, before "variant".
REFERENCE_HEADER = ("reference", "base − ref [95% CI]", "cand − ref [95% CI]")


def has_reference(rows: Iterable[Row]) -> bool:
    return any(r.reference is not None for r in rows)


def header(with_reference: bool) -> tuple[str, ...]:
    return HEADER[:-1] + REFERENCE_HEADER + HEADER[-1:] if with_reference else HEADER


def fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:+.3e}" if signed else f"{x:.3e}"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _ci(iv: Any) -> str:
    return f"[{fmt(iv.low, True)}, {fmt(iv.high, True)}]" if iv and iv.low is not None else "—"


def row_cells(row: Row, with_reference: bool = False) -> list[str]:
    """Cells in :func:`header` order (the variant is always last)."""
    rel = f"{row.relative:+.1f}%" if row.relative is not None else "—"
    cells = [row.label, fmt(row.baseline), fmt(row.candidate), fmt(row.diff, True), _ci(row.interval), rel]
    if with_reference:
        ref = row.reference
        cells.append(fmt(ref))
        for value, iv in ((row.baseline, row.baseline_vs_reference), (row.candidate, row.candidate_vs_reference)):
            cells.append("—" if ref is None else f"{fmt(value - ref, True)} {_ci(iv)}")
    return cells + [row.variant]


def sections(rows: Iterable[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.section, []).append(r)
    return out


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def table(rows: list[Row]) -> str:
    lines = []
    ref = has_reference(rows)
    head = header(ref)
    for section, items in sections(rows).items():
        lines += [f"### {section}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_escape(c) for c in row_cells(r, ref)) + " |" for r in items]
        lines.append("")
    return "\n".join(lines)


def render(cmp: Any) -> str:
    """The whole report.md."""
    c = cmp.config
    dec_lines = ", ".join(f"{d} ({len(by['baseline'].seeds)} seed(s))" for d, by in cmp.runs.items())
    n_ht = int(cmp.heldout["baseline"].n_tokens.size)
    ref_diffs = "; base − ref = baseline - reference, cand − ref = candidate - reference" if c.reference else ""
    return "\n".join([
        "# entropy-reg compare",
        "",
        f"- baseline: `{c.baseline}`",
        f"- candidate: `{c.candidate}`",
        *([f"- reference: `{c.reference}` (same prompts, seeds and held-out text)"] if c.reference else []),
        f"- prompts: {len(cmp.prompts)} ({c.prompts_file or 'built-in set'}); decodings: {dec_lines}; "
        f"max_new_tokens={c.max_new_tokens}",
        f"- held-out: {n_ht} texts ({c.heldout_file or 'embedded heldout split'}), max_length={c.max_length}",
        f"- difference = candidate - baseline{ref_diffs}; 95% CI: paired percentile bootstrap, "
        f"{c.n_bootstrap} resamples of prompts x seeds (held-out: texts; probe: sentences), seed {c.bootstrap_seed}. "
        "rel. = difference / |baseline|. Pooled metrics (rep-n, distinct-n, diversity): unique n-grams "
        "attributed to prompts, so a prompt drawn twice does not count as repeating itself; SimCTG-script "
        "rows: per-continuation counts, summed; quantiles: weighted inverted CDF (see "
        "entropy_reg.report.bootstrap).",
        "- metrics are computed on token ids (language independent); entropies in nats from raw logits; "
        "the variant column names the convention of each number (README, Metric definitions).",
        "- collapse classes (one per continuation): degenerate = repeating tail at low entropy, repetitive = "
        "repeating tail at higher entropy, divergent = no loop, high entropy, unlikely, healthy = none; "
        "thresholds: entropy_reg.metrics.CollapseThresholds.",
        "",
        table(cmp.rows),
    ])
