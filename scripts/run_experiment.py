"""The experiment, end to end: plain SFT vs regularized SFT over seeds, compared with the base model.

For every seed it trains the baseline recipe and each candidate recipe (``entropy-reg fit``), then runs
``entropy-reg compare --baseline SFT --candidate SFT+REG --reference BASE`` per candidate, and finally
reports every metric as mean +- sd over seeds, whether the testbed shows low-entropy collapse at all,
and the verdict against the target.

    python scripts/run_experiment.py                     # the main job: SmolLM2-135M-Instruct, seed 0
    python scripts/run_experiment.py --model tiny        # tiny Llama recipes, seeds 0 1 2 (CI-scale)
    python scripts/run_experiment.py --candidate recipes/smollm2-135m/ct.yaml \\
        --candidate recipes/smollm2-135m/ditto.yaml --seeds 0 1 2 --out runs/smollm2-3seeds

Presets (``--model``): ``smollm2`` trains ``recipes/smollm2-135m/baseline.yaml`` vs ``ct_ditto.yaml`` (the
contrastive token loss with response negatives at weight 0.5 + DITTO at weight 0.5: on the whole-row
testbed the frontier's point, docs/frontier.md, that met the most target criteria over its seeds) for 40 steps of 4 x 128-token batches on rows that end as written (``truncation=drop``), and
uses the untouched pretrained model as the reference; ``tiny`` trains ``recipes/tiny/baseline.yaml`` vs
``combined.yaml`` (no reference: the tiny model starts from random weights). Every option overrides its
preset. Every compared checkpoint must hold the final step (``global_step == max_steps``, checked).

Target (issue 19), every seed: greedy seq-rep-4 and the share of continuations in any loop at or below the
base model's, low-entropy-loop share <= 0.05, probe TP(8) <= 0.5, and >= 90% of plain SFT's held-out
perplexity gain over the base model kept. A result counts only on a testbed that collapses: the
baseline's TP(8) must be >= 0.5 with a non-zero low-entropy-loop share, and the summary says when it is not.

Runs that already have a final checkpoint are not trained again, and finished comparisons are not
repeated (delete their folder to redo them), so an interrupted experiment resumes where it stopped.
Progress lines (step k/N, loss, time left) of every training are relayed to the terminal.

Ctrl-C (SIGINT): every process the script started is stopped the way ``entropy-reg fit`` stops on Ctrl-C
(the step under way finishes and is saved in ``last.ckpt``; a second Ctrl-C kills them at once), nothing
new is started, the script says which trainings and comparisons finished, which were interrupted at
which step, and exits 130. Running the same command again resumes: finished runs are kept and an
interrupted training continues from its checkpoint (``--ckpt_path``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Target (issue 19), every seed, on whole-row data: greedy seq-rep-4 and the share of continuations in any
# loop (low- or high-entropy) at or below the base model's, low-entropy-loop share <= 0.05, probe TP(8) <= 0.5,
# while keeping >= 90% of plain SFT's held-out perplexity gain over the base model.
TARGET_TP = 0.5
TARGET_LOOP_SHARE = 0.05
TARGET_PPL_GAIN_KEPT = 0.90
COLLAPSE_MIN_TP = 0.5


# Generation metrics during the main job's trainings: eval/* over steps in their W&B runs (collapse grows as
# SFT goes on). The trainings have no validation loop, so GenerationEval runs every N steps instead: 8 of
# compare's built-in prompts (6 English, 2 Chinese), greedy, 48 new tokens, one batch. Measured on the
# SmolLM2 main job (1 thread per training, as with --parallel 2 on 2 cores): one evaluation costs ~1.15
# training steps (41 s vs a 36 s median step on a loaded machine), so ~6% of the training time at N = 20.
TRAIN_EVAL_EVERY = 20
TRAIN_EVAL_PROMPTS = (0, 4, 7, 10, 14, 17, 19, 20)  # indices into entropy_reg.report.prompts.DEFAULT_PROMPTS


def train_eval_args(every: int = TRAIN_EVAL_EVERY, chat: bool = True) -> list[str]:
    """``entropy-reg fit`` overrides that add a GenerationEval every ``every`` steps (after the recipe's own
    callbacks, whose GenerationEval only runs at validation end)."""
    from entropy_reg.report.prompts import DEFAULT_PROMPTS

    prompts = [DEFAULT_PROMPTS[i] for i in TRAIN_EVAL_PROMPTS]
    return ["--trainer.callbacks+=entropy_reg.callbacks.GenerationEval",
            f"--trainer.callbacks.every_n_steps={every}", "--trainer.callbacks.on_validation_end=false",
            "--trainer.callbacks.decodings=[greedy]", "--trainer.callbacks.max_new_tokens=48",
            f"--trainer.callbacks.batch_size={len(prompts)}", f"--trainer.callbacks.use_chat_template={str(chat).lower()}",
            "--trainer.callbacks.log_histogram=false", "--trainer.callbacks.progress=false",
            "--trainer.callbacks.prompts=" + json.dumps(prompts, ensure_ascii=False)]


@dataclass
class Preset:
    baseline: str
    candidates: list[str]
    reference: str | None
    seeds: list[int]
    out: str
    fit_args: list[str] = field(default_factory=list)
    compare_args: list[str] = field(default_factory=list)
    train_eval: bool = False  # add train_eval_args() to every training


PRESETS = {
    "smollm2": Preset(
        baseline="recipes/smollm2-135m/baseline.yaml",
        candidates=["recipes/smollm2-135m/ct_ditto.yaml"],
        reference="embedded:smollm2-135m-instruct",
        seeds=[0],
        out="runs/main/smollm2",
        # 40 optimizer steps of 4 x 128 tokens; held-out metrics come from compare, so no validation loop.
        # truncation=drop: every training row ends as written (with its end-of-turn). Rows cut at 128 tokens
        # (62% of them with the chat template) teach the model never to stop, which by itself doubled plain
        # SFT's greedy seq-rep-4; dropping them keeps the 38% that fit, at the cost of a shorter-answer bias.
        fit_args=["--trainer.max_steps=40", "--data.init_args.batch_size=4", "--data.init_args.max_length=128",
                  "--data.init_args.truncation=drop", "--trainer.limit_val_batches=0",
                  "--trainer.log_every_n_steps=5"],
        # 128 new tokens: shorter continuations end before a loop has repeated enough to show its collapse.
        compare_args=["--max-new-tokens=128", "--seeds=1", "--max-heldout=48", "--max-length=128",
                      "--probe-sentences=8", "--no-progress"],
        train_eval=True,
    ),
    "tiny": Preset(
        baseline="recipes/tiny/baseline.yaml",
        candidates=["recipes/tiny/combined.yaml"],
        reference=None,
        seeds=[0, 1, 2],
        out="runs/main/tiny",
        compare_args=["--no-progress"],
    ),
}

_PROGRESS_LINE = re.compile(r"^\[[^\]]*\] step \d+")  # ProgressLog's lines
_print_lock = threading.Lock()
EXIT_INTERRUPTED = 130
# The processes running now, and whether the experiment is stopping (Ctrl-C): nothing new starts then.
_procs: set[subprocess.Popen] = set()
_procs_lock = threading.Lock()
_stopping = threading.Event()


class Stopped(Exception):
    """A step that did not run (or was cut short) because the experiment is stopping."""


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def _run(cmd: list[str], log: Path, threads: int, relay: str | None = None) -> None:
    """Run ``cmd`` with its output in ``log``; progress lines are also relayed, prefixed with ``relay``."""
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Oversubscribed OpenMP threads spin against each other: give each process its share of the cores.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a" if "--ckpt_path" in cmd else "w") as f:
        with _procs_lock:
            if _stopping.is_set():
                raise Stopped
            # Its own process group: a Ctrl-C in the terminal reaches this script only, which then stops
            # every child exactly once (a second SIGINT would abort a training without saving).
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                                    start_new_session=True)
            _procs.add(proc)
        try:
            for line in proc.stdout:
                f.write(line)
                if relay and _PROGRESS_LINE.match(line):
                    say(f"    {relay}: " + line.split("] ", 1)[1].rstrip())
            returncode = proc.wait()
        finally:
            with _procs_lock:
                _procs.discard(proc)
    if _stopping.is_set():
        raise Stopped
    if returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise SystemExit(f"command failed (exit {returncode}): {' '.join(cmd)}\n--- last lines of {log} ---\n{tail}")


def _last_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def expected_steps(recipe: Path, extra: list[str]) -> int | None:
    """The ``max_steps`` a training of ``recipe`` with overrides ``extra`` must end at (None: not set)."""
    import yaml

    for arg in reversed(extra):
        if arg.startswith("--trainer.max_steps="):
            return int(arg.split("=", 1)[1])
    steps = (yaml.safe_load(recipe.read_text()).get("trainer") or {}).get("max_steps")
    return None if steps in (None, -1) else int(steps)


def checkpoint_step(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def check_final_step(ckpt: Path, steps: int | None) -> None:
    """Refuse a checkpoint that does not hold the last step: comparing it would describe another model."""
    if steps is None:
        return
    found = checkpoint_step(ckpt)
    if found != steps:
        raise SystemExit(f"{_rel(ckpt)} holds global_step {found}, not the {steps} steps the run was given: "
                         "comparing it would describe another model (delete its run folder to retrain)")


def _stop_children(grace_s: float = 900.0) -> None:
    """Stop every running process as Ctrl-C stops ``entropy-reg fit`` (save, then exit); kill on a second Ctrl-C."""
    with _procs_lock:
        _stopping.set()
        procs = list(_procs)
    if not procs:
        return
    say(f"\ninterrupted: stopping {len(procs)} running process(es) after their current step (they save a "
        "checkpoint; Ctrl-C again kills them at once) ...")
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    try:
        for proc in procs:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _interrupted_checkpoint(run_dir: Path, steps: int | None) -> tuple[Path, int] | None:
    """The checkpoint an interrupted (or failed) training left, and its step, if it is short of ``steps``."""
    ckpt = _last_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is None:
        return None
    try:
        step = checkpoint_step(ckpt)
    except Exception:  # noqa: BLE001 - a checkpoint cut short by a kill: train from scratch
        return None
    return (ckpt, step) if steps is None or 0 < step < steps else None


def train(recipe: Path, seed: int, out: Path, extra: list[str], threads: int) -> Path:
    run_dir = out / recipe.stem / f"seed{seed}"
    done = run_dir / "DONE"
    ckpt = _last_checkpoint(run_dir)
    if done.exists() and ckpt is not None:
        check_final_step(ckpt, expected_steps(recipe, extra))
        say(f"  {recipe.stem} seed {seed}: already trained ({_rel(ckpt)})")
        return ckpt
    name = f"{recipe.parent.name}-{recipe.stem}-seed{seed}"
    cmd = [sys.executable, "-m", "entropy_reg", "fit", "--config", str(recipe), "--seed_everything", str(seed),
           "--data.init_args.seed", str(seed), "--trainer.logger.init_args.save_dir", str(run_dir),
           "--trainer.logger.init_args.name", name, "--trainer.enable_progress_bar", "false", *extra,
           "--trainer.callbacks+=entropy_reg.callbacks.ProgressLog"]
    resume = None if done.exists() else _interrupted_checkpoint(run_dir, expected_steps(recipe, extra))
    if resume is not None:
        cmd += ["--ckpt_path", str(resume[0])]
        say(f"  {recipe.stem} seed {seed}: resuming the interrupted training from step {resume[1]} ({_rel(resume[0])})")
    t0 = time.perf_counter()
    say(f"  {recipe.stem} seed {seed}: training ... (log: {_rel(run_dir / 'fit.log')})")
    _run(cmd, run_dir / "fit.log", threads, relay=f"{recipe.stem} seed {seed}")
    ckpt = _last_checkpoint(run_dir)
    if ckpt is None:
        raise SystemExit(f"{recipe} seed {seed}: training finished but wrote no last.ckpt under {run_dir}")
    check_final_step(ckpt, expected_steps(recipe, extra))
    done.write_text(str(ckpt))
    say(f"  {recipe.stem} seed {seed}: trained in {time.perf_counter() - t0:.0f} s")
    return ckpt


def compare(baseline: Path, candidate: Path, reference: str | None, out_dir: Path, compare_args: list[str],
            threads: int) -> dict:
    metrics = out_dir / "metrics.json"
    if not metrics.exists():
        cmd = [sys.executable, "-m", "entropy_reg", "compare", "--baseline", str(baseline), "--candidate",
               str(candidate), "--out", str(out_dir), f"--threads={threads}", *compare_args]
        if reference:
            cmd += ["--reference", reference]
        t0 = time.perf_counter()
        say(f"  compare {_rel(out_dir)}: generating and scoring ... (log: {_rel(out_dir.parent / (out_dir.name + '.log'))})")
        _run(cmd, out_dir.parent / f"{out_dir.name}.log", threads)
        say(f"  compare {_rel(out_dir)}: {time.perf_counter() - t0:.0f} s")
    return json.loads(metrics.read_text())


# -------------------------------------------------------------------------------------------------
# Summary
# -------------------------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def _fmt(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    return f"{mean:.4g}" if len(values) == 1 else f"{mean:.4g} ± {sd:.2g}"


def row_values(metrics: dict, section_prefix: str, key: str, role: str) -> float | None:
    """The value of ``role`` (baseline/candidate/reference) of the first row whose section starts with
    ``section_prefix`` and whose key is ``key`` in one compare's metrics.json."""
    for row in metrics["rows"]:
        if row["section"].startswith(section_prefix) and row["key"] == key:
            value = row.get(role)
            return None if value is None else float(value)
    return None


