"""Self-contained report.html: metric table, base64 PNG plots, side-by-side completions.

No scripts and no external resources (it must open from an e-mail attachment or a CI artifact). All
model text is HTML-escaped. In the completions, the repeating tail that makes a continuation loop
(:meth:`entropy_reg.metrics.CollapseThresholds.loop`, the same tail the collapse class uses) is marked
``class="loop"`` and tokens that close a 4-gram already seen earlier in the same continuation are
marked ``class="rep"``.

Layout: the page fits a 1280 px window. Model text can hold long unbroken runs (``||||...``,
``9999...``) that would otherwise widen their table cell past the window, so every cell breaks lines
anywhere when it must (``overflow-wrap:anywhere``, which also lowers the cell's minimum width);
``tests/test_report_render.py`` checks the scroll width in headless Chromium.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from entropy_reg.metrics import CollapseThresholds, seq_rep_n
from entropy_reg.report.markdown import has_reference, header, row_cells, sections
from entropy_reg.report.rows import Row

REPEAT_N = 4

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;overflow-wrap:anywhere}
th{background:#f0f0f0;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.variant{color:#666;font-size:12px}
tr.sig td.diff{font-weight:bold}
.samples{table-layout:fixed;width:100%}
.samples td{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:90%;background:#f4f4f4;padding:0 3px}
li{overflow-wrap:anywhere}
span.loop{background:#f8c4c4}
span.rep{background:#fff0a8}
.badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;font-family:sans-serif;color:#fff}
.degenerate{background:#c0392b}.repetitive{background:#d35400}.divergent{background:#8e44ad}
.healthy{background:#27ae60}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}
.legend span{padding:0 6px;margin-right:8px}
"""


def _metric_tables(rows: list[Row]) -> str:
    parts = []
    ref = has_reference(rows)
    for section, items in sections(rows).items():
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header(ref))
        body = []
        for r in items:
            cells = row_cells(r, ref)
            iv = r.interval
            sig = iv is not None and iv.low is not None and (iv.low > 0 or iv.high < 0)
            tds = [f"<td>{html.escape(cells[0])}</td>"]
            tds += [f'<td class="num{" diff" if i == 3 else ""}">{html.escape(c)}</td>'
                    for i, c in enumerate(cells[1:-1], start=1)]
            tds.append(f'<td class="variant">{html.escape(cells[-1])}</td>')
            body.append(f'<tr class="{"sig" if sig else ""}" data-key="{html.escape(r.key)}">{"".join(tds)}</tr>')
        parts.append(f"<h3>{html.escape(section)}</h3><table class=\"metrics\"><tr>{head}</tr>{''.join(body)}</table>")
    return "\n".join(parts)


def token_flags(ids: list[int], n: int = REPEAT_N, thresholds: CollapseThresholds | None = None) -> list[str]:
    """Per token: "loop" (in the repeating tail that makes the continuation loop), "rep" (ends a
    repeated n-gram) or ""."""
    flags = [""] * len(ids)
    seen: set[tuple[int, ...]] = set()
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i : i + n])
        if gram in seen:
            for k in range(i, i + n):
                flags[k] = "rep"
        seen.add(gram)
    loop = (thresholds or CollapseThresholds()).loop(ids) if ids else None
    if loop is not None:
        for k in range(loop.start, len(ids)):
            flags[k] = "loop"
    return flags


