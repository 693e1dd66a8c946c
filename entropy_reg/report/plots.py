"""PNG plots of a comparison, returned as bytes (embedded as base64 in the HTML, also saved as files).

Agg canvas directly, no pyplot: headless, thread-safe enough for a CLI, and it never touches the
global matplotlib backend of a caller. The TP(n) curve is drawn by :func:`entropy_reg.metrics.plot_probe`.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from entropy_reg.metrics import plot_probe
from entropy_reg.report.generate import Runs

COLORS = {"baseline": "#1f77b4", "candidate": "#d62728", "reference": "#2ca02c"}


def _figure(n_panels: int, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * n_panels, height))
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def entropy_histograms(runs: dict[str, dict[str, Runs]]) -> bytes:
    """Overlaid histograms of per-token generation entropy, one panel per decoding."""
    fig, axes = _figure(len(runs))
    for ax, (dec, by_role) in zip(axes, runs.items(), strict=True):
        flat = {role: np.concatenate([np.asarray(e, dtype=float) for e in r.entropies] or [np.zeros(0)])
                for role, r in by_role.items()}
        top = max((float(v.max()) for v in flat.values() if v.size), default=1.0)
        bins = np.linspace(0.0, max(top, 1e-3), 31)
        for role, values in flat.items():
            ax.hist(values, bins=bins, alpha=0.5, density=True, color=COLORS.get(role), label=role)
        ax.set_title(f"token entropy ({dec})")
        ax.set_xlabel("entropy (nats)")
        ax.set_ylabel("density")
        ax.legend()
    return _png(fig)


def position_entropy(runs: dict[str, dict[str, Runs]]) -> bytes:
    """Mean entropy at each generated position (over continuations that reach it), per decoding."""
    fig, axes = _figure(len(runs))
    for ax, (dec, by_role) in zip(axes, runs.items(), strict=True):
        top = 0.0
        for role, r in by_role.items():
            width = max((len(e) for e in r.entropies), default=0)
            if not width:
                continue
            grid = np.full((len(r.entropies), width), np.nan)
            for i, e in enumerate(r.entropies):
                grid[i, : len(e)] = e
            mean = np.nanmean(grid, axis=0)
            top = max(top, float(np.nanmax(mean)))
            ax.plot(np.arange(1, width + 1), mean, color=COLORS.get(role), label=role)
        ax.set_title(f"mean entropy by position ({dec})")
        ax.set_xlabel("generated token position")
        ax.set_ylabel("entropy (nats)")
        ax.set_ylim(0.0, 1.1 * top if top > 0 else 1.0)  # a flat line must not sit on the frame
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def probe_curve(probe: dict[str, dict[str, Any]]) -> bytes | None:
    """TP(n) curves, one line per model (None when no probe sentence was usable)."""
    if not probe:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_probe(probe, Path(tmp) / "probe.png", metric="tp")
        return path.read_bytes()


def all_plots(runs: dict[str, dict[str, Runs]], probe: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` in display order."""
    plots = {"entropy_hist.png": entropy_histograms(runs), "entropy_by_position.png": position_entropy(runs)}
    tp = probe_curve(probe)
    if tp is not None:
        plots["probe_tp.png"] = tp
    return plots
