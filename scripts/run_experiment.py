"""The experiment, end to end: baseline vs regularized SFT over several seeds, compared, summarised.

For every seed it trains each recipe (``entropy-reg fit``), then runs ``entropy-reg compare`` on the
pair of final checkpoints, and finally reports every metric as mean +- sd over seeds, plus the
protocol's verdict (DESIGN.md: greedy seq-rep-4 at <= 50% of the baseline at <= 3% higher held-out
perplexity).

    python scripts/run_experiment.py                           # tiny recipes, seeds 0 1 2 (CPU)
    python scripts/run_experiment.py --seeds 0 --max-steps 50  # a quick look
    python scripts/run_experiment.py --baseline recipes/smollm2-135m/baseline.yaml \\
        --candidate recipes/smollm2-135m/combined.yaml --seeds 0 1 2 --out runs/smollm2

Runs that already have a final checkpoint are not trained again (delete their folder to retrain), so
an interrupted experiment resumes where it stopped and nothing already written is lost. Two trainings
run side by side by default, each on half of the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], log: Path, threads: int) -> None:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Oversubscribed OpenMP threads spin against each other: give each process its share of the cores.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n--- last lines of {log} ---\n{tail}")


def _last_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def train(recipe: Path, seed: int, out: Path, max_steps: int | None, extra: list[str], threads: int) -> Path:
    run_dir = out / recipe.stem / f"seed{seed}"
    done = run_dir / "DONE"
    ckpt = _last_checkpoint(run_dir)
    if done.exists() and ckpt is not None:
        print(f"  {recipe.stem} seed {seed}: already trained ({ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt})", flush=True)
        return ckpt
    cmd = [sys.executable, "-m", "entropy_reg", "fit", "--config", str(recipe), "--seed_everything", str(seed),
           "--data.init_args.seed", str(seed), "--trainer.logger.init_args.save_dir", str(run_dir),
           "--trainer.logger.init_args.name", f"{recipe.parent.name}-{recipe.stem}-seed{seed}",
           "--trainer.enable_progress_bar", "false"]
    if max_steps is not None:
        cmd += ["--trainer.max_steps", str(max_steps)]
    cmd += extra
    t0 = time.perf_counter()
    print(f"  {recipe.stem} seed {seed}: training ... (log: {run_dir / 'fit.log'})", flush=True)
    _run(cmd, run_dir / "fit.log", threads)
    ckpt = _last_checkpoint(run_dir)
    if ckpt is None:
        raise SystemExit(f"{recipe} seed {seed}: training finished but wrote no last.ckpt under {run_dir}")
    done.write_text(str(ckpt))
    print(f"  {recipe.stem} seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return ckpt


def compare(baseline: Path, candidate: Path, out_dir: Path, compare_args: list[str], threads: int) -> dict:
    metrics = out_dir / "metrics.json"
    if not metrics.exists():
        cmd = [sys.executable, "-m", "entropy_reg", "compare", "--baseline", str(baseline), "--candidate",
               str(candidate), "--out", str(out_dir), *compare_args]
        t0 = time.perf_counter()
        _run(cmd, out_dir.parent / f"{out_dir.name}.log", threads)
        print(f"  compare {out_dir.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(metrics.read_text())


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def summarise(per_seed: dict[int, dict], names: tuple[str, str]) -> tuple[str, dict]:
    """Mean +- sd over seeds of every row that all seeds have."""
    seeds = sorted(per_seed)
    rows: dict[tuple[str, str], dict] = {}
    for seed in seeds:
        for row in per_seed[seed]["rows"]:
            key = (row["section"], row["key"])
            entry = rows.setdefault(key, {"label": row["label"], "variant": row["variant"], "baseline": [], "candidate": []})
            entry["baseline"].append(row["baseline"])
            entry["candidate"].append(row["candidate"])
    base_name, cand_name = names
    lines = [
        f"| metric | variant | {base_name} (mean ± sd) | {cand_name} (mean ± sd) | change |",
        "|---|---|---|---|---|",
    ]
    summary: dict[str, dict] = {}
    for (section, key), entry in rows.items():
        if len(entry["baseline"]) != len(seeds) or any(v is None for v in entry["baseline"] + entry["candidate"]):
            continue
        b, bs = _mean_sd(entry["baseline"])
        c, cs = _mean_sd(entry["candidate"])
        rel = f"{100 * (c - b) / abs(b):+.1f}%" if b else "n/a"
        lines.append(f"| {section} {entry['label']} | {entry['variant']} | {b:.4g} ± {bs:.2g} | {c:.4g} ± {cs:.2g} | {rel} |")
        summary[f"{section}/{key}"] = {"baseline_mean": b, "baseline_sd": bs, "candidate_mean": c, "candidate_sd": cs,
                                       "baseline": entry["baseline"], "candidate": entry["candidate"]}
    return "\n".join(lines), summary


def verdict(summary: dict, per_seed: dict[int, dict]) -> str:
    rep = next((v for k, v in summary.items() if k.split("/", 1)[0].startswith("greedy") and k.endswith("seq_rep_4")), None)
    ppl = {role: [per_seed[s]["heldout"][role]["perplexity"] for s in sorted(per_seed)] for role in ("baseline", "candidate")}
    pb, pc = statistics.fmean(ppl["baseline"]), statistics.fmean(ppl["candidate"])
    parts = [f"held-out perplexity: baseline {pb:.3f}, candidate {pc:.3f} ({100 * (pc - pb) / pb:+.2f}%)"]
    if rep is not None and rep["baseline_mean"] > 0:
        ratio = rep["candidate_mean"] / rep["baseline_mean"]
        ok = ratio <= 0.5 and (pc - pb) / pb <= 0.03
        parts.append(f"greedy seq-rep-4: candidate/baseline = {ratio:.2f}")
        parts.append("TARGET MET (<= 0.50 at <= +3% ppl)" if ok else "target NOT met (wanted <= 0.50 at <= +3% ppl)")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=ROOT / "recipes/tiny/baseline.yaml")
    ap.add_argument("--candidate", type=Path, default=ROOT / "recipes/tiny/combined.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "runs/experiment")
    ap.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps of both recipes")
    ap.add_argument("--parallel", type=int, default=2, help="trainings run side by side")
    ap.add_argument("--fit-arg", action="append", default=[], help="extra override for both fits, e.g. --fit-arg=--trainer.limit_val_batches=5")
    ap.add_argument("--compare-arg", action="append", default=[], help="extra argument for compare, e.g. --compare-arg=--max-new-tokens=64")
    args = ap.parse_args(argv)
    for recipe in (args.baseline, args.candidate):
        if not recipe.is_file():
            ap.error(f"recipe not found: {recipe}")
    if args.parallel < 1:
        ap.error("--parallel must be >= 1")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.parallel)
    t0 = time.perf_counter()
    print(f"experiment: {args.baseline.name} vs {args.candidate.name}, seeds {args.seeds}, out {out}", flush=True)
    jobs = [(recipe, seed) for seed in args.seeds for recipe in (args.baseline, args.candidate)]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {job: pool.submit(train, job[0].resolve(), job[1], out, args.max_steps, args.fit_arg, threads) for job in jobs}
        ckpts = {job: f.result() for job, f in futures.items()}
    per_seed: dict[int, dict] = {}
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {
            seed: pool.submit(compare, ckpts[(args.baseline, seed)], ckpts[(args.candidate, seed)],
                              out / "compare" / f"seed{seed}", args.compare_arg, threads)
            for seed in args.seeds
        }
        per_seed = {seed: f.result() for seed, f in futures.items()}
    table, summary = summarise(per_seed, (args.baseline.stem, args.candidate.stem))
    line = verdict(summary, per_seed)
    text = (f"# {args.baseline.stem} vs {args.candidate.stem}: mean ± sd over seeds {args.seeds}\n\n"
            f"Command: `python scripts/run_experiment.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            f"{table}\n\n**{line}**\n\nPer-seed reports: " +
            ", ".join(f"`{(out / 'compare' / f'seed{s}' / 'report.html')}`" for s in args.seeds) + "\n")
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "metrics": summary, "verdict": line}, indent=2))
    print()
    print(table)
    print()
    print(line)
    print(f"\nsummary: {out / 'summary.md'}")
    print(f"report (seed {args.seeds[0]}): {out / 'compare' / f'seed{args.seeds[0]}' / 'report.html'}")
    print(f"total time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
