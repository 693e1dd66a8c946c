"""Inputs of ``entropy-reg compare``: the built-in prompt set, prompt/held-out files, probe sentences.

The built-in prompts follow the wording of the embedded SFT dataset (:mod:`entropy_reg.data.pydoc_corpus`:
"Explain the Python topic ...", "What does the function `json.dumps` do?") so a model fine-tuned on it
is asked what it was trained on, plus Chinese prompts: every metric is token based, and CJK text
(no whitespace words, multi-byte tokens) must go through the whole report path.
Prompts are formatted exactly as in training (:func:`entropy_reg.data.format_prompt`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from entropy_reg.data.formatting import format_prompt
from entropy_reg.errors import UserError
from entropy_reg.metrics import split_sentences

DEFAULT_PROMPTS: tuple[str, ...] = (
    "Explain the Python topic 'for' (The \"for\" statement).",
    "Explain the Python topic 'while' (The \"while\" statement).",
    "Explain the Python topic 'with' (The \"with\" statement).",
    "Explain the Python topic 'lambda' (Lambdas).",
    "Explain the Python topic 'exceptions' (Exceptions).",
    "Explain the Python topic 'slicings' (Slicings).",
    "Explain the Python topic 'import' (The \"import\" statement).",
    "What is the Python module `itertools` for?",
    "What is the Python module `collections` for?",
    "What is the Python module `pathlib` for?",
    "What does the function `json.dumps` do?",
    "What does the function `os.path.join` do?",
    "What does the function `functools.reduce` do?",
    "What does the function `re.sub` do?",
    "What does the class `collections.OrderedDict` do?",
    "What does the class `argparse.ArgumentParser` do?",
    "What does the method `str.split` do?",
    "What does the function `sorted` do?",
    "Explain the Python topic 'dict' (Mapping Types — dict).",
    "请解释 Python 中的 for 语句。",
    "Python 的 `json.dumps` 函数有什么作用？",
    "请介绍一下 Python 模块 `itertools` 的用途。",
    "什么是 Python 的列表推导式？",
    "用中文解释 Python 中 `with` 语句的作用。",
)

# Sentences of useful length for the probe: long enough that TP(n) averages over several tokens,
# short enough that N copies fit comfortably in a small model's context.
PROBE_MIN_TOKENS = 6
PROBE_MAX_TOKENS = 40


class InputError(UserError):
    """A bad input of ``entropy-reg compare`` (file, name, option); the CLI prints it and exits 2."""


def read_lines_or_jsonl(path: str | Path, keys: tuple[str, ...], what: str) -> list[str]:
    """Items of a ``.txt`` (one per non-empty line) or ``.jsonl`` file (first of ``keys`` per object).

    Raises:
        InputError: missing/unreadable file, bad JSON, missing key, or no item at all (names the file).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{what} file not found: {str(path)!r}")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {what} file {str(path)!r}: {err}") from None
    items: list[str] = []
    if path.suffix == ".jsonl":
        for i, ln in enumerate(lines, start=1):
            try:
                record: Any = json.loads(ln)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{i}: invalid JSON ({err.msg})") from None
            value = _first_key(record, keys)
            if value is None:
                raise InputError(f"{path}:{i}: expected a JSON object with a string {' or '.join(map(repr, keys))}")
            items.append(value)
    else:
        items = [ln.strip() for ln in lines]
    items = [x for x in items if x.strip()]
    if not items:
        raise InputError(f"{what} file {str(path)!r} is empty (no non-blank {what})")
    return items


def _first_key(record: Any, keys: tuple[str, ...]) -> str | None:
    if not isinstance(record, dict):
        return None
    if keys == ("text",) and isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        return f"{record['prompt']}\n{record['response']}"  # an SFT record: same text as embedded_text_corpus
    for key in keys:
        if isinstance(record.get(key), str):
            return record[key]
    return None


def load_prompts(path: str | Path | None) -> list[str]:
    """The prompts of ``path`` (``.txt`` / ``.jsonl`` with ``"prompt"``), or the built-in set."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    return read_lines_or_jsonl(path, ("prompt",), "prompts")


def load_heldout(path: str | Path | None, max_texts: int | None) -> list[str]:
    """Held-out texts: ``path`` (``.txt`` one per line, ``.jsonl`` with ``"text"`` or prompt/response) or
    the embedded held-out split (texts never seen in training by the embedded recipes)."""
    if path is None:
        from entropy_reg.data.pydoc_corpus import embedded_text_corpus

        texts = embedded_text_corpus(split="heldout")
    else:
        texts = read_lines_or_jsonl(path, ("text",), "held-out text")
    return texts if max_texts is None else texts[:max_texts]


def encode_prompts(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt formatted as in training (chat template when the tokenizer has one)."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    # A chat render already holds its special tokens; the plain format adds the tokenizer's own (BOS),
    # as SFT tokenisation does (entropy_reg.data.tokenize_prompt_response).
    return [list(tokenizer(format_prompt(tokenizer, p), add_special_tokens=not chat)["input_ids"]) for p in prompts]


def context_length(model: Any) -> int | None:
    """The positions a model can attend over (``max_position_embeddings`` or the like), None if unknown."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(prompt_ids: list[list[int]], prompts: list[str], max_new_tokens: int,
                  models: dict[str, Any]) -> None:
    """Refuse a prompt that, with ``max_new_tokens``, does not fit a model's context (naming it and the limits).

    A longer input would run past the positions the model was trained on and report numbers about
    nothing the model can do; cutting it silently would change the question.
    """
    for role, model in models.items():
        context = context_length(model)
        if context is None:
            continue
        for i, ids in enumerate(prompt_ids):
            if len(ids) + max_new_tokens > context:
                text = " ".join(prompts[i].split())
                text = text[:40] + ("..." if len(text) > 40 else "")
                raise InputError(
                    f"prompt {i} (0-based, {text!r}) is {len(ids):,} tokens as formatted: with --max-new-tokens "
                    f"{max_new_tokens} it does not fit the {role} model's context of {context} positions; shorten "
                    f"it to at most {max(0, context - max_new_tokens)} tokens or lower --max-new-tokens"
                )


def probe_sentences(tokenizer: Any, texts: list[str], limit: int) -> list[list[int]]:
    """Up to ``limit`` probe sentences (token ids), the first usable sentence of each held-out text.

    Each sentence is encoded as ``" " + sentence + "."`` so that N copies read as N sentences.
    """
    out: list[list[int]] = []
    for text in texts:
        if len(out) >= limit:  # checked first: limit 0 means no probe at all
            break
        body = text.split("\n", 1)[-1]  # skip the prompt line of an SFT text
        for sentence in split_sentences(body):
            ids = list(tokenizer(" " + sentence + ".", add_special_tokens=False)["input_ids"])
            if PROBE_MIN_TOKENS <= len(ids) <= PROBE_MAX_TOKENS:
                out.append(ids)
                break
    return out
