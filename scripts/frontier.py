"""The frontier: every mechanism against collapse at several strengths, on one repetition/perplexity plot.

Each variant is a committed SmolLM2-135M recipe with a few keys changed (written as YAML under
``<out>/recipes/``, so the exact config of every point is on disk), trained like the main job (40 steps
of 4 x 128 tokens, rows that end as written: ``scripts/run_experiment.py``'s preset) and evaluated once
with ``entropy-reg eval`` (greedy, 24 built-in prompts, 128 new tokens; held-out perplexity; the
probe). Plain SFT is also decoded with ``repetition_penalty`` 1.2 (the first question users ask: why
not just decode with a penalty?), and the base model is evaluated as the reference.

    python scripts/frontier.py                      # seed 0, every variant (resumable)
    python scripts/frontier.py --only ct-w2 --seeds 1 2
    python scripts/frontier.py --list               # the grid
    python scripts/frontier.py --table              # table + docs/img/frontier.png from what finished

Resumable: finished trainings (``DONE`` + a ``last.ckpt`` at the final step) and evaluations
(``metrics.json``) are skipped. Trainings and evaluations run ``--parallel`` at a time with
``--threads`` torch threads each (two 1-thread processes use the 2-core CPU best).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from run_experiment import PRESETS, _last_checkpoint, _rel, say, target_checks, train  # noqa: E402

RECIPES = ROOT / "recipes" / "smollm2-135m"
REG0 = "model.init_args.loss.init_args.regularizers.0.init_args"
OBJ0 = "model.init_args.objectives.0.init_args"
BASE_MODEL = "embedded:smollm2-135m-instruct"

def _objective_of(recipe: str, weight: float) -> dict:
    """The first objective block of a committed recipe, at ``weight`` (for points that combine mechanisms)."""
    block = copy.deepcopy(yaml.safe_load((RECIPES / recipe).read_text())["model"]["init_args"]["objectives"][0])
    block["init_args"]["weight"] = weight
    return block


# name -> (mechanism, strength, base recipe, {dotted key (list indices as numbers): value}); the key FIT_ARGS
# holds extra `entropy-reg fit` overrides of that point (after the preset's, so they win).
FIT_ARGS = "fit_args"
GRID: dict[str, tuple[str, float, str, dict]] = {
    "baseline": ("plain SFT", 0.0, "baseline.yaml", {}),
    # the lesson row: plain SFT on rows cut at 128 tokens (62% of them lose their end-of-turn)
    "baseline-cut-rows": ("plain SFT, rows cut at 128 tokens", 0.0, "baseline.yaml",
                          {FIT_ARGS: ["--data.init_args.truncation=truncate"]}),
    **{f"ct-w{w:g}": ("contrastive token", w, "ct.yaml", {f"{REG0}.weight": w}) for w in (0.5, 1.0, 2.0, 4.0)},
    **{f"ct_response-w{w:g}": ("contrastive token, response negatives", w, "ct.yaml",
                              {f"{REG0}.weight": w, f"{REG0}.context": "response"}) for w in (0.5, 1.0, 2.0)},
    **{f"anchor-w{w:g}": ("reference anchor", w, "anchor.yaml", {f"{OBJ0}.weight": w}) for w in (1.0, 3.0, 10.0, 30.0)},
    # the off-policy control: the same KL to the model before fine-tuning, on the training rows themselves
    **{f"anchor_batch-w{w:g}": ("reference anchor, off-policy (KL on the data)", w, "anchor.yaml",
                                {f"{OBJ0}.weight": w, f"{OBJ0}.source": "batch"}) for w in (3.0, 10.0)},
    **{f"loop_floor-w{w:g}": ("loop entropy floor", w, "loop_floor.yaml", {f"{OBJ0}.weight": w})
       for w in (0.3, 1.0, 3.0, 10.0)},
    **{f"ditto-w{w:g}": ("DITTO", w, "ditto.yaml", {f"{OBJ0}.weight": w}) for w in (0.5, 1.0, 2.0, 4.0)},
    # DITTO on rises only (one-sided, lam 1): a repeat pays only where its probability rises above the copy
    # before's - the self-reinforcement itself - never for staying as likely as it was
    **{f"ditto_rise-w{w:g}": ("DITTO on rises only (one-sided, lam 1)", w, "ditto.yaml",
                              {f"{OBJ0}.weight": w, f"{OBJ0}.one_sided": True, f"{OBJ0}.lam": 1.0})
       for w in (1.0, 3.0)},
    # combined.yaml's regularizers are scaled by its schedule: a constant scale s is the strength
    **{f"combined-s{s:g}": ("combined (tail floor + anti-copy + entropy floor)", s, "combined.yaml",
                            {"model.init_args.schedule": {"kind": "constant", "start": s, "end": s}})
       for s in (0.3, 1.0, 3.0, 10.0)},
    **{f"seq_ul-w{w:g}": ("sequence unlikelihood", w, "seq_ul.yaml", {f"{OBJ0}.weight": w}) for w in (0.5, 1.0, 2.0, 4.0)},
    # CT for the loops, the loop floor for the probe's self-reinforcement: both at low strength
    "ct0.5+floor0.3": ("CT (response) 0.5 + loop floor 0.3", 0.5, "ct.yaml",
                       {f"{REG0}.weight": 0.5, f"{REG0}.context": "response",
                        "model.init_args.objectives": [_objective_of("loop_floor.yaml", 0.3)]}),
    # CT for the loops, DITTO for the probe's self-reinforcement: the committed recipe (the main job's candidate)
    **{f"ct{w:g}+ditto{w:g}": ("CT (response) + DITTO, each at the strength", w, "ct_ditto.yaml",
                                {f"{REG0}.weight": w, f"{OBJ0}.weight": w}) for w in (0.25, 0.5, 1.0)},
}
EVAL_ARGS = ["--decoding", "greedy", "--max-new-tokens", "128", "--max-heldout", "48", "--max-length", "128",
             "--probe-sentences", "8", "--no-progress"]
# The same generation on prompts of the embedded held-out split (never trained on, never tuned on): the
# built-in prompts chose the strengths, these confirm them. Held-out perplexity and the probe are not
# repeated there (one held-out text, no probe sentences).
HELDOUT_PROMPTS = 24
HELDOUT_EVAL_ARGS = ["--max-heldout", "1", "--probe-sentences", "0"]
# Extra evaluations: (name, model: a variant name or a model source, decoding).
EXTRA_EVALS = [("base-model", BASE_MODEL, "greedy"), ("baseline+rep_penalty", "baseline", "rep_penalty")]


def _set(config: dict, dotted: str, value) -> None:
    """``config[a][b]... = value`` for ``"a.b..."`` (list indices as numbers; a last key ``+`` appends)."""
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if last == "+":
        node.append(value)
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def write_variant(name: str, out: Path) -> Path:
    """The variant's recipe: its base recipe with the named keys changed, under ``out/recipes/``."""
    _, _, base, changes = GRID[name]
    config = yaml.safe_load((RECIPES / base).read_text())
    for dotted, value in changes.items():
        if dotted != FIT_ARGS:
            _set(config, dotted, copy.deepcopy(value))
    path = out / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# {name}: written by scripts/frontier.py from recipes/smollm2-135m/{base} with\n"
              + "".join(f"#   {k} = {v}\n" for k, v in changes.items()))
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def heldout_prompts(out: Path) -> Path:
    """``HELDOUT_PROMPTS`` prompts spread over the embedded held-out split, as a jsonl file under ``out``."""
    from entropy_reg.data.pydoc_corpus import embedded_sft_records

    records = embedded_sft_records(split="heldout")
    step = max(1, len(records) // HELDOUT_PROMPTS)
    path = out / "heldout_prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records[::step][:HELDOUT_PROMPTS]))
    return path


def evaluate(model: str, decoding: str, out_dir: Path, threads: int, prompts: Path | None = None) -> dict:
    """``entropy-reg eval`` of one model (skipped when its metrics.json exists); ``prompts``: a prompt file
    instead of the built-in prompts, without repeating the held-out perplexity and the probe."""
    metrics = out_dir / "metrics.json"
    if not metrics.exists():
        args = [a if a != "greedy" else decoding for a in EVAL_ARGS]
        if prompts is not None:
            args = args + ["--prompts", str(prompts), *HELDOUT_EVAL_ARGS]
        cmd = [sys.executable, "-m", "entropy_reg", "eval", model, "--out", str(out_dir), f"--threads={threads}", *args]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                   WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
        say(f"  eval {_rel(out_dir)} ...")
        log = out_dir.parent / f"{out_dir.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        if code != 0:
            raise SystemExit(f"eval failed (exit {code}): {' '.join(cmd)}; see {_rel(log)}")
    return json.loads(metrics.read_text())


def run_variant(name: str, seed: int, out: Path, threads: int, train_only: bool = False,
                prompts: Path | None = None) -> dict | None:
    fit_args = PRESETS["smollm2"].fit_args + GRID[name][3].get(FIT_ARGS, [])
    ckpt = train(write_variant(name, out), seed, out / "runs", fit_args, threads)
    if train_only:
        return None
    if prompts is not None:
        return evaluate(str(ckpt), "greedy", out / "eval-heldout-prompts" / f"{name}-seed{seed}", threads, prompts)
    return evaluate(str(ckpt), "greedy", out / "eval" / f"{name}-seed{seed}", threads)


# -------------------------------------------------------------------------------------------------
# Table and figure
# -------------------------------------------------------------------------------------------------
def _summary(metrics: dict, decoding: str = "greedy") -> dict[str, float]:
    s = metrics["summary"]
    return {"rep4": s[f"{decoding}/seq_rep_4"], "loops": s[f"{decoding}/any_loop_share"],
            "low_entropy_loops": s[f"{decoding}/degenerate_share"], "eos": s[f"{decoding}/eos_rate"],
            "tp": s["probe/tp_last"] if s["probe/tp_last"] is not None else float("nan"), "ppl": s["perplexity"],
            "step": s.get("global_step")}


def collect(out: Path, folder: str = "eval") -> dict[str, dict[int, dict[str, float]]]:
    """``{point name: {seed: summary}}`` of every finished evaluation under ``out/<folder>``."""
    found: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted((out / folder).glob("*/metrics.json")):
        stem = path.parent.name
        name, _, seed = stem.rpartition("-seed")
        if not name:
            name, seed = stem, "0"
        decoding = "rep_penalty" if "rep_penalty" in name else "greedy"
        found.setdefault(name, {})[int(seed)] = _summary(json.loads(path.read_text()), decoding)
    return found


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def target_check(point: dict[int, dict], base: dict, sft: dict[int, dict]) -> list[str]:
    """The criteria (run_experiment.target_checks) a point misses, over its seeds; plain SFT of the same seed."""
    names = ("seq-rep-4 <= base", "any-loop share <= base", "low-entropy loops <= 0.05", "TP(8) <= 0.5",
             ">= 90% of the ppl gain")
    missed = []
    for seed, m in point.items():
        s = sft.get(seed) or next(iter(sft.values()))
        oks = target_checks(m["rep4"], base["rep4"], m["loops"], base["loops"], m["low_entropy_loops"], m["tp"],
                            m["ppl"], s["ppl"], base["ppl"]).values()
        missed += [f"{n} (seed {seed})" for n, ok in zip(names, oks, strict=True) if not ok]
    return missed


def table(out: Path) -> str:
    found = collect(out)
    if "baseline" not in found or "base-model" not in found:
        return "(the baseline and the base model are not evaluated yet)"
    sft, base = found["baseline"], found["base-model"][0]
    lines = ["| point | mechanism | strength | seeds | greedy seq-rep-4 | any-loop share | low-entropy loops | "
             "TP(8) | EOS rate | held-out ppl | ppl vs plain SFT | target misses |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = ["base-model", "baseline", "baseline+rep_penalty", "baseline-cut-rows"] + [
        n for n in GRID if n not in ("baseline", "baseline-cut-rows")]
    for name in order:
        if name not in found:
            continue
        per = found[name]
        mech, strength = (GRID[name][0], f"{GRID[name][1]:g}") if name in GRID else (
            ("base model (before SFT)", "-") if name == "base-model" else ("plain SFT + repetition_penalty 1.2", "-"))
        if name in ("baseline", "baseline-cut-rows"):
            strength = "-"

        def cell(key: str, fmt: str = "{:.3f}", per: dict = per) -> str:
            vals = [m[key] for m in per.values()]
            text = fmt.format(_mean(vals))
            return text if len(vals) == 1 else text + " ± " + fmt.format(statistics.stdev(vals))
        # vs plain SFT of the same seed (the same data order), averaged over the point's seeds
        change = _mean([m["ppl"] / (sft.get(seed) or next(iter(sft.values())))["ppl"] - 1 for seed, m in per.items()])
        misses = "" if name in ("base-model", "baseline", "baseline-cut-rows") else "; ".join(sorted(set(
            m.split(" (seed")[0] for m in target_check(per, base, sft)))) or "**none: target met**"
        lines.append(f"| {name} | {mech} | {strength} | {','.join(map(str, sorted(per)))} | {cell('rep4')} | "
                     f"{cell('loops', '{:.2f}')} | {cell('low_entropy_loops', '{:.2f}')} | {cell('tp')} | "
                     f"{cell('eos', '{:.2f}')} | {cell('ppl', '{:.2f}')} | {100 * change:+.1f}% | {misses} |")
    return "\n".join(lines)


def heldout_table(out: Path) -> str:
    """Greedy repetition on the held-out-split prompts, for every evaluated point (confirmation)."""
    found = collect(out, "eval-heldout-prompts")
    if not found:
        return "(no evaluation on held-out-split prompts yet: --heldout-prompts)"
    lines = ["| point | seeds | greedy seq-rep-4 | any-loop share | low-entropy loops | EOS rate |", "|---|---|---|---|---|---|"]
    order = ["base-model", "baseline"] + [n for n in GRID if n != "baseline"]
    for name in order:
        if name in found:
            per = found[name]

            def cell(key: str, per: dict = per) -> str:
                vals = [m[key] for m in per.values()]
                text = f"{_mean(vals):.3f}"
                return text if len(vals) == 1 else text + f" ± {statistics.stdev(vals):.3f}"
            lines.append(f"| {name} | {','.join(map(str, sorted(per)))} | {cell('rep4')} | {cell('loops')} | "
                         f"{cell('low_entropy_loops')} | {cell('eos')} |")
    return "\n".join(lines)


def plot(out: Path, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # seed 0 only: every point has it, so each is compared with the plain SFT of the same data order
    found = {name: {0: per[0]} for name, per in collect(out).items() if 0 in per}
    if "baseline" not in found or "base-model" not in found:
        return None
    sft, base = found["baseline"], found["base-model"][0]
    budget = 100 * ((base["ppl"] - 0.9 * (base["ppl"] - sft[0]["ppl"])) / sft[0]["ppl"] - 1)

    def xy(per: dict, key: str) -> tuple[float, float]:
        change = _mean([m["ppl"] / (sft.get(seed) or next(iter(sft.values())))["ppl"] - 1 for seed, m in per.items()])
        return 100 * change, _mean([m[key] for m in per.values()])

    fig, axes = plt.subplots(1, 3, figsize=(19, 6))
    mechanisms: dict[str, list[tuple[float, str]]] = {}
    for name, (mech, strength, _, _) in GRID.items():
        if name not in ("baseline", "baseline-cut-rows") and name in found:
            mechanisms.setdefault(mech, []).append((strength, name))
    colors = plt.get_cmap("tab20").colors
    markers = "os^vD<>Ph*Xd"
    panels = ((axes[0], "rep4", "greedy seq-rep-4", base["rep4"]),
              (axes[1], "loops", "share of continuations in a loop", base["loops"]),
              (axes[2], "tp", "probe TP(8): p(token) in the 8th copy of a sentence", 0.5))
    for ax, key, label, bar in panels:
        for i, (mech, points) in enumerate(mechanisms.items()):
            color, marker = colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], markers[i % len(markers)]
            pts = [xy(found[n], key) for _, n in sorted(points)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls="-", color=color, label=mech)
            for (strength, _), (x, y) in zip(sorted(points), pts, strict=True):
                ax.annotate(f"{strength:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=color)
            if key == "loops":
                low = [xy(found[n], "low_entropy_loops") for _, n in sorted(points)]
                ax.plot([p[0] for p in low], [p[1] for p in low], marker="x", ls=":", color=color, alpha=0.6)
        for name, marker, text in (("baseline", "s", "plain SFT"), ("base-model", "*", "base model"),
                                   ("baseline+rep_penalty", "D", "plain SFT + rep. penalty 1.2 (decoding)")):
            if name in found:
                x, y = xy(found[name], key)
                ax.scatter([x], [y], marker=marker, s=120, color="black", zorder=5)
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, -10), fontsize=8)
        ax.axvline(budget, color="grey", ls="--", lw=0.8)
        ax.axhline(bar, color="grey", ls="--", lw=0.8)
        ax.fill_between([ax.get_xlim()[0], budget], -0.01, bar, color="green", alpha=0.07,
                        label="target corner (>= 90% of SFT's ppl gain kept, <= the bar)" if key == "rep4" else None)
        ax.set_xlabel("held-out perplexity vs plain SFT of the same seed (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("SmolLM2-135M-Instruct, 40 steps of 4 x 128 tokens, whole rows, seed 0 (numbers: strength)",
                      fontsize=9)
    axes[1].set_title("o-: any loop (low- or high-entropy); x: low-entropy loops only (bar: base model)", fontsize=9)
    axes[2].set_title("self-reinforcement probe (bar: the target's 0.5)", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=list(GRID), help="variants to run (default: the whole grid; finished runs are skipped)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "frontier")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "frontier.png")
    ap.add_argument("--list", action="store_true", help="print the grid and exit")
    ap.add_argument("--table", action="store_true", help="print the table, draw the figure and exit")
    ap.add_argument("--train-only", action="store_true", help="train the variants, evaluate nothing")
    ap.add_argument("--eval-only", action="store_true",
                    help="evaluate every finished training that has no evaluation yet (train nothing)")
    ap.add_argument("--heldout-prompts", action="store_true",
                    help="evaluate on prompts of the embedded held-out split instead of the built-in prompts")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.list:
        for name, (mech, strength, base, changes) in GRID.items():
            print(f"{name:20s} {mech:28s} {strength:5g} {base:16s} {changes}")
        return 0
    if args.parallel < 1 or args.threads < 1:
        ap.error("--parallel and --threads must be >= 1")
    if any(s < 0 for s in args.seeds):
        ap.error(f"--seeds must be >= 0, got {args.seeds}")
    if args.eval_only:
        prompts = heldout_prompts(out) if args.heldout_prompts else None
        folder = "eval-heldout-prompts" if prompts is not None else "eval"
        for done in sorted((out / "runs").glob("*/seed*/DONE")):
            name, seed = done.parent.parent.name, int(done.parent.name[4:])
            if (args.only and name not in args.only) or seed not in args.seeds:
                continue
            ckpt = _last_checkpoint(done.parent)
            evaluate(str(ckpt), "greedy", out / folder / f"{name}-seed{seed}", args.threads, prompts)
        if prompts is not None:
            evaluate(BASE_MODEL, "greedy", out / folder / "base-model", args.threads, prompts)
    elif not args.table:
        names = args.only or list(GRID)
        names = ["baseline"] + [n for n in names if n != "baseline"]  # plain SFT first: every point needs it
        jobs = [(n, s) for s in args.seeds for n in names]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            prompts = heldout_prompts(out) if args.heldout_prompts else None
            futures = [pool.submit(run_variant, n, s, out, args.threads, args.train_only, prompts) for n, s in jobs]
            if prompts is not None:
                futures.append(pool.submit(evaluate, BASE_MODEL, "greedy", out / "eval-heldout-prompts" / "base-model",
                                           args.threads, prompts))
            elif 0 in args.seeds and not args.train_only:
                for name, model, decoding in EXTRA_EVALS:
                    source = model
                    if model in GRID:
                        futures[names.index(model)].result()  # its training must be done first
                        source = str(_last_checkpoint(out / "runs" / model / "seed0"))
                    futures.append(pool.submit(evaluate, source, decoding, out / "eval" / name, args.threads))
            for f in futures:
                f.result()
    text = table(out) + "\n\nOn prompts of the embedded held-out split:\n\n" + heldout_table(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.md").write_text(text + "\n")
    print(text)
    figure = plot(out, args.plot)
    if figure:
        print(f"figure: {_rel(figure)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
