"""Render a :class:`~entropy_reg.report.evaluate.ModelEvaluation` (one model) into ``--out``, and W&B.

The one-model versions of compare's report: the same metric sections, labels and variants (from
:meth:`ModelEvaluation.rows`) with one value column, the same plots (:mod:`.plots`) and completions
highlighted as in compare's HTML (:func:`entropy_reg.report.html.highlighted`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from entropy_reg.report import html as html_report
from entropy_reg.report.markdown import fmt, sections
from entropy_reg.report.output import to_json, write_report_files
from entropy_reg.report.plots import all_plots

ROLE = "model"  # the legend label of the one model in the plots
HEADER = ("metric", "value", "variant")


def _intro(ev: Any) -> list[str]:
    c = ev.config
    step = f" (global_step {ev.global_step})" if ev.global_step is not None else ""
    decs = ", ".join(f"{d} ({len(r.seeds)} seed(s))" for d, r in ev.runs.items())
    return [
        f"- model: `{ev.source}`{step}",
        f"- prompts: {len(ev.prompts)} ({c.prompts_file or 'built-in set'}); decodings: {decs}; "
        f"max_new_tokens={c.max_new_tokens}",
        f"- held-out: {int(ev.heldout.n_tokens.size)} texts ({c.heldout_file or 'embedded heldout split'}), "
        f"max_length={c.max_length}; probe: {len(ev.probes)} sentence(s) x {c.probe_repeats} copies",
        "- the same metrics, conventions and collapse thresholds as `entropy-reg compare` (same code): metrics "
        "on token ids, entropies in nats from raw logits; the variant column names each number's convention. "
        "For confidence intervals compare two models (or pair two saved evaluations: "
        "entropy_reg.report.evaluate.pair_evaluations).",
        "- collapse classes (one per continuation): degenerate = repeating tail at low entropy, repetitive = "
        "repeating tail at higher entropy, divergent = no loop, high entropy, unlikely, healthy = none; "
        "thresholds: entropy_reg.metrics.CollapseThresholds.",
        *_data_intro(ev),
    ]


# --data: the training rows' statistics (entropy_reg.data.statistics), label, key, format
DATA_ROWS = (("rows measured", "rows", "{:.0f}"), ("rows dropped (no response token within max_length)",
             "dropped_rows", "{:.0f}"), ("rows truncated (cut before their end, never ending)", "truncated_share",
             "{:.1%}"), ("label tokens per row, mean", "label_tokens_mean", "{:.1f}"),
             ("label tokens per row, min", "label_tokens_min", "{:.0f}"),
             ("label tokens per row, max", "label_tokens_max", "{:.0f}"),
             ("responses' rep-2 (seq-rep-n)", "rep_2", "{:.4f}"), ("responses' rep-4 (seq-rep-n)", "rep_4", "{:.4f}"),
             ("duplicate responses", "duplicate_share", "{:.1%}"))


def _data_intro(ev: Any) -> list[str]:
    data = getattr(ev, "data", None)
    if data is None:
        return []
    from entropy_reg.data.statistics import describe

    lines = [f"- training data (`--data`): `{data['file']}`, tokenised as training does with max_length="
             f"{data['max_length']}: {describe(data['statistics'])}; warning thresholds: "
             "entropy_reg.data.statistics.THRESHOLDS"]
    return lines + [f"- WARNING (training data): {w}" for w in data["warnings"]]


def data_table(ev: Any) -> list[tuple[str, str, str]]:
    """(label, value, key) of each ``--data`` statistic; empty without ``--data``."""
    data = getattr(ev, "data", None)
    if data is None or not data["statistics"].get("rows"):
        return []
    values = {**data["statistics"], "dropped_rows": data["dropped_rows"]}
    return [(label, fmt_.format(values[key]), key) for label, key, fmt_ in DATA_ROWS]


def table(ev: Any) -> str:
    lines: list[str] = []
    for section, items in sections(ev.rows()).items():
        lines += [f"### {section}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in (r.label, fmt(r.baseline), r.variant)) + " |"
                  for r in items]
        lines.append("")
    if data_table(ev):
        lines += ["### training data (--data)", "", "| statistic | value |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value, _ in data_table(ev)]
        lines.append("")
    return "\n".join(lines)


def render_markdown(ev: Any) -> str:
    return "\n".join(["# entropy-reg eval", "", *_intro(ev), "", table(ev)])


def _metric_tables(ev: Any) -> str:
    parts = []
    for section, items in sections(ev.rows()).items():
        body = "".join(
            f'<tr data-key="{html.escape(r.key)}"><td>{html.escape(r.label)}</td>'
            f'<td class="num">{html.escape(fmt(r.baseline))}</td><td class="variant">{html.escape(r.variant)}</td></tr>'
            for r in items)
        head = "".join(f"<th>{h}</th>" for h in HEADER)
        parts.append(f'<h3>{html.escape(section)}</h3><table class="metrics"><tr>{head}</tr>{body}</table>')
    if data_table(ev):
        body = "".join(f'<tr data-key="data/{html.escape(key)}"><td>{html.escape(label)}</td>'
                       f'<td class="num">{html.escape(value)}</td></tr>' for label, value, key in data_table(ev))
        parts.append('<h3>training data (--data)</h3><table class="metrics"><tr><th>statistic</th><th>value</th>'
                     f"</tr>{body}</table>")
    return "\n".join(parts)


def _samples(ev: Any, max_samples: int) -> str:
    from entropy_reg.metrics import seq_rep_n

    parts = ['<p class="legend"><span class="loop">repeating tail (collapse_class loop)</span>'
             f'<span class="rep">repeated {html_report.REPEAT_N}-gram</span> badges: degenerate (loop, low '
             "entropy), repetitive (loop, high entropy), divergent (no loop, high entropy, unlikely), healthy</p>"]
    per_sample = ev.per_sample()
    for dec, r in ev.runs.items():
        classes = per_sample[dec]["collapse_class"]
        rows = []
        for p in html_report.sample_prompts(r.n_prompts, max_samples):
            u = r.unit(p, 0)
            ids, c = r.token_ids[u], classes[u]
            sr = seq_rep_n([ids], 4) if len(ids) >= 4 else 0.0
            text = html_report.highlighted(ev.tokenizer, ids) if ev.tokenizer is not None else html.escape(r.texts[u])
            meta = (f'<span class="badge {html.escape(c)}">{html.escape(c)}</span> '
                    f'<small>seq-rep-4 {sr:.2f}, {len(ids)} tok{", EOS" if r.hit_eos[u] else ""}</small>\n')
            rows.append(f"<tr><td>{html.escape(ev.prompts[p])}</td><td>{meta}{text}</td></tr>")
        parts.append(f'<h3>{html.escape(dec)} (seed {r.seeds[0]})</h3><table class="samples">'
                     f"<tr><th>prompt</th><th>completion</th></tr>{''.join(rows)}</table>")
    return "\n".join(parts)


def render_html(ev: Any, plots: dict[str, bytes], markdown: str, max_samples: int = 24) -> str:
    import base64

    intro = "".join(f"<li>{html_report.inline_markdown(line[2:])}</li>" for line in markdown.splitlines()
                    if line.startswith("- "))
    figs = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, png in plots.items())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>entropy-reg eval</title><style>{html_report._CSS}</style></head><body>"
        f"<h1>entropy-reg eval</h1><ul>{intro}</ul>"
        f"<h2>Metrics</h2>{_metric_tables(ev)}"
        f"<h2>Plots</h2>{figs}"
        f"<h2>Sample completions</h2>{_samples(ev, max_samples)}"
        "</body></html>\n"
    )


def eval_plots(ev: Any) -> dict[str, bytes]:
    probe = ev.probe_average()
    return all_plots({d: {ROLE: r} for d, r in ev.runs.items()}, {ROLE: probe} if probe else {})


def write_eval_report(ev: Any, out: Path, max_samples: int = 24, wandb_project: str | None = None
                      ) -> dict[str, Path | str]:
    """Write the PNGs, metrics.json, report.md and report.html (each atomically, all rendered first)."""
    plots = eval_plots(ev)
    md = render_markdown(ev)
    page = render_html(ev, plots, md, max_samples=max_samples)
    payload = to_json(ev.to_json())
    paths = write_report_files(out, plots, payload, md, page)
    if wandb_project:
        paths["wandb"] = log_wandb(ev, plots, out, project=wandb_project)
    return paths


def log_wandb(ev: Any, plots: dict[str, bytes], out: Path, project: str = "entropy-reg") -> str:
    """One W&B run (job_type "eval"): ``eval/*`` summary scalars, the metrics and completions tables, plots.

    Offline (under ``out/wandb``) when no API key is configured. Returns the run directory.
    """
    import io
    from dataclasses import asdict

    import wandb
    from PIL import Image

    from entropy_reg.training.wandb_env import configure_wandb_env

    configure_wandb_env()
    run = wandb.init(project=project, job_type="eval", dir=str(out), reinit="finish_previous",
                     name=f"eval-{Path(ev.source).stem or ev.source}",
                     config={"source": ev.source, "global_step": ev.global_step, **asdict(ev.config)})
    try:
        rows = [[r.section, r.label, r.variant, r.baseline] for r in ev.rows()]
        samples = [[d, seed, ev.prompts[p], r.texts[r.unit(p, si)]]
                   for d, r in ev.runs.items() for p in range(r.n_prompts) for si, seed in enumerate(r.seeds)]
        payload: dict[str, Any] = {
            "eval/metrics": wandb.Table(columns=["section", "metric", "variant", "value"], data=rows),
            "eval/completions": wandb.Table(columns=["decoding", "seed", "prompt", "completion"], data=samples),
        }
        for name, png in plots.items():
            payload[f"eval/{Path(name).stem}"] = wandb.Image(Image.open(io.BytesIO(png)))
        run.log(payload)
        for key, value in ev.summary().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                run.summary[f"eval/{key}"] = value
        return str(run.dir)
    finally:
        run.finish()