def summarise(results: dict[str, dict[int, dict]], seeds: list[int], baseline_name: str,
              has_reference: bool) -> str:
    """Markdown table: every row of the compare reports, mean (± sd) over seeds, one column per model."""
    first = next(iter(results.values()))[seeds[0]]
    names = list(results)
    head = (["reference"] if has_reference else []) + [baseline_name] + names
    lines = ["| metric | variant | " + " | ".join(head) + " | " + " | ".join(f"{n} vs {baseline_name}" for n in names) + " |",
             "|---|---|" + "---|" * (len(head) + len(names))]
    for row in first["rows"]:
        section, key = row["section"], row["key"]
        cells, changes = [], []
        roles = (["reference"] if has_reference else []) + ["baseline"]
        anchor = results[names[0]]
        ok = True
        for role in roles:
            vals = [row_values(anchor[s], section, key, role) for s in seeds]
            if any(v is None for v in vals):
                ok = False
                break
            cells.append(_fmt(vals))
        if not ok:
            continue
        base_mean = _mean_sd([row_values(anchor[s], section, key, "baseline") for s in seeds])[0]
        for name in names:
            vals = [row_values(results[name][s], section, key, "candidate") for s in seeds]
            if any(v is None for v in vals):
                cells.append("n/a")
                changes.append("n/a")
                continue
            cells.append(_fmt(vals))
            mean = _mean_sd(vals)[0]
            changes.append(f"{100 * (mean - base_mean) / abs(base_mean):+.1f}%" if base_mean else "n/a")
        lines.append(f"| {section}: {row['label']} | {row['variant']} | " + " | ".join(cells + changes) + " |")
    return "\n".join(lines)


