"""Where SFT rows come from and what a valid row is: the embedded corpus, local files, hub datasets.

Rows come in two shapes (detected per dataset by its columns):

- prompt/response: ``{"prompt": str, "response": str}``. Only response tokens are trained on.
- chat: ``{"messages": [{"role": ..., "content": ...}, ...]}``. Only assistant turns are trained on.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from entropy_reg.errors import MissingFileError, SourceUnavailableError, UserError

EMBEDDED_PREFIX = "embedded:pydoc"
_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# --------------------------------------------------------------------------- loading


def load_raw_dataset(
    source: str,
    split: str = "train",
    max_records: int | None = None,
    *,
    default_embedded_split: str | None = None,
):
    """Load untokenised rows as a ``datasets.Dataset``.

    Args:
        source: ``"embedded:pydoc"`` or ``"embedded:pydoc:<split>"``, a local ``.jsonl``/``.json``/
            ``.parquet`` file, or a hub dataset name (needs network). A name that looks like a path
            (see :func:`is_local_source`) is never sent to the hub: if it does not exist, that is a
            missing file.
        split: split name for hub datasets and for ``embedded:pydoc`` without an explicit split.
        max_records: keep only the first ``max_records`` rows.
        default_embedded_split: overrides ``split`` for ``embedded:pydoc`` without an explicit split.

    Raises:
        MissingFileError: a local-looking path does not exist.
        UserError: a directory, an unsupported file type, an empty or blank-only file, or a file that
            could not be parsed (the message names the file and, for JSON lines, the 1-based line).
        SourceUnavailableError: a hub dataset could not be loaded.
    """
    import datasets

    if source == EMBEDDED_PREFIX or source.startswith(EMBEDDED_PREFIX + ":"):
        from entropy_reg.data.pydoc_corpus import embedded_sft_records

        embedded_split = source[len(EMBEDDED_PREFIX) + 1 :] or default_embedded_split or split
        return datasets.Dataset.from_list(embedded_sft_records(max_records=max_records, split=embedded_split))
    path = Path(source).expanduser()
    if is_local_source(source):
        _check_local_file(source, path)
        try:
            with _quiet_json_builder():
                ds = datasets.load_dataset(_LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as exc:  # pyarrow/json errors: say which line is wrong when we can
            problem = _json_file_problem(path) if _LOCAL_FORMATS[path.suffix] == "json" else None
            if problem is None:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                problem = f"could not be read ({type(exc).__name__}{': ' + detail if detail else ''})"
            raise UserError(f"dataset file {str(path)!r}: {problem}") from exc
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as exc:
            raise SourceUnavailableError(
                f"could not load dataset {source!r} (split {split!r}) from the Hugging Face hub; the network "
                f"may be unreachable. Use a local .jsonl/.json/.parquet file or 'embedded:pydoc'. ({exc})"
            ) from exc
    if max_records is not None:
        ds = ds.select(range(min(max_records, len(ds))))
    return ds


@contextlib.contextmanager
def _quiet_json_builder():
    """Mute the ERROR log (with a traceback) datasets' JSON builder writes before raising on a bad file:
    the exception is turned into one clear message naming the line instead."""
    logger = logging.getLogger("datasets.packaged_modules.json.json")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def is_local_source(source: str) -> bool:
    """Whether a dataset name means a local file rather than a hub id (``org/name``).

    Local: it exists, or starts with ``.``, ``/`` or ``~``, or has more than one ``/``, or ends in a
    file extension (``data/good.jsnl``; a suffix made of digits, as in ``org/name-2.5``, is not one).
    """
    path = Path(source).expanduser()
    return (
        path.exists()
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
        or re.fullmatch(r"\.[A-Za-z][A-Za-z0-9]*", path.suffix) is not None
    )


def _check_local_file(source: str, path: Path) -> None:
    """A readable file of a supported type with some content, or a UserError naming it."""
    if path.is_dir():
        raise UserError(f"dataset {source!r} is a directory; pass a .jsonl, .json or .parquet file")
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []
        close = difflib.get_close_matches(path.name, siblings, n=1)
        hint = f"; did you mean {str(path.parent / close[0])!r}?" if close else ""
        raise MissingFileError(f"dataset file not found: {source!r} (resolved to {path.resolve()}){hint}")
    if path.suffix not in _LOCAL_FORMATS:
        raise UserError(
            f"dataset file {source!r} has the unsupported type {path.suffix!r}; use .jsonl, .json or .parquet"
        )
    if path.stat().st_size == 0:
        raise UserError(f"dataset file {str(path)!r} is empty; it needs one JSON object per row")


def _json_file_problem(path: Path) -> str | None:
    """What makes a .json/.jsonl file unreadable as rows (blank, bad JSON line, not an object), or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot be read as UTF-8 text ({exc})"
    if not text.strip():
        return "has only blank lines; it needs one JSON object per row"
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            pass  # datasets also reads JSON lines from .json files: check it line by line below
        else:
            items = data if isinstance(data, list) else [data]
            bad = next((i for i, item in enumerate(items) if not isinstance(item, dict)), None)
            if bad is not None:
                return f"item {bad} (0-based) is a {type(items[bad]).__name__}, not a JSON object"
            return None if items else "holds an empty list; it needs at least one JSON object"
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {lineno}: invalid JSON ({err.msg} at column {err.colno}); each line must be one JSON object"
        if not isinstance(record, dict):
            return f"line {lineno}: expected a JSON object {{...}}, got a {type(record).__name__}"
    return None


