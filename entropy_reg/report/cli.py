"""``entropy-reg compare``: paired comparison report of a baseline and a candidate model.

::

    entropy-reg compare --baseline runs/base/last.ckpt --candidate runs/reg/last.ckpt
    entropy-reg compare runs/base/last.ckpt runs/reg/last.ckpt --decoding greedy,top_p --seeds 3 --out cmp/
    entropy-reg compare tiny path/to/hf_dir --prompts prompts.jsonl --max-new-tokens 64 --wandb
    entropy-reg compare --baseline sft.ckpt --candidate reg.ckpt --reference embedded:smollm2-135m-instruct

A model PATH is a Lightning ``.ckpt`` written by CausalLMModule, a Hugging Face model directory, a
``.gguf`` file, ``tiny`` or ``embedded:smollm2-135m-instruct``. Writes ``report.md``, ``report.html``,
``metrics.json`` and the PNG plots into ``--out``; prints the table and the report path.

Exit status: 0 on success, 2 on a bad input (the message names the file/path/option); ``--out`` is
left untouched on failure (all files are written only after the comparison succeeded, atomically).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from entropy_reg.errors import exit_on_user_error
from entropy_reg.report.prompts import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="entropy-reg compare",
        description="Compare a baseline and a candidate model on identical prompts, seeds and held-out text: "
        "repetition, entropy, collapse and perplexity metrics with paired bootstrap 95% CIs.",
    )
    p.add_argument("baseline_pos", nargs="?", metavar="BASELINE", help="baseline model (or use --baseline)")
    p.add_argument("candidate_pos", nargs="?", metavar="CANDIDATE", help="candidate model (or use --candidate)")
    p.add_argument("--baseline", help="baseline model: .ckpt, HF dir, .gguf, 'tiny' or 'embedded:...'")
    p.add_argument("--candidate", help="candidate model (same tokenizer as the baseline)")
    p.add_argument("--reference", help="optional third model shown next to both, e.g. the model before "
                   "fine-tuning: adds its values and the paired CIs of baseline - reference and candidate - "
                   "reference (same prompts, seeds and held-out text)")
    p.add_argument("--prompts", metavar="FILE", help="prompts: .txt one per line, or .jsonl with \"prompt\" "
                   "(default: built-in set of Python-docs questions, English and Chinese)")
    p.add_argument("--decoding", default="greedy,top_p",
                   help="comma-separated decoding presets (greedy, top_p, min_p, temperature, rep_penalty), "
                   "each optionally with overrides: 'greedy,top_p:top_p=0.95,temperature=0.8'; default %(default)s")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default %(default)s")
    p.add_argument("--seeds", type=int, default=3, help="seeds per sampling decoding (greedy uses one); "
                   "default %(default)s")
    p.add_argument("--batch-size", type=int, default=8, help="default %(default)s")
    p.add_argument("--out", default="compare_out", help="output directory; default %(default)s")
    p.add_argument("--heldout", metavar="FILE", help="held-out text: .txt one text per line, or .jsonl with "
                   "\"text\" (or prompt/response); default: the embedded heldout split")
    p.add_argument("--max-heldout", type=int, default=128, help="use the first N held-out texts; default %(default)s")
    p.add_argument("--max-length", type=int, default=256, help="held-out tokens per text; default %(default)s")
    p.add_argument("--probe-repeats", type=int, default=8, help="copies N in the DITTO probe; default %(default)s")
    p.add_argument("--probe-sentences", type=int, default=8, help="probe sentences; default %(default)s")
    p.add_argument("--rep-window", type=int, default=16, help="l of rep/l and wrep/l; default %(default)s")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples; default %(default)s")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="default %(default)s")
    p.add_argument("--max-samples", type=int, default=24,
                   help="completions shown per decoding in the HTML (spread over the prompts); default %(default)s")
    p.add_argument("--wandb", action="store_true", help="also log a W&B run (offline when no API key)")
    p.add_argument("--wandb-project", default="entropy-reg")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default). On a small shared CPU box 1 can be "
                   "~10x faster than oversubscribed threads")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (model loading, GGUF conversion included, is always quiet)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load .ckpt files that hold more than data (pickled objects, which run code when read); "
                        "only for files whose source you trust. Default: such a checkpoint is refused")
    return p


def split_decodings(spec: str) -> list[str]:
    """Split ``--decoding`` on commas, keeping ``key=value`` overrides with their preset.

    ``"greedy,top_p:top_p=0.95,temperature=0.8"`` -> ``["greedy", "top_p:top_p=0.95,temperature=0.8"]``
    (:func:`entropy_reg.generation.parse_decoding` separates overrides with commas too).
    """
    out: list[str] = []
    for piece in (p.strip() for p in spec.split(",")):
        if not piece:
            continue
        if "=" in piece and ":" not in piece and out and ":" in out[-1]:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def _pick(pos: str | None, opt: str | None, role: str) -> str:
    if pos and opt and pos != opt:
        raise InputError(f"{role} given twice ({pos!r} and --{role} {opt!r})")
    value = opt or pos
    if not value:
        raise InputError(f"missing the {role} model: pass --{role} PATH (or two positional paths)")
    return value


def _same_model(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # not both files: names such as "tiny" or a hub id
        return a == b


def check_distinct(baseline: str, candidate: str, reference: str | None) -> None:
    """Warn (one line on stderr) when a model is compared with itself: every difference will be 0."""
    if _same_model(baseline, candidate):
        print(f"entropy-reg compare: warning: --baseline and --candidate are the same model ({candidate!r}): every "
              "difference will be 0 (at best a check of the noise floor); pass two different models", file=sys.stderr)
    for role, path in (("baseline", baseline), ("candidate", candidate)):
        if reference is not None and _same_model(reference, path):
            print(f"entropy-reg compare: warning: --reference is the {role} model ({reference!r}): its columns "
                  f"repeat the {role}'s", file=sys.stderr)


# Smallest accepted value of each integer option (checked here, so the message names the flag as typed).
MINIMUMS = {"max_new_tokens": 1, "seeds": 1, "batch_size": 1, "max_heldout": 1, "max_length": 2,
            "probe_repeats": 1, "probe_sentences": 0, "rep_window": 1, "bootstrap": 1, "max_samples": 0,
            "threads": 0}


def check_numbers(args: argparse.Namespace) -> None:
    """Raise InputError naming the flag (``--bootstrap``, ``--max-length``) of an out-of-range number."""
    for dest, minimum in MINIMUMS.items():
        value = getattr(args, dest, None)
        if value is None:  # an option this command does not have (``eval`` has no --bootstrap)
            continue
        if value < minimum:
            what = {"max_length": "held-out tokens per text (a perplexity needs 2)",
                    "max_heldout": "held-out texts"}.get(dest, "")
            raise InputError(f"--{dest.replace('_', '-')} must be >= {minimum}{f' ({what})' if what else ''}, "
                             f"got {value}")


def run(argv: Sequence[str]) -> int:
    """Parse ``argv``, compare, write the report; raises InputError on bad inputs."""
    from entropy_reg.report.compare import CompareConfig, compare_models
    from entropy_reg.report.output import check_out_dir
    from entropy_reg.report.write import write_report

    args = build_parser().parse_args(list(argv))
    check_numbers(args)
    baseline = _pick(args.baseline_pos, args.baseline, "baseline")
    candidate = _pick(args.candidate_pos, args.candidate, "candidate")
    check_distinct(baseline, candidate, args.reference)
    config = CompareConfig(
        baseline=baseline,
        candidate=candidate,
        reference=args.reference,
        prompts_file=args.prompts,
        decodings=split_decodings(args.decoding),
        max_new_tokens=args.max_new_tokens,
        seeds=args.seeds,
        batch_size=args.batch_size,
        heldout_file=args.heldout,
        max_heldout=args.max_heldout,
        max_length=args.max_length,
        probe_repeats=args.probe_repeats,
        probe_sentences=args.probe_sentences,
        rep_window=args.rep_window,
        n_bootstrap=args.bootstrap,
        bootstrap_seed=args.bootstrap_seed,
        progress=not args.no_progress,
    )
    config.validate()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = check_out_dir(args.out)
    t0 = time.perf_counter()
    from entropy_reg.models import trusted_checkpoints

    with trusted_checkpoints(True if args.trust_checkpoint else None):
        cmp = compare_models(config)
    paths = write_report(cmp, out, max_samples=args.max_samples, wandb_project=args.wandb_project if args.wandb
                         else None)
    from entropy_reg.report.markdown import table

    print(table(cmp.rows))
    print(f"compare took {time.perf_counter() - t0:.1f}s")
    print(f"report: {paths['report.html']}  (also {paths['report.md']}, {paths['metrics.json']})")
    if "wandb" in paths:
        print(f"W&B run: {paths['wandb']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point called by ``entropy_reg.cli.main`` with the arguments after ``compare``.

    Bad inputs (any :class:`~entropy_reg.errors.UserError`: options, files, checkpoints) raise
    ``SystemExit(2)`` after printing the reason in one line (like argparse), so the exit status is
    non-zero however the entry point is wrapped; a bug keeps its traceback.
    """
    with exit_on_user_error("entropy-reg compare"):
        return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