def _probe_tp(metrics: dict, role: str) -> float | None:
    return row_values(metrics, "self-reinforcement probe", "tp_N", role)


def collapse_check(results: dict[str, dict[int, dict]], seeds: list[int]) -> tuple[bool, str]:
    """Does the plain-SFT baseline show low-entropy collapse (TP(8) >= 0.5, some greedy low-entropy loops)?"""
    anchor = next(iter(results.values()))
    tps = [_probe_tp(anchor[s], "baseline") for s in seeds]
    loops = [row_values(anchor[s], "greedy", "degenerate_share", "baseline") for s in seeds]
    if any(v is None for v in tps + loops):
        return False, "collapse check: the reports lack the probe or the greedy degenerate share"
    ok = all(t >= COLLAPSE_MIN_TP for t in tps) and all(v > 0 for v in loops)
    desc = (f"baseline probe TP(N) {', '.join(f'{t:.2f}' for t in tps)}; greedy low-entropy-loop share "
            f"{', '.join(f'{v:.3f}' for v in loops)} (seeds {seeds})")
    if ok:
        return True, f"the testbed collapses: {desc}"
    return False, (f"THE TESTBED DOES NOT SHOW LOW-ENTROPY COLLAPSE ({desc}; wanted TP >= {COLLAPSE_MIN_TP} and a "
                   "non-zero loop share): the numbers below measure something else")


