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
from entropy_reg.report.settings import add_measure_options, measuring, print_report, settings_from_args


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
    p.add_argument("--out", default="compare_out", help="output directory; default %(default)s")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples; default %(default)s")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="default %(default)s")
    add_measure_options(p, decoding_default="greedy,top_p")
    return p


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


def run(argv: Sequence[str]) -> int:
    """Parse ``argv``, compare, write the report; raises InputError on bad inputs."""
    from entropy_reg.report.compare import CompareConfig, compare_models
    from entropy_reg.report.write import write_report

    args = build_parser().parse_args(list(argv))
    settings = settings_from_args(args)
    baseline = _pick(args.baseline_pos, args.baseline, "baseline")
    candidate = _pick(args.candidate_pos, args.candidate, "candidate")
    check_distinct(baseline, candidate, args.reference)
    config = CompareConfig(baseline=baseline, candidate=candidate, reference=args.reference,
                           n_bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed, **settings)
    config.validate()
    t0 = time.perf_counter()
    with measuring(args) as out:
        cmp = compare_models(config)
    paths = write_report(cmp, out, max_samples=args.max_samples, wandb_project=args.wandb_project if args.wandb
                         else None)
    from entropy_reg.report.markdown import table

    print(table(cmp.rows))
    print_report(paths, "compare", t0)
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