def highlighted(tokenizer: Any, ids: list[int]) -> str:
    """HTML of a continuation with repeated spans wrapped in ``<span class=...>``.

    Spans are cut at token boundaries, but text is decoded from whole prefixes, so a multi-byte
    character (CJK under byte-level BPE) split across tokens is never shown as U+FFFD: a boundary that
    falls inside a character is moved to the next one.
    """
    if not ids:
        return ""
    flags = token_flags(ids)
    bounds = [k for k in range(1, len(ids)) if flags[k] != flags[k - 1]] + [len(ids)]
    out, prev_k, prev_text = [], 0, ""
    for b in bounds:
        text = tokenizer.decode(ids[:b], skip_special_tokens=True)
        if b < len(ids) and text.endswith("\ufffd"):
            continue  # inside a character: merge this group into the next one
        piece = text[len(prev_text):] if text.startswith(prev_text) else tokenizer.decode(
            ids[prev_k:b], skip_special_tokens=True)
        cls = flags[prev_k]
        esc = html.escape(piece)
        out.append(f'<span class="{cls}">{esc}</span>' if cls else esc)
        prev_k, prev_text = b, text
    return "".join(out)


def sample_prompts(n_prompts: int, max_samples: int) -> list[int]:
    """Prompt indices to show: all, or ``max_samples`` spread evenly (so the last, e.g. CJK, prompts appear)."""
    if max_samples >= n_prompts:
        return list(range(n_prompts))
    if max_samples <= 0:
        return []
    step = (n_prompts - 1) / max(max_samples - 1, 1)
    return sorted({round(i * step) for i in range(max_samples)})


def _samples(cmp: Any, tokenizer: Any, max_samples: int) -> str:
    parts = ['<p class="legend"><span class="loop">repeating tail (collapse_class loop)</span>'
             f'<span class="rep">repeated {REPEAT_N}-gram</span> badges: degenerate (loop, low entropy), '
             "repetitive (loop, high entropy), divergent (no loop, high entropy, unlikely), healthy</p>"]
    for dec, by_role in cmp.runs.items():
        base = by_role["baseline"]
        cls = {role: cmp.per_sample[dec][role]["collapse_class"] for role in by_role}
        rows = []
        for p in sample_prompts(base.n_prompts, max_samples):
            u = base.unit(p, 0)
            cells = [f"<td>{html.escape(cmp.prompts[p])}</td>"]
            for role, r in by_role.items():  # baseline, candidate (, reference)
                ids = r.token_ids[u]
                c = cls[role][u]
                sr = seq_rep_n([ids], 4) if len(ids) >= 4 else 0.0
                meta = (f'<span class="badge {html.escape(c)}">{html.escape(c)}</span> '
                        f'<small>seq-rep-4 {sr:.2f}, {len(ids)} tok{", EOS" if r.hit_eos[u] else ""}</small>\n')
                cells.append(f"<td>{meta}{highlighted(tokenizer, ids)}</td>")
            rows.append(f"<tr>{''.join(cells)}</tr>")
        parts.append(f"<h3>{html.escape(dec)} (seed {base.seeds[0]})</h3><table class=\"samples\">"
                     f"<tr><th>prompt</th>{''.join(f'<th>{role}</th>' for role in by_role)}</tr>{''.join(rows)}</table>")
    return "\n".join(parts)


_CODE_SPAN = re.compile(r"`([^`]+)`")


def inline_markdown(line: str) -> str:
    """HTML of one line of the report.md intro: escaped, with Markdown code spans (paths) as ``<code>``."""
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(line))


def render(cmp: Any, plots: dict[str, bytes], tokenizer: Any, markdown_intro: str, max_samples: int = 24) -> str:
    """The whole report.html (``markdown_intro``: the report.md bullet lines, shown as a list)."""
    intro = "".join(f"<li>{inline_markdown(line[2:])}</li>" for line in markdown_intro.splitlines()
                    if line.startswith("- "))
    figs = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, png in plots.items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>entropy-reg compare</title><style>{_CSS}</style></head><body>"
        f"<h1>entropy-reg compare</h1><ul>{intro}</ul>"
        f"<h2>Metrics</h2>{_metric_tables(cmp.rows)}"
        f"<h2>Plots</h2>{figs}"
        f"<h2>Sample completions</h2>{_samples(cmp, tokenizer, max_samples)}"
        "</body></html>\n"
    )