def any_loop_share(metrics: dict, role: str) -> float | None:
    """Share of greedy continuations in a loop, low-entropy (degenerate) or not (repetitive)."""
    low, flat = (row_values(metrics, "greedy", k, role) for k in ("degenerate_share", "repetitive_share"))
    return None if low is None or flat is None else low + flat


def target_checks(rep: float, rep_base: float, loops: float | None, loops_base: float, low: float | None,
                  tp: float | None, ppl: float, ppl_sft: float, ppl_base: float) -> dict[str, bool]:
    """The target's five criteria for one seed of one point, ``{label with the values: met}`` (the one
    definition; ``verdict`` and ``scripts/frontier.py`` both use it). The base model sets the bar for
    repetition, plain SFT of the same seed the perplexity gain to keep."""
    gain = ppl_base - ppl_sft
    kept = (ppl_base - ppl) / gain if gain > 0 else float("nan")
    return {
        f"seq-rep-4 {rep:.3f} vs base {rep_base:.3f}": rep <= rep_base,
        f"any-loop share {'n/a' if loops is None else f'{loops:.2f}'} vs base {loops_base:.2f}":
            loops is not None and loops <= loops_base,
        f"low-entropy loops {'n/a' if low is None else f'{low:.2f}'}": low is not None and low <= TARGET_LOOP_SHARE,
        f"TP(N) {'n/a' if tp is None else f'{tp:.2f}'}": tp is not None and tp <= TARGET_TP,
        f"ppl gain kept {100 * kept:.0f}%": kept >= TARGET_PPL_GAIN_KEPT,
    }


