"""Tuning grid of the SmolLM2-135M-Instruct experiment: regularized variants against plain SFT at one seed.

Every variant is a committed recipe with a few keys changed; this script writes each variant as a YAML
under ``<out>/recipes/`` (so the exact config of every tuning row is on disk) and runs them through
``scripts/run_experiment.py`` in groups that share a baseline: full fine-tuning against
``recipes/smollm2-135m/baseline.yaml``, and LoRA against the same baseline with the same LoRA settings.
Comparisons are greedy-only without the reference model (the cheap part of the target: seq-rep-4,
low-entropy-loop share, TP(8), perplexity), so a row costs one training and one short comparison.

    python scripts/tune_smollm2.py                          # round 1, seed 0 (29 min on the shared 2-core CPU)
    python scripts/tune_smollm2.py --group lora --seeds 0 1 2
    python scripts/tune_smollm2.py --only ditto-w2 --seeds 1 2   # the best variants at more seeds
    python scripts/tune_smollm2.py --list                   # the grid, without running anything
    python scripts/tune_smollm2.py --table                  # the tuning table of every finished comparison

Resumable like run_experiment.py: finished trainings and comparisons are skipped. The full-fine-tuning
group reuses the plain-SFT runs of ``runs/main/smollm2`` (same recipe, seed and settings) when they exist.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from frontier import _set  # noqa: E402  (one home for the dotted-key edit)
from run_experiment import PRESETS, row_values  # noqa: E402

RECIPES = ROOT / "recipes" / "smollm2-135m"
OBJ = "model.init_args.objectives"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
LORA_KEYS = {"model.init_args.lora": LORA, "model.init_args.learning_rate": 2.0e-4}


def _seq_ul_objective() -> dict:
    recipe = yaml.safe_load((RECIPES / "seq_ul.yaml").read_text())
    return recipe["model"]["init_args"]["objectives"][0]


# name -> (group, base recipe, {dotted key (list indices as numbers): new value}); "+" appends to a list.
GRID: dict[str, tuple[str, str, dict]] = {
    "ditto-w1": ("full", "ditto.yaml", {}),  # the main job's recipe as it is (for runs with other --max-steps)
    "ditto-w0.5": ("full", "ditto.yaml", {f"{OBJ}.0.init_args.weight": 0.5}),
    "ditto-w2": ("full", "ditto.yaml", {f"{OBJ}.0.init_args.weight": 2.0}),
    "ditto-lam0.25": ("full", "ditto.yaml", {f"{OBJ}.0.init_args.lam": 0.25}),
    # DITTO only in the last 20 of 40 steps, on every one of them: SFT first builds the loop, DITTO then
    # removes it while the learning rate is already decaying (same number of DITTO batches as rate 0.5).
    "ditto-late": ("full", "ditto.yaml", {"model.init_args.schedule": {"hold_steps": 20, "kind": "constant"},
                                          f"{OBJ}.0.init_args.rate": 1.0}),
    "ditto-sequl": ("full", "ditto.yaml", {f"{OBJ}.+": _seq_ul_objective()}),
    # round 2, after round 1 showed one strength/perplexity curve (w 0.5 / 1 / 2) and a late DITTO too weak:
    "ditto-w4": ("full", "ditto.yaml", {f"{OBJ}.0.init_args.weight": 4.0}),
    # only growth from copy to copy is penalised (p_n > p_(n-1)): the black hole, not copying as such
    "ditto-growth-w2": ("full", "ditto.yaml", {f"{OBJ}.0.init_args.weight": 2.0, f"{OBJ}.0.init_args.lam": 1.0,
                                               f"{OBJ}.0.init_args.one_sided": True}),
    # DITTO in the first 20 steps only (at the high learning rate), then plain SFT
    "ditto-early": ("full", "ditto.yaml", {"model.init_args.schedule": {"hold_steps": 20, "kind": "constant",
                                                                        "start": 1.0, "end": 0.0},
                                           f"{OBJ}.0.init_args.rate": 1.0}),
    "baseline-lora": ("lora", "baseline.yaml", dict(LORA_KEYS)),
    "ditto-lora": ("lora", "ditto.yaml", dict(LORA_KEYS)),
    "ditto-lora-w2": ("lora", "ditto.yaml", {**LORA_KEYS, f"{OBJ}.0.init_args.weight": 2.0}),
}
BASELINES = {"full": "baseline", "lora": "baseline-lora"}
# run only when named with --only (the default run is round 1)
ROUND_2_AND_LATER = ("ditto-w1", "ditto-w0.5", "ditto-w4", "ditto-growth-w2", "ditto-early")


def write_variant(name: str, out: Path) -> Path:
    _, base, changes = GRID[name]
    config = yaml.safe_load((RECIPES / base).read_text())
    for dotted, value in changes.items():
        _set(config, dotted, copy.deepcopy(value))
    path = out / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# {name}: written by scripts/tune_smollm2.py from recipes/smollm2-135m/{base} with\n"
              + "".join(f"#   {k} = {v}\n" for k, v in changes.items()))
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def run_group(group: str, names: list[str], seeds: list[str], out: Path, extra: list[str]) -> int:
    group_out = out / group
    baseline_name = BASELINES[group]
    baseline = RECIPES / "baseline.yaml" if baseline_name == "baseline" else write_variant(baseline_name, out)
    changes_training = any(a.split("=")[0] in ("--max-steps", "--fit-arg") for a in extra)
    if group == "full" and not changes_training:  # the main experiment's plain SFT, same settings: reuse its runs
        shared = ROOT / PRESETS["smollm2"].out / "baseline"
        link = group_out / "baseline"
        if shared.is_dir() and not link.exists():
            group_out.mkdir(parents=True, exist_ok=True)
            link.symlink_to(shared)
    cmd = [sys.executable, str(ROOT / "scripts" / "run_experiment.py"), "--model", "smollm2",
           "--baseline", str(baseline), "--reference", "none", "--out", str(group_out), "--seeds", *seeds,
           "--compare-arg=--decoding=greedy", *extra]
    for name in names:
        cmd += ["--candidate", str(write_variant(name, out))]
    print(f"tune {group}: {' '.join(names)} vs {baseline_name}, seeds {' '.join(seeds)}", flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=dict(os.environ))


def table(out: Path) -> str:
    """Markdown: one row per finished comparison under ``out`` (variant, seed) against its group's baseline,
    then, for variants with several seeds, their per-seed values side by side."""
    lines = ["| variant | group | seed | greedy seq-rep-4 (SFT -> variant, ratio) | low-entropy-loop share | "
             "TP(8) | held-out ppl vs SFT |", "|---|---|---|---|---|---|---|"]
    per_variant: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for metrics_path in sorted(out.glob("*/compare/*/seed*/metrics.json")):
        m = json.loads(metrics_path.read_text())
        name, seed, group = metrics_path.parent.parent.name, metrics_path.parent.name[4:], metrics_path.parents[3].name
        rep_b, rep_c = (row_values(m, "greedy", "seq_rep_4", r) for r in ("baseline", "candidate"))
        loop_b, loop_c = (row_values(m, "greedy", "degenerate_share", r) for r in ("baseline", "candidate"))
        tp_b, tp_c = (row_values(m, "self-reinforcement probe", "tp_N", r) for r in ("baseline", "candidate"))
        ppl_b, ppl_c = (m["heldout"][r]["perplexity"] for r in ("baseline", "candidate"))
        lines.append(f"| {name} | {group} | {seed} | {rep_b:.3f} -> {rep_c:.3f} ({rep_c / rep_b:.2f}) | "
                     f"{loop_b:.2f} -> {loop_c:.2f} | {tp_b:.3f} -> {tp_c:.3f} | "
                     f"{ppl_b:.2f} -> {ppl_c:.2f} ({100 * (ppl_c / ppl_b - 1):+.1f}%) |")
        per_variant.setdefault((group, name), []).append((rep_c / rep_b, loop_c, tp_c, 100 * (ppl_c / ppl_b - 1)))
    several = {k: v for k, v in per_variant.items() if len(v) > 1}
    if several:
        lines += ["", "| variant | group | seeds | seq-rep-4 ratio | low-entropy-loop share | TP(8) | ppl vs SFT |",
                  "|---|---|---|---|---|---|---|"]
        for (group, name), rows in sorted(several.items()):
            cols = [" / ".join(fmt.format(r[i]) for r in rows) for i, fmt in
                    enumerate(("{:.2f}", "{:.2f}", "{:.2f}", "{:+.1f}%"))]
            lines.append(f"| {name} | {group} | {len(rows)} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=sorted(BASELINES), action="append", help="groups to run (default: all)")
    ap.add_argument("--only", action="append", choices=[n for n in GRID if n not in BASELINES.values()],
                    help="variants to run (default: every variant of the groups)")
    ap.add_argument("--seeds", nargs="+", default=["0"])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "tune" / "smollm2")
    ap.add_argument("--list", action="store_true", help="print the grid and exit")
    ap.add_argument("--table", action="store_true", help="print the table of finished comparisons and exit")
    args, extra = ap.parse_known_args(argv)  # anything else goes to run_experiment.py (--parallel, --threads)
    if args.list:
        for name, (group, base, changes) in GRID.items():
            print(f"{name:16s} {group:5s} {base:14s} {changes}")
        return 0
    if args.table:
        print(table(args.out.resolve()))
        return 0
    for seed in args.seeds:
        if not seed.isdigit():
            ap.error(f"--seeds: {seed!r} is not a non-negative integer")
    status = 0
    for group in args.group or sorted(BASELINES):
        names = [n for n, (g, _, _) in GRID.items() if g == group and n != BASELINES[group]
                 and (n in args.only if args.only else n not in ROUND_2_AND_LATER)]
        if names:
            status = run_group(group, names, args.seeds, args.out.resolve(), extra) or status
    return status


if __name__ == "__main__":
    raise SystemExit(main())
