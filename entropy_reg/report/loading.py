"""Load the two models of a comparison and check that they share a tokenizer.

A comparison is only meaningful on identical token ids: the prompts must encode the same way and the
token-based metrics (n-grams, entropies over the vocabulary) must count the same units. So the two
tokenizers must have the same vocabulary and encode a few probe strings (English, code, Chinese and
the formatted prompts) identically; otherwise the error names both paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from entropy_reg.models import SMOLLM2_NAME, TINY_NAME, load_model_and_tokenizer
from entropy_reg.report.prompts import InputError, encode_prompts

_PROBE_STRINGS = (
    "The for statement is used to iterate over the elements of a sequence.",
    "def f(x):\n    return [i ** 2 for i in range(x)]  # squares",
    "请解释 Python 中的 for 语句。你好，世界！",
)


def check_model_path(path: str, role: str) -> None:
    """Fail early (before any model loads) on a local path that does not exist."""
    if path in (TINY_NAME, SMOLLM2_NAME):
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{role} model not found: {path!r} (resolved to {p.resolve()})")


def load_one(path: str, role: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``path`` in eval mode; loading errors become InputError naming the role."""
    from transformers.utils import logging as hf_logging

    check_model_path(path, role)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # per-shard "Loading weights" bars would bury the compare bar
    try:
        model, tokenizer = load_model_and_tokenizer(os.fspath(path))
    except (FileNotFoundError, ValueError, OSError, KeyError, RuntimeError) as err:
        raise InputError(f"cannot load the {role} model from {path!r}: {err}") from None
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer


def check_same_tokenizer(tok_a: Any, tok_b: Any, path_a: str, path_b: str, prompts: list[str],
                         role: str = "candidate") -> None:
    """Raise InputError when the two tokenizers differ (vocabulary or encodings).

    ``tok_a`` is the baseline's; ``role`` names the other model ("candidate" or "reference").
    """
    where = f"baseline {path_a!r} vs {role} {path_b!r}"
    vocab_a, vocab_b = tok_a.get_vocab(), tok_b.get_vocab()
    if vocab_a != vocab_b:
        only_a = sorted(set(vocab_a) - set(vocab_b))[:3]
        only_b = sorted(set(vocab_b) - set(vocab_a))[:3]
        moved = sorted(t for t in set(vocab_a) & set(vocab_b) if vocab_a[t] != vocab_b[t])[:3]
        details = [f"sizes {len(vocab_a)} vs {len(vocab_b)}"]
        details += [f"{what} e.g. {items}" for what, items in (
            ("only in baseline", only_a), (f"only in {role}", only_b), ("different ids", moved)) if items]
        raise InputError(
            f"tokenizer mismatch, {where}: vocabularies differ ({'; '.join(details)}). "
            "Compare models fine-tuned from the same base model."
        )
    for text in _PROBE_STRINGS:
        a = tok_a(text, add_special_tokens=True)["input_ids"]
        b = tok_b(text, add_special_tokens=True)["input_ids"]
        if list(a) != list(b):
            raise InputError(f"tokenizer mismatch, {where}: {text!r} encodes to {list(a)[:12]}... vs {list(b)[:12]}...")
    enc_a, enc_b = encode_prompts(tok_a, prompts), encode_prompts(tok_b, prompts)
    for prompt, a, b in zip(prompts, enc_a, enc_b, strict=True):
        if a != b:
            raise InputError(
                f"tokenizer mismatch, {where}: the formatted prompt {prompt!r} encodes differently "
                "(different chat templates or special tokens)"
            )
