"""An SFT dataset that needs no network: built from the documentation that ships with Python.

Sources, in a fixed order:

1. ``pydoc_data.topics.topics`` (the language reference topics behind ``help("for")``), sorted by key,
   split into paragraphs and packed into chunks of at most ``MAX_RESPONSE_CHARS`` characters, one
   record per chunk: ``"Explain the Python topic 'for' (The "for" statement)."``.
2. Docstrings of a fixed list of stdlib modules (:data:`STDLIB_MODULES`) and of their public functions
   and classes (names sorted, only objects defined in that module, so re-exports do not duplicate):
   ``"What does `json.dumps` do?"``.

Cleaning: whitespace runs collapse to one space; responses are cut at the last sentence end before
``MAX_RESPONSE_CHARS`` (800 characters: ~230 tokens of the tiny tokenizer, ~190 of SmolLM2's, so
that a prompt and its response fit the default ``max_length=256``); responses shorter than
``MIN_RESPONSE_CHARS`` are dropped; duplicate responses keep their first occurrence.

Determinism: no dict/set iteration order or hash seed is involved (keys and names are sorted, the
held-out assignment uses sha256 of the prompt). The *content* does depend on the Python version (its
docs change slightly between releases), so the dataset is reproducible per Python minor version, not
across versions; :func:`corpus_fingerprint` identifies the exact content (the tiny tokenizer cache is
keyed by it).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import re
import sys
import warnings
from typing import Literal

Split = Literal["train", "heldout", "all"]

MAX_RESPONSE_CHARS = 800
MIN_RESPONSE_CHARS = 150
# Share of records (by a hash of the prompt) reserved for held-out perplexity / validation.
HELDOUT_FRACTION = 0.1

# A fixed list, not "all importable modules": the set must not depend on what is installed.
# Chosen for long, prose-like docstrings and no import side effects.
STDLIB_MODULES: tuple[str, ...] = (
    "abc",
    "argparse",
    "base64",
    "bisect",
    "builtins",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
    "math",
    "operator",
    "os",
    "os.path",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "secrets",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
)

_HEADING_UNDERLINE = re.compile(r"^([*=\-~^])\1{2,}\s*$")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


def clean_text(text: str) -> str:
    """Collapse every whitespace run (newlines included) to a single space and strip."""
    return " ".join(text.split())


def truncate_at_sentence(text: str, max_chars: int = MAX_RESPONSE_CHARS) -> str:
    """Return ``text`` cut to at most ``max_chars``, ending at a sentence end where one exists.

    Falls back to the last word boundary when the first sentence alone is longer than ``max_chars``.
    """
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= max_chars // 3:
        return head[: ends[-1]].strip()
    cut = head.rfind(" ")
    return head[: cut if cut > 0 else max_chars].strip()


def _topic_sections(raw: str) -> list[tuple[str, list[str]]]:
    """Split a topic into ``(heading, paragraphs)`` sections using its reST-style underlines."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for block in re.split(r"\n\s*\n", raw):
        lines = block.strip("\n").split("\n")
        # A heading block is "Title\n*****" (possibly followed by more text in the same block).
        if len(lines) >= 2 and _HEADING_UNDERLINE.match(lines[1]) and lines[0].strip():
            sections.append((clean_text(lines[0]), []))
            lines = lines[2:]
        paragraph = clean_text("\n".join(lines))
        if paragraph:
            sections[-1][1].append(paragraph)
    return [(title, paras) for title, paras in sections if paras]


def _pack_paragraphs(paragraphs: list[str], max_chars: int) -> list[str]:
    """Greedily pack consecutive paragraphs into chunks of at most ``max_chars`` characters."""
    chunks: list[str] = []
    current = ""
    for para in paragraphs:
        para = truncate_at_sentence(para, max_chars)
        if current and len(current) + 1 + len(para) > max_chars:
            chunks.append(current)
            current = para
        else:
            current = f"{current} {para}".strip()
    if current:
        chunks.append(current)
    return chunks


def _topic_records() -> list[dict[str, str]]:
    from pydoc_data.topics import topics

    records = []
    for key in sorted(topics):
        for title, paragraphs in _topic_sections(topics[key]):
            chunks = _pack_paragraphs(paragraphs, MAX_RESPONSE_CHARS)
            for part, chunk in enumerate(chunks, start=1):
                label = title or key
                suffix = f", part {part}" if len(chunks) > 1 else ""
                prompt = f"Explain the Python topic '{key}' ({label}{suffix})."
                records.append({"prompt": prompt, "response": chunk})
    return records


