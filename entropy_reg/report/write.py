"""Render a :class:`~entropy_reg.report.compare.Comparison` into ``--out`` (and optionally W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entropy_reg.report import html as html_report
from entropy_reg.report import markdown
from entropy_reg.report.output import atomic_write, log_wandb, to_json
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
    paths: dict[str, Path | str] = {}
    for name, png in plots.items():
        paths[name] = atomic_write(out / name, png)
    paths["metrics.json"] = atomic_write(out / "metrics.json", payload)
    paths["report.md"] = atomic_write(out / "report.md", md)
    paths["report.html"] = atomic_write(out / "report.html", page)
    if wandb_project:
        paths["wandb"] = log_wandb(cmp, plots, out, project=wandb_project)
    return paths