def verdict(name: str, per_seed: dict[int, dict], seeds: list[int]) -> tuple[bool, str]:
    """Target check of one candidate on every seed, from compare's metrics (reference = the base model)."""
    parts, met = [], True
    for seed in seeds:
        m = per_seed[seed]
        rep_c, rep_ref = (row_values(m, "greedy", "seq_rep_4", r) for r in ("candidate", "reference"))
        loops_c, loops_ref = any_loop_share(m, "candidate"), any_loop_share(m, "reference")
        ppl = {r: m["heldout"][r]["perplexity"] for r in ("baseline", "candidate", "reference") if r in m["heldout"]}
        if rep_ref is None or loops_ref is None or "reference" not in ppl:
            return False, f"{name}: no verdict: the comparison has no reference (base model) to set the bar"
        checks = target_checks(rep_c, rep_ref, loops_c, loops_ref, row_values(m, "greedy", "degenerate_share", "candidate"),
                               _probe_tp(m, "candidate"), ppl["candidate"], ppl["baseline"], ppl["reference"])
        met &= all(checks.values())
        parts.append(f"seed {seed}: " + ", ".join(f"{k} ({'ok' if ok else 'MISSED'})" for k, ok in checks.items()))
    head = f"{name}: TARGET MET on every seed" if met else f"{name}: target not met"
    return met, head + " — " + "; ".join(parts)


