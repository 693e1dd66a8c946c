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
from entropy_reg.report.cli import check_numbers, split_decodings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="entropy-reg eval",
        description="Evaluate ONE model: repetition, generation entropy, collapse classes (low-entropy loops), "
        "held-out perplexity and the DITTO self-reinforcement probe, as `entropy-reg compare` measures each model.",
    )
    p.add_argument("model", metavar="MODEL", help="model: .ckpt, HF dir, .gguf, 'tiny' or 'embedded:...'")
    p.add_argument("--out", default="eval_out", help="output directory; default %(default)s")
    p.add_argument("--decoding", default="greedy",
                   help="comma-separated decoding presets (greedy, top_p, min_p, temperature, rep_penalty), "
                   "each optionally with overrides: 'greedy,top_p:top_p=0.95'; default %(default)s")
    p.add_argument("--max-new-tokens", type=int, default=128, help="default %(default)s")
    p.add_argument("--seeds", type=int, default=3, help="seeds per sampling decoding (greedy uses one); "
                   "default %(default)s")
    p.add_argument("--batch-size", type=int, default=8, help="default %(default)s")
    p.add_argument("--prompts", metavar="FILE", help="prompts: .txt one per line, or .jsonl with \"prompt\" "
                   "(default: built-in set of Python-docs questions, English and Chinese)")
    p.add_argument("--heldout", metavar="FILE", help="held-out text: .txt one text per line, or .jsonl with "
                   "\"text\" (or prompt/response); default: the embedded heldout split")
    p.add_argument("--max-heldout", type=int, default=128, help="use the first N held-out texts; default %(default)s")
    p.add_argument("--max-length", type=int, default=256, help="held-out tokens per text; default %(default)s")
    p.add_argument("--data", metavar="FILE", help="also measure a training data file (.jsonl/.json/.parquet or "
                   "'embedded:pydoc'), tokenised by MODEL's tokenizer as training does: rows truncated (never "
                   "ending), responses' rep-2/rep-4 and duplicates, label tokens per row; warns past the thresholds "
                   "of entropy_reg.data.statistics")
    p.add_argument("--data-max-length", type=int, default=256,
                   help="tokens per training row for --data (the recipes' data.max_length); default %(default)s")
    p.add_argument("--probe-repeats", type=int, default=8, help="copies N in the DITTO probe; default %(default)s")
    p.add_argument("--probe-sentences", type=int, default=8, help="probe sentences (0: no probe); "
                   "default %(default)s")
    p.add_argument("--rep-window", type=int, default=16, help="l of rep/l and wrep/l; default %(default)s")
    p.add_argument("--max-samples", type=int, default=24,
                   help="completions shown per decoding in the HTML (spread over the prompts); default %(default)s")
    p.add_argument("--wandb", action="store_true", help="also log a W&B run (offline when no API key)")
    p.add_argument("--wandb-project", default="entropy-reg")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default); on a small shared CPU box 1 is fastest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load .ckpt files that hold more than data (pickled objects, which run code when read); "
                        "only for files whose source you trust. Default: such a checkpoint is refused")
    return p


def run(argv: Sequence[str]) -> int:
    """Parse ``argv``, evaluate, write the report; raises InputError on bad inputs."""
    from entropy_reg.report.eval_render import write_eval_report
    from entropy_reg.report.evaluate import EvalConfig, evaluate_model
    from entropy_reg.report.output import check_out_dir

    args = build_parser().parse_args(list(argv))
    check_numbers(args)
    config = EvalConfig(
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
        progress=not args.no_progress,
        data_file=args.data,
        data_max_length=args.data_max_length,
    )
    config.validate()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = check_out_dir(args.out)
    t0 = time.perf_counter()
    from entropy_reg.models import trusted_checkpoints

    with trusted_checkpoints(True if args.trust_checkpoint else None):
        ev = evaluate_model(args.model, config)
    paths = write_eval_report(ev, out, max_samples=args.max_samples,
                              wandb_project=args.wandb_project if args.wandb else None)
    for key, value in ev.summary().items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    if ev.data is not None:
        for problem in ev.data["warnings"]:
            print(f"entropy-reg eval: warning: --data {ev.data['file']}: {problem}", file=sys.stderr)
    print(f"eval took {time.perf_counter() - t0:.1f}s")
    print(f"report: {paths['report.html']}  (also {paths['report.md']}, {paths['metrics.json']})")
    if "wandb" in paths:
        print(f"W&B run: {paths['wandb']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point called by ``entropy_reg.cli.main`` with the arguments after ``eval``; bad inputs exit 2."""
    with exit_on_user_error("entropy-reg eval"):
        return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
