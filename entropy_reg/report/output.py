"""Writing the report directory safely, and the optional W&B run.

Every file is written to a temporary sibling and renamed into place (``os.replace`` is atomic on one
file system), and nothing is written before the whole comparison has succeeded: a failed or
interrupted run never leaves a half-written file, an empty new ``--out`` directory, or a clobbered
earlier report.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from entropy_reg.report.prompts import InputError


def check_out_dir(out: str | Path) -> Path:
    """Prove ``out`` can be written (before hours of generation, not after) without creating it.

    An existing directory gets a probe file; a missing one needs its nearest existing ancestor to be
    a writable directory (the directories are made when the report is written, so a failed compare
    leaves no new empty ``--out`` behind).
    """
    path = Path(out).expanduser()
    try:
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(20, "not a directory")
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
            os.close(fd)
            os.unlink(probe)
        else:
            parent = next(p for p in path.absolute().parents if p.exists())
            if not parent.is_dir():
                raise NotADirectoryError(20, f"{str(parent)!r} is not a directory")
            os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=parent))
    except OSError as err:
        raise InputError(f"output directory {str(path)!r} is not writable: {err.strerror or err}") from None
    return path


def atomic_write(path: Path, data: bytes | str) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)  # --out is created only once there is a report to write
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        from entropy_reg.models.export import current_umask

        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path



def write_report_files(out: Path, plots: dict[str, bytes], payload: str, md: str, page: str) -> dict[str, Path | str]:
    """The PNG plots, ``metrics.json``, ``report.md`` and ``report.html`` of a report already rendered in
    memory (so a rendering error never leaves half a report), each written atomically."""
    paths: dict[str, Path | str] = {}
    for name, png in plots.items():
        paths[name] = atomic_write(out / name, png)
    paths["metrics.json"] = atomic_write(out / "metrics.json", payload)
    paths["report.md"] = atomic_write(out / "report.md", md)
    paths["report.html"] = atomic_write(out / "report.html", page)
    return paths


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(_json_safe(data), ensure_ascii=False, indent=1, allow_nan=False)


def log_wandb(cmp: Any, plots: dict[str, bytes], out: Path, project: str = "entropy-reg") -> str:
    """One W&B run (job_type "compare"): summary scalars, a metrics table, completions, plots.

    Offline (under ``out/wandb``) when no API key is configured. Returns the run directory.
    """
    import io

    import wandb
    from PIL import Image

    from entropy_reg.training.wandb_env import configure_wandb_env

    configure_wandb_env()
    c = cmp.config
    run = wandb.init(project=project, job_type="compare", dir=str(out), reinit="finish_previous",
                     name=f"compare-{Path(c.candidate).stem}-vs-{Path(c.baseline).stem}",
                     config={k: v for k, v in cmp.to_json()["config"].items()})
    try:
        cols = ["section", "metric", "variant", "baseline", "candidate", "difference", "ci_low", "ci_high"]
        data = [[r.section, r.label, r.variant, r.baseline, r.candidate, r.diff,
                 r.interval.low if r.interval else None, r.interval.high if r.interval else None] for r in cmp.rows]
        samples = []
        roles: list[str] = []
        for dec, by_role in cmp.runs.items():
            base, roles = by_role["baseline"], list(by_role)  # baseline, candidate (, reference)
            for p in range(base.n_prompts):
                for si, seed in enumerate(base.seeds):
                    u = base.unit(p, si)
                    samples.append([dec, seed, cmp.prompts[p], *(by_role[r].texts[u] for r in roles)])
        payload: dict[str, Any] = {
            "compare/metrics": wandb.Table(columns=cols, data=data),
            "compare/completions": wandb.Table(columns=["decoding", "seed", "prompt", *roles], data=samples),
        }
        for name, png in plots.items():
            payload[f"compare/{Path(name).stem}"] = wandb.Image(Image.open(io.BytesIO(png)))
        run.log(payload)
        for r in cmp.rows:
            key = f"{r.section}/{r.key}".replace(" ", "_")
            run.summary[f"{key}/baseline"] = r.baseline
            run.summary[f"{key}/candidate"] = r.candidate
            run.summary[f"{key}/diff"] = r.diff
            if r.reference is not None:
                run.summary[f"{key}/reference"] = r.reference
        return str(run.dir)
    finally:
        run.finish()