# --------------------------------------------------------------------------- validation


# Roles chat templates know; anything else (a typo like "usr") would be rendered or dropped silently.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function", "ipython")


def _bad_row(source: str, row: int, key: str, problem: str) -> UserError:
    return UserError(f"{source}: row {row} (0-based): key {key!r} {problem}")


def _describe(value: Any) -> str:
    return "missing or null" if value is None else f"must be a string, got {type(value).__name__}"


def validate_prompt_response(
    row: dict, index: int, source: str, prompt_field: str, response_field: str
) -> tuple[str, str]:
    """Return ``(prompt, response)`` or raise ValueError naming source, row and key."""
    prompt, response = row.get(prompt_field), row.get(response_field)
    if not isinstance(prompt, str):
        raise _bad_row(source, index, prompt_field, _describe(prompt))
    if not isinstance(response, str):
        raise _bad_row(source, index, response_field, _describe(response))
    if not response.strip():
        raise _bad_row(source, index, response_field, "is empty")
    return prompt, response


def validate_messages(row: dict, index: int, source: str, messages_field: str) -> list[dict[str, str]]:
    """Return the row's messages as ``[{"role", "content"}]`` or raise ValueError naming source/row/key."""
    messages = row.get(messages_field)
    if not isinstance(messages, list) or not messages:
        problem = (
            "missing or null"
            if messages is None
            else f"must be a non-empty list of {{role, content}} dicts, got {type(messages).__name__}"
        )
        raise _bad_row(source, index, messages_field, problem)
    clean = []
    for turn, message in enumerate(messages):
        key = f"{messages_field}[{turn}]"
        if not isinstance(message, dict):
            raise _bad_row(
                source, index, key, f"must be a dict with 'role' and 'content', got {type(message).__name__}"
            )
        for field in ("role", "content"):
            if not isinstance(message.get(field), str):
                raise _bad_row(source, index, f"{key}.{field}", _describe(message.get(field)))
        if message["role"] not in CHAT_ROLES:
            close = difflib.get_close_matches(message["role"].strip().lower(), CHAT_ROLES, n=1, cutoff=0.5)
            raise _bad_row(source, index, f"{key}.role", f"is {message['role']!r}, not a chat role ("
                           + ", ".join(CHAT_ROLES) + ")" + (f"; did you mean {close[0]!r}?" if close else ""))
        clean.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in clean):
        raise _bad_row(source, index, messages_field, "has no assistant turn with non-empty content")
    return clean


@contextlib.contextmanager
def _quiet_progress_bars():
    """Silence datasets' per-call progress bars (map/filter over a few hundred rows) and restore them."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def check_one_schema(raw: Any, source: str, messages_field: str, prompt_field: str, response_field: str) -> None:
    """Refuse a dataset that mixes chat rows (``messages``) with prompt/response rows, naming where it switches.

    A JSON-lines file with both kinds of rows reads as one table whose missing keys are null: every row
    of the other kind would then be blamed for lacking a key. (Rows that have both, like some hub chat
    sets with a ``prompt`` column next to ``messages``, are chat rows.)
    """
    columns = set(raw.column_names)
    if messages_field not in columns or not ({prompt_field, response_field} & columns):
        return
    kinds = ["messages" if m is not None else "prompt/response" for m in raw[messages_field]]
    first = kinds[0]
    switch = next((i for i, kind in enumerate(kinds) if kind != first), None)
    if switch is None:
        return
    other = kinds[switch]
    keys = f"'{messages_field}'" if other == "messages" else f"'{prompt_field}'/'{response_field}'"
    before = "row 0 (0-based) is a" if switch == 1 else f"rows 0-{switch - 1} (0-based) are"
    raise UserError(
        f"{source}: the file mixes two row schemas: {before} {first} row{'s' if switch > 1 else ''} and row "
        f"{switch} is the first {other} row (it has {keys}); use one schema per file"
    )


def _source_label(source: str) -> str:
    """How a source is named in errors: the file name for files, the source string otherwise."""
    path = Path(source).expanduser()
    return str(path) if path.suffix in _LOCAL_FORMATS else source