TARGET_TEXT = (f"target, every seed: greedy seq-rep-4 and any-loop share <= the base model's, low-entropy-loop share "
               f"<= {TARGET_LOOP_SHARE}, probe TP(N) <= {TARGET_TP}, and >= {TARGET_PPL_GAIN_KEPT:.0%} of plain SFT's "
               "held-out perplexity gain over the base model kept")


@contextlib.contextmanager
def _pool(workers: int):
    """A thread pool that, on Ctrl-C, stops the running processes first (its workers wait on them) and
    starts no queued job; otherwise it waits for every job as ``with ThreadPoolExecutor`` does."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool
    except (KeyboardInterrupt, Stopped):
        _stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def report_interrupt(jobs: list[tuple[Path, int]], candidates: list[Path], seeds: list[int], out: Path,
                     fit_args: list[str], argv: list[str] | None) -> None:
    """What finished, what was interrupted where, and the command that resumes."""
    say("\ninterrupted. State of the experiment:")
    for recipe, seed in jobs:
        run_dir = out / recipe.stem / f"seed{seed}"
        ckpt = _last_checkpoint(run_dir) if run_dir.is_dir() else None
        if (run_dir / "DONE").exists() and ckpt is not None:
            say(f"  finished:    {recipe.stem} seed {seed} ({_rel(ckpt)})")
            continue
        partial = _interrupted_checkpoint(run_dir, expected_steps(recipe, fit_args))
        if partial is not None:
            say(f"  interrupted: {recipe.stem} seed {seed} at step {partial[1]} ({_rel(partial[0])}; resumes there)")
        else:
            say(f"  not trained: {recipe.stem} seed {seed}")
    for c in candidates:
        for seed in seeds:
            done = (out / "compare" / c.stem / f"seed{seed}" / "metrics.json").exists()
            say(f"  {'finished:   ' if done else 'not done:   '} compare {c.stem} seed {seed}")
    command = shlex.join(["python", "scripts/run_experiment.py", *(sys.argv[1:] if argv is None else argv)])
    say(f"resume with the same command: {command}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(PRESETS), default="smollm2", help="preset (default %(default)s)")
    ap.add_argument("--baseline", type=Path, help="plain-SFT recipe (default: the preset's)")
    ap.add_argument("--candidate", type=Path, action="append", help="regularized recipe; repeat for several")
    ap.add_argument("--reference", help="model before fine-tuning for compare --reference; 'none' for no reference")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps of every recipe")
    ap.add_argument("--parallel", type=int, default=2, help="trainings (and comparisons) run side by side")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per process (default: the cores shared among the processes running)")
    ap.add_argument("--fit-arg", action="append", default=[],
                    help="extra override for every fit, e.g. --fit-arg=--trainer.max_steps=20")
    ap.add_argument("--compare-arg", action="append", default=[],
                    help="extra argument for compare, e.g. --compare-arg=--max-new-tokens=32")
    args = ap.parse_args(argv)
    preset = PRESETS[args.model]
    baseline = (args.baseline or ROOT / preset.baseline).resolve()
    candidates = [c.resolve() for c in (args.candidate or [ROOT / c for c in preset.candidates])]
    reference = preset.reference if args.reference is None else (None if args.reference == "none" else args.reference)
    seeds = args.seeds or preset.seeds
    out = (args.out or ROOT / preset.out).resolve()
    for recipe in (baseline, *candidates):
        if not recipe.is_file():
            ap.error(f"recipe not found: {recipe}")
    if len({c.stem for c in candidates} | {baseline.stem}) != len(candidates) + 1:
        ap.error("baseline and candidate recipes need distinct file names (their runs are named after them)")
    if args.max_steps is not None and args.max_steps < 1:
        ap.error(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.parallel < 1:
        ap.error("--parallel must be >= 1")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    fit_args = preset.fit_args + ([f"--trainer.max_steps={args.max_steps}"] if args.max_steps is not None else []) + args.fit_arg
    if preset.train_eval:
        fit_args += train_eval_args()
    compare_args = preset.compare_args + args.compare_arg
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1

    def threads_for(processes: int) -> int:
        # Oversubscribed OpenMP threads spin against each other (10x slower on a busy 2-core box).
        return args.threads or max(1, cores // max(1, min(args.parallel, processes)))
    t0 = time.perf_counter()
    say(f"experiment ({args.model}): {baseline.stem} vs {', '.join(c.stem for c in candidates)}, seeds {seeds}"
        f"{', reference ' + reference if reference else ''}; out {_rel(out)}")
    jobs = [(recipe, seed) for seed in seeds for recipe in (baseline, *candidates)]
    try:
        with _pool(args.parallel) as pool:
            futures = {job: pool.submit(train, job[0], job[1], out, fit_args, threads_for(len(jobs))) for job in jobs}
            ckpts = {job: f.result() for job, f in futures.items()}
        say(f"  trainings done after {time.perf_counter() - t0:.0f} s; comparing")
        results: dict[str, dict[int, dict]] = {c.stem: {} for c in candidates}
        n_compares = len(candidates) * len(seeds)
        with _pool(args.parallel) as pool:
            futures = {
                (c.stem, seed): pool.submit(compare, ckpts[(baseline, seed)], ckpts[(c, seed)], reference,
                                            out / "compare" / c.stem / f"seed{seed}", compare_args,
                                            threads_for(n_compares))
                for c in candidates for seed in seeds
            }
            for (name, seed), f in futures.items():
                results[name][seed] = f.result()
    except (KeyboardInterrupt, Stopped):
        _stop_children()
        report_interrupt(jobs, candidates, seeds, out, fit_args, argv)
        return EXIT_INTERRUPTED
    table = summarise(results, seeds, baseline.stem, reference is not None)
    collapsed, collapse_line = collapse_check(results, seeds)
    verdicts = [verdict(name, per_seed, seeds)[1] for name, per_seed in results.items()]
    reports = [out / "compare" / c.stem / f"seed{s}" / "report.html" for c in candidates for s in seeds]
    elapsed = time.perf_counter() - t0
    command = "python scripts/run_experiment.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# {baseline.stem} vs {', '.join(results)}: seeds {seeds}\n\nCommand: `{command.strip()}` "
            f"({elapsed:.0f} s)\n\n{collapse_line}\n\n{table}\n\n{TARGET_TEXT}\n\n"
            + "\n".join(f"- **{v}**" for v in verdicts)
            + "\n\nReports: " + ", ".join(f"`{_rel(r)}`" for r in reports) + "\n")
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(
        {"seeds": seeds, "collapsed": collapsed, "collapse": collapse_line, "verdicts": verdicts,
         "per_seed": {name: {str(s): m for s, m in per.items()} for name, per in results.items()}}, indent=1))
    say("")
    say(table)
    say("")
    say(collapse_line)
    say(TARGET_TEXT)
    for v in verdicts:
        say("  " + v)
    say(f"\nsummary: {_rel(out / 'summary.md')}")
    say("reports: " + ", ".join(str(_rel(r)) for r in reports))
    say(f"total time: {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    # A shell starts a background job (`nohup ... &`) with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: `kill -INT` would do nothing. Ctrl-C / SIGINT always means "stop and keep the work".
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
