"""What each model is measured with: one list of settings for ``entropy-reg eval`` and ``compare``.

``compare`` measures every model exactly as ``eval`` measures one (that is what lets two saved
evaluations be paired later), so the settings, their defaults, their checks and their command-line
flags live here once: :class:`MeasureSettings` is the base of both ``EvalConfig`` and
``CompareConfig``, and :func:`add_measure_options` / :func:`settings_from_args` are the flags both
parsers add and read. A setting added here reaches both commands, both configs and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from entropy_reg.report.prompts import InputError

#: Integer settings that must be >= 1 (messages name the CLI flag).
POSITIVE_SETTINGS = ("max_new_tokens", "seeds", "batch_size", "max_length", "probe_repeats", "rep_window")


def check_settings(config: Any, positive: tuple[str, ...] = POSITIVE_SETTINGS) -> None:
    """Raise InputError on a non-positive integer setting, negative probe sentences or no decoding."""
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if config.probe_sentences < 0:
        raise InputError(f"--probe-sentences must be >= 0, got {config.probe_sentences}")
    if not config.decodings:
        raise InputError("--decoding needs at least one decoding name")


@dataclass(kw_only=True)
class MeasureSettings:
    """Per-model measurement settings (the flags of the same names; see :func:`add_measure_options`)."""

    prompts_file: str | None = None
    decodings: list[str] = field(default_factory=lambda: ["greedy"])
    max_new_tokens: int = 128
    seeds: int = 3
    batch_size: int = 8
    heldout_file: str | None = None
    max_heldout: int | None = 128
    max_length: int = 256
    probe_repeats: int = 8
    probe_sentences: int = 8
    rep_window: int = 16
    progress: bool = True

    def validate(self) -> None:
        check_settings(self)

    def measure_settings(self) -> dict[str, Any]:
        """The :class:`MeasureSettings` fields of this config (e.g. to build a CompareConfig from an EvalConfig)."""
        return {f.name: getattr(self, f.name) for f in fields(MeasureSettings)}


# -------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------
# Smallest accepted value of each integer option (checked on the parsed flags, so the message names the
# flag as typed). Options a command does not have (``eval`` has no --bootstrap) are skipped.
MINIMUMS = {"max_new_tokens": 1, "seeds": 1, "batch_size": 1, "max_heldout": 1, "max_length": 2,
            "probe_repeats": 1, "probe_sentences": 0, "rep_window": 1, "bootstrap": 1, "max_samples": 0,
            "threads": 0}
_WHAT = {"max_length": "held-out tokens per text (a perplexity needs 2)", "max_heldout": "held-out texts"}


def add_measure_options(p: argparse.ArgumentParser, decoding_default: str) -> None:
    """Add the measurement flags and the run flags (report, W&B, threads, progress, trust) to ``p``."""
    p.add_argument("--decoding", default=decoding_default,
                   help="comma-separated decoding presets (greedy, top_p, min_p, temperature, rep_penalty), "
                   "each optionally with overrides: 'greedy,top_p:top_p=0.95,temperature=0.8'; default %(default)s")
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
    p.add_argument("--probe-repeats", type=int, default=8, help="copies N in the DITTO probe; default %(default)s")
    p.add_argument("--probe-sentences", type=int, default=8, help="probe sentences (0: no probe); "
                   "default %(default)s")
    p.add_argument("--rep-window", type=int, default=16, help="l of rep/l and wrep/l; default %(default)s")
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


def check_numbers(args: argparse.Namespace) -> None:
    """Raise InputError naming the flag (``--bootstrap``, ``--max-length``) of an out-of-range number."""
    for dest, minimum in MINIMUMS.items():
        value = getattr(args, dest, None)
        if value is None:  # an option this command does not have
            continue
        if value < minimum:
            what = _WHAT.get(dest, "")
            raise InputError(f"--{dest.replace('_', '-')} must be >= {minimum}{f' ({what})' if what else ''}, "
                             f"got {value}")


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


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`MeasureSettings` keyword arguments of parsed flags (numbers checked first)."""
    check_numbers(args)
    return dict(prompts_file=args.prompts, decodings=split_decodings(args.decoding),
                max_new_tokens=args.max_new_tokens, seeds=args.seeds, batch_size=args.batch_size,
                heldout_file=args.heldout, max_heldout=args.max_heldout, max_length=args.max_length,
                probe_repeats=args.probe_repeats, probe_sentences=args.probe_sentences, rep_window=args.rep_window,
                progress=not args.no_progress)


@contextmanager
def measuring(args: argparse.Namespace) -> Iterator[Path]:
    """Set the threads, check ``--out`` (nothing written yet) and trust checkpoints as flagged; yields ``--out``."""
    from entropy_reg.models import trusted_checkpoints
    from entropy_reg.report.output import check_out_dir

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = check_out_dir(args.out)
    with trusted_checkpoints(True if args.trust_checkpoint else None):
        yield out


def print_report(paths: dict[str, Any], command: str, t0: float) -> None:
    """The last lines of both commands: time taken, report files, W&B run."""
    print(f"{command} took {time.perf_counter() - t0:.1f}s")
    print(f"report: {paths['report.html']}  (also {paths['report.md']}, {paths['metrics.json']})")
    if "wandb" in paths:
        print(f"W&B run: {paths['wandb']}")