def _public_members(module) -> list[tuple[str, object]]:
    """Public functions and classes defined in ``module`` itself, sorted by name."""
    members = []
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = vars(module)[name]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        members.append((name, obj))
    return members


def _method_records(class_label: str, cls: type) -> list[dict[str, str]]:
    """Records for the public methods a class defines itself (inherited ones would repeat)."""
    records = []
    for name in sorted(vars(cls)):
        obj = vars(cls)[name]
        if isinstance(obj, (classmethod, staticmethod)):
            obj = obj.__func__
        if name.startswith("_") or not inspect.isroutine(obj):
            continue
        # Other libraries monkeypatch stdlib classes (transformers adds ``logging.Logger.warning_once``);
        # keep only methods from the class' own module so the dataset does not depend on imports.
        if getattr(obj, "__module__", None) not in (None, cls.__module__):
            continue
        doc = obj.__doc__ if isinstance(obj.__doc__, str) else None
        if doc:
            records.append({"prompt": f"What does the method `{class_label}.{name}` do?", "response": doc})
    return records


def _docstring_records() -> list[dict[str, str]]:
    # Reading some attributes warns (e.g. the deprecated ``typing.io``); the warnings are not ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _docstring_records_unchecked()


def _docstring_records_unchecked() -> list[dict[str, str]]:
    records = []
    for module_name in STDLIB_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # e.g. a stripped-down Python build; the corpus fingerprint records it
            continue
        doc = inspect.getdoc(module)
        if doc:
            records.append({"prompt": f"What is the Python module `{module_name}` for?", "response": doc})
        # ``os.path`` is really ``posixpath``; use the name people write.
        module_label = "" if module_name == "builtins" else f"{module_name}."
        for name, obj in _public_members(module):
            doc = obj.__doc__ if isinstance(obj.__doc__, str) else None
            if doc:
                kind = "class" if inspect.isclass(obj) else "function"
                records.append(
                    {"prompt": f"What does the {kind} `{module_label}{name}` do?", "response": doc}
                )
            if inspect.isclass(obj):
                records.extend(_method_records(f"{module_label}{name}", obj))
    return records


def _is_heldout(prompt: str) -> bool:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_FRACTION


@functools.lru_cache(maxsize=1)
def _all_records() -> tuple[tuple[str, str, bool], ...]:
    """Every record as ``(prompt, response, is_heldout)``, cleaned and deduplicated, in a fixed order."""
    seen_responses: set[str] = set()
    seen_prompts: set[str] = set()
    out = []
    for record in _topic_records() + _docstring_records():
        response = truncate_at_sentence(clean_text(record["response"]))
        prompt = record["prompt"]
        if len(response) < MIN_RESPONSE_CHARS or response in seen_responses or prompt in seen_prompts:
            continue
        seen_responses.add(response)
        seen_prompts.add(prompt)
        out.append((prompt, response, _is_heldout(prompt)))
    return tuple(out)


def _check_split(split: str) -> None:
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def embedded_sft_records(max_records: int | None = None, split: Split = "train") -> list[dict[str, str]]:
    """Prompt/response records built from Python's own documentation.

    Args:
        max_records: keep only the first ``max_records`` records of the split (in the fixed order).
        split: ``"train"`` (~90%), ``"heldout"`` (~10%, disjoint from train by prompt and response)
            or ``"all"``.

    Returns:
        A new list of ``{"prompt": str, "response": str}`` dicts (safe to mutate).
    """
    _check_split(split)
    records = [
        {"prompt": prompt, "response": response}
        for prompt, response, heldout in _all_records()
        if split == "all" or heldout == (split == "heldout")
    ]
    return records if max_records is None else records[:max_records]


def embedded_text_corpus(split: Split = "train") -> list[str]:
    """Plain texts (``prompt + "\\n" + response``) of a split, for tokenizer training and perplexity."""
    return [f"{r['prompt']}\n{r['response']}" for r in embedded_sft_records(split=split)]


def corpus_fingerprint(split: Split = "train") -> str:
    """sha256 (hex) of the split's texts: identifies the exact content on this Python version."""
    h = hashlib.sha256()
    for text in embedded_text_corpus(split):
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def python_docs_version() -> str:
    """The Python version whose documentation the dataset was built from (e.g. ``"3.11.7"``)."""
    return ".".join(str(v) for v in sys.version_info[:3])
