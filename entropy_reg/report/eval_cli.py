"""``entropy-reg eval``: is this model collapsing? One model, no baseline.

::

    entropy-reg eval runs/sft/last.ckpt
    entropy-reg eval runs/sft/last.ckpt --decoding greedy,top_p --out eval/sft --wandb
    entropy-reg eval embedded:smollm2-135m-instruct --max-new-tokens 64 --max-heldout 32

MODEL is anything ``compare`` takes: a Lightning ``.ckpt`` written by CausalLMModule, a Hugging Face
model directory, a ``.gguf`` file, ``tiny`` or ``embedded:smollm2-135m-instruct``. Measures what
``compare`` measures per model (generation with collapse classes and repetition, held-out perplexity,
the DITTO probe) with the same code, and writes ``metrics.json`` (``summary`` plus everything needed to
pair two evaluations later), ``report.md``, ``report.html`` and the PNG plots into ``--out``.

``--data FILE`` also measures a training data file (any dataset SFTDataModule takes: ``.jsonl``/``.json``/
``.parquet``, ``embedded:pydoc``), tokenised by MODEL's tokenizer as training does with
``--data-max-length`` tokens per row (default 256, as the recipes): rows truncated (and so never ending),
responses' rep-2/rep-4 and duplicate share, label tokens per row (``data/*`` in the summary, a table in
the report) and one ``warning:`` line on stderr per threshold passed (entropy_reg.data.statistics.THRESHOLDS:
any truncated row, rep-4 > 0.2, duplicates > 5%). A prompt that, with ``--max-new-tokens``, does not fit
MODEL's context is refused (as ``compare`` does).

Exit status: 0 on success, 2 on a bad input (one line naming the file/path/option); ``--out`` is left
untouched on failure.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from entropy_reg.errors import exit_on_user_error
from entropy_reg.report.settings import add_measure_options, measuring, print_report, settings_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="entropy-reg eval",
        description="Evaluate ONE model: repetition, generation entropy, collapse classes (low-entropy loops), "
        "held-out perplexity and the DITTO self-reinforcement probe, as `entropy-reg compare` measures each model.",
    )
    p.add_argument("model", metavar="MODEL", help="model: .ckpt, HF dir, .gguf, 'tiny' or 'embedded:...'")
    p.add_argument("--out", default="eval_out", help="output directory; default %(default)s")
    add_measure_options(p, decoding_default="greedy")
    p.add_argument("--data", metavar="FILE", help="also measure a training data file (.jsonl/.json/.parquet or "
                   "'embedded:pydoc'), tokenised by MODEL's tokenizer as training does: rows truncated (never "
                   "ending), responses' rep-2/rep-4 and duplicates, label tokens per row; warns past the thresholds "
                   "of entropy_reg.data.statistics")
    p.add_argument("--data-max-length", type=int, default=256,
                   help="tokens per training row for --data (the recipes' data.max_length); default %(default)s")
    return p


def run(argv: Sequence[str]) -> int:
    """Parse ``argv``, evaluate, write the report; raises InputError on bad inputs."""
    from entropy_reg.report.eval_render import write_eval_report
    from entropy_reg.report.evaluate import EvalConfig, evaluate_model

    args = build_parser().parse_args(list(argv))
    config = EvalConfig(data_file=args.data, data_max_length=args.data_max_length, **settings_from_args(args))
    config.validate()
    t0 = time.perf_counter()
    with measuring(args) as out:
        ev = evaluate_model(args.model, config)
    paths = write_eval_report(ev, out, max_samples=args.max_samples,
                              wandb_project=args.wandb_project if args.wandb else None)
    for key, value in ev.summary().items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    if ev.data is not None:
        for problem in ev.data["warnings"]:
            print(f"entropy-reg eval: warning: --data {ev.data['file']}: {problem}", file=sys.stderr)
    print_report(paths, "eval", t0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point called by ``entropy_reg.cli.main`` with the arguments after ``eval``; bad inputs exit 2."""
    with exit_on_user_error("entropy-reg eval"):
        return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
