"""Render a :class:`~entropy_reg.report.compare.Comparison` into ``--out`` (and optionally W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entropy_reg.report import html as html_report
from entropy_reg.report import markdown
from entropy_reg.report.output import log_wandb, to_json, write_report_files
from entropy_reg.report.plots import all_plots


def write_report(cmp: Any, out: Path, max_samples: int = 24, wandb_project: str | None = None
                 ) -> dict[str, Path | str]:
    """Write PNGs, report.md, report.html and metrics.json (each atomically); returns their paths.

    Everything is rendered in memory first, so a rendering error leaves ``out`` untouched.
    """
    plots = all_plots(cmp.runs, cmp.probe)
    md = markdown.render(cmp)
    page = html_report.render(cmp, plots, cmp.tokenizer, md, max_samples=max_samples)
    payload = to_json(cmp.to_json())
    paths = write_report_files(out, plots, payload, md, page)
    if wandb_project:
        paths["wandb"] = log_wandb(cmp, plots, out, project=wandb_project)
    return paths
