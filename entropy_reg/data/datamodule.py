"""Supervised fine-tuning data: loading, validation, tokenisation with loss masks, batching.

Rows come in two shapes (detected per dataset by its columns):

- prompt/response: ``{"prompt": str, "response": str}``. Only response tokens are trained on.
- chat: ``{"messages": [{"role": ..., "content": ...}, ...]}``. Only assistant turns are trained on.

Formatting (``prompt_format``): ``"chat"`` renders prompt/response rows as a user turn and an assistant
turn through ``tokenizer.apply_chat_template``; ``"plain"`` uses ``prompt + "\\n"`` then the response
followed by EOS; ``"auto"`` (default) picks ``"chat"`` when the tokenizer has a chat template. At
inference, format a prompt the same way (:func:`format_prompt`) so that the model sees what it was
trained on.

Masking: labels are ``-100`` on prompt, system/user turns and padding. For chat rows the assistant
spans are found by rendering prefixes of the conversation as text: ``render(messages[:i],
add_generation_prompt=True)`` ends where assistant turn ``i`` starts and ``render(messages[:i+1])`` ends
where it ends (its end-of-turn tokens, e.g. EOS, are labeled so the model learns to stop). Each span is
tokenised separately, which matches inference, where the prompt is tokenised alone. A template whose
renders are not prefixes of each other is rejected with an error.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from entropy_reg.errors import MissingFileError, SourceUnavailableError, UserError

IGNORE_INDEX = -100
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
        from entropy_reg.embedded import embedded_sft_records

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
        clean.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in clean):
        raise _bad_row(source, index, messages_field, "has no assistant turn with non-empty content")
    return clean


# --------------------------------------------------------------------------- tokenisation


def _encode(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]) if text else []


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _render_prefix(tokenizer, messages: list[dict]) -> str:
    """The render that ends where the next (assistant) turn's content starts."""
    try:
        return _render(tokenizer, messages, add_generation_prompt=True)
    except Exception:
        if messages:
            raise
        return ""  # some templates cannot render an empty conversation (assistant speaks first)


def format_prompt(tokenizer, prompt: str, prompt_format: str = "auto") -> str:
    """The text a prompt is turned into before tokenisation (what generation should feed the model)."""
    if _use_chat(tokenizer, prompt_format):
        return _render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    return prompt + "\n"


def _use_chat(tokenizer, prompt_format: str) -> bool:
    if prompt_format not in ("auto", "chat", "plain"):
        raise UserError(f"prompt_format must be 'auto', 'chat' or 'plain', got {prompt_format!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "chat" and not has_template:
        raise UserError("prompt_format='chat' but the tokenizer has no chat_template")
    return prompt_format == "chat" or (prompt_format == "auto" and has_template)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no eos_token_id; responses must end with EOS")
    return tokenizer.eos_token_id


def tokenize_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Tokenise a conversation; labels are the token ids on assistant turns and -100 elsewhere.

    Raises:
        ValueError: the tokenizer has no chat template, or its renders are not prefix-consistent.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("chat rows ('messages') need a tokenizer with a chat_template")
    segments: list[tuple[str, bool]] = []  # (text, is_labeled)
    done = ""  # text rendered and assigned to segments so far
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render_prefix(tokenizer, messages[:i])
        through = _render(tokenizer, messages[: i + 1])
        if not before.startswith(done) or not through.startswith(before):
            raise UserError(
                "the chat template is not prefix-consistent (rendering a conversation prefix does not "
                "give a prefix of the full render), so assistant turns cannot be located for masking"
            )
        segments += [(before[len(done) :], False), (through[len(before) :], True)]
        done = through
    full = _render(tokenizer, messages)
    if not full.startswith(done):
        raise UserError("the chat template is not prefix-consistent (see tokenize_chat)")
    segments.append((full[len(done) :], False))
    input_ids: list[int] = []
    labels: list[int] = []
    for text, labeled in segments:
        ids = _encode(tokenizer, text)
        input_ids += ids
        labels += ids if labeled else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def tokenize_prompt_response(
    tokenizer, prompt: str, response: str, prompt_format: str = "auto"
) -> tuple[list[int], list[int]]:
    """Tokenise one prompt/response pair; labels are -100 on the prompt, token ids on the response.

    ``"plain"`` format: ``prompt + "\\n"`` (with the tokenizer's own special tokens, e.g. a BOS) then the
    response and an appended EOS. ``"chat"`` format: a user turn and an assistant turn; the template's
    end-of-turn tokens close the response.
    """
    if _use_chat(tokenizer, prompt_format):
        return tokenize_chat(
            tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        )
    prompt_ids = _encode(tokenizer, prompt + "\n", add_special_tokens=True)
    response_ids = _encode(tokenizer, response) + [_eos_id(tokenizer)]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


# --------------------------------------------------------------------------- batching


def resolve_pad_id(tokenizer) -> int:
    """The pad id for batching: ``pad_token_id``, else ``eos_token_id`` (padding is masked anyway)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise UserError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")


@dataclass
class SFTCollator:
    """Right-pads ``input_ids``/``labels`` rows to the longest in the batch.

    Returns ``{input_ids, attention_mask, labels}`` LongTensors; padding has attention 0 and label -100.
    A dataclass (not a closure) so DataLoader workers can pickle it.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class ResumableSampler(DistributedSampler):
    """Training order as a pure function of ``(seed, epoch)``, sharded over ranks, resumable mid-epoch.

    - The order of epoch ``e`` is ``randperm(n, seed + e)`` (DistributedSampler's), whatever happened
      before, so a run resumed at epoch ``e`` sees the same order as an uninterrupted one. (A seeded
      ``RandomSampler`` generator would instead restart at epoch 0's order after a resume.)
    - ``skip`` drops the first samples of this rank's share once (the batches a restored run already
      trained on in the current epoch); later epochs start at 0. Lightning 2.x would otherwise
      replay the epoch from its start after a mid-epoch resume.
    - It *is* a ``DistributedSampler``, so Lightning keeps it under DDP instead of replacing it;
      ``num_replicas=1, rank=0`` is plain single-process shuffling.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 skip: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = int(skip)

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


def _batches_done_in_epoch(trainer, n_batches: int) -> int:
    """Batches of the current epoch a restored trainer already trained on (0 when starting an epoch).

    Derived from ``global_step`` and ``current_epoch`` (restored from the checkpoint), not from the loop's
    batch counters, which a checkpoint written in ``on_train_batch_end`` records one batch short.
    Assumes every epoch has ``n_batches`` batches (the optimizer also steps on an epoch's last,
    incomplete accumulation window, as Lightning does).
    """
    if trainer is None or n_batches <= 0:
        return 0
    limit = getattr(trainer, "limit_train_batches", 1.0)
    if isinstance(limit, int) and not isinstance(limit, bool):
        n_batches = min(n_batches, limit)
    elif isinstance(limit, float) and limit != 1.0:
        n_batches = int(n_batches * limit)
    accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1)))
    steps_per_epoch = math.ceil(n_batches / accumulate) if n_batches else 0
    if not steps_per_epoch:
        return 0
    done_steps = int(trainer.global_step) - int(trainer.current_epoch) * steps_per_epoch
    if 0 < done_steps < steps_per_epoch:
        return done_steps * accumulate
    return 0


# --------------------------------------------------------------------------- the DataModule


class SFTDataModule(LightningDataModule):
    """Tokenised SFT batches ``{input_ids, attention_mask, labels}`` for causal-LM fine-tuning.

    Args:
        tokenizer: a name for :func:`entropy_reg.models.load_tokenizer` (``"tiny"``,
            ``"embedded:smollm2-135m-instruct"``, a directory, a ``.gguf`` file, a ``.ckpt``, a hub id).
            An already loaded tokenizer object is accepted too.
        gguf_file: GGUF file name when ``tokenizer`` is a directory.
        dataset: ``"embedded:pydoc"`` (Python's docs, see :mod:`entropy_reg.embedded`), a local
            ``.jsonl``/``.json``/``.parquet`` file, or a hub dataset name.
        split: split of a hub dataset (or of the embedded one).
        val_dataset: validation source (same forms). Default: for ``embedded:pydoc`` its disjoint
            held-out split; otherwise ``val_fraction`` of ``dataset``, chosen with ``seed``.
        val_fraction: share of rows held out for validation when ``val_dataset`` is None (0 disables).
        prompt_field, response_field, messages_field: column names.
        max_length: maximum tokens per sequence.
        truncation: ``"truncate"`` cuts long sequences at ``max_length`` (the end of the response goes);
            ``"drop"`` skips them. Both warn with a count; rows left with no labeled token are dropped.
        prompt_format: ``"auto"``, ``"chat"`` or ``"plain"`` (see the module docstring).
        batch_size, num_workers: DataLoader settings.
        seed: seed of the train/val split and of the training shuffle.
        max_records: use only the first ``max_records`` rows of each source (quick runs, tests).
    """

    def __init__(
        self,
        tokenizer: str = "tiny",
        gguf_file: str | None = None,
        dataset: str = EMBEDDED_PREFIX,
        split: str = "train",
        val_dataset: str | None = None,
        val_fraction: float = 0.05,
        prompt_field: str = "prompt",
        response_field: str = "response",
        messages_field: str = "messages",
        max_length: int = 256,
        truncation: Literal["truncate", "drop"] = "truncate",
        prompt_format: Literal["auto", "chat", "plain"] = "auto",
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        max_records: int | None = None,
    ) -> None:
        super().__init__()
        if truncation not in ("truncate", "drop"):
            raise UserError(f"SFTDataModule: truncation must be 'truncate' or 'drop', got {truncation!r}")
        if prompt_format not in ("auto", "chat", "plain"):
            raise UserError(f"SFTDataModule: prompt_format must be 'auto', 'chat' or 'plain', got {prompt_format!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"SFTDataModule: val_fraction must be in [0, 1), got {val_fraction}")
        _check_int("max_length", max_length, 2)
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        if max_records is not None:
            _check_int("max_records", max_records, 1, "or null for all rows")
        self.save_hyperparameters(ignore=[] if isinstance(tokenizer, str) else ["tokenizer"])
        self.tokenizer_name = tokenizer if isinstance(tokenizer, str) else None
        self.tokenizer = None if isinstance(tokenizer, str) else tokenizer
        self.gguf_file = gguf_file
        self.dataset = dataset
        self.split = split
        self.val_dataset = val_dataset
        self.val_fraction = val_fraction
        self.prompt_field = prompt_field
        self.response_field = response_field
        self.messages_field = messages_field
        self.max_length = max_length
        self.truncation = truncation
        self.prompt_format = prompt_format
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.max_records = max_records
        self.train_data = None
        self.val_data = None
        # Per split ("train"/"val"): rows dropped (too long or nothing labeled) and rows truncated.
        self.dropped: dict[str, int] = {}
        self.truncated: dict[str, int] = {}

    # -- tokenizer

    def prepare_tokenizer(self):
        """Load (once) and return the tokenizer; usable before :meth:`setup`."""
        if self.tokenizer is None:
            from entropy_reg.models import load_tokenizer

            self.tokenizer = load_tokenizer(self.tokenizer_name, gguf_file=self.gguf_file)
        return self.tokenizer

    # -- setup

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        tokenizer = self.prepare_tokenizer()
        raw = load_raw_dataset(self.dataset, self.split, self.max_records)
        train = self._tokenize(raw, _source_label(self.dataset))
        if self.val_dataset is not None or self._embedded_default_val():
            val_source = self.val_dataset or EMBEDDED_PREFIX
            val_raw = load_raw_dataset(
                val_source, self.split, self.max_records, default_embedded_split="heldout"
            )
            val = self._tokenize(val_raw, _source_label(val_source))
        elif self.val_fraction > 0:
            if len(train) < 2:
                raise UserError(
                    f"{_source_label(self.dataset)}: {len(train)} row cannot be split into training and "
                    f"validation (val_fraction={self.val_fraction}); add rows, pass data.val_dataset, or set "
                    "data.val_fraction to 0 to train without validation"
                )
            # Split by original row index (before dropping), so the split does not move with max_length.
            order = np.random.default_rng(self.seed).permutation(len(train))
            n_val = min(len(train) - 1, max(1, math.ceil(len(train) * self.val_fraction)))
            val, train = train.select(sorted(order[:n_val])), train.select(sorted(order[n_val:]))
        else:
            val = None
        self.train_data = self._drop_unusable(train, "train")
        if not len(self.train_data):
            raise UserError(
                f"{_source_label(self.dataset)}: no usable training rows (all {len(train)} rows were longer than "
                f"max_length={self.max_length} or had no response tokens); raise max_length or use truncation='truncate'"
            )
        self.val_data = self._drop_unusable(val, "val") if val is not None else None
        if self.val_data is not None and not len(self.val_data):
            # Lightning would only say "Total length of `list` across ranks is zero" and skip validation
            # (and every GenerationEval at validation end) for the whole run.
            raise UserError(
                f"{_source_label(self.val_dataset or self.dataset)}: all {len(val)} validation rows were dropped "
                f"(longer than max_length={self.max_length} or no response token within it); raise max_length, "
                "use truncation='truncate', pass another data.val_dataset, or set data.val_fraction to 0"
            )
        self._pad_id = resolve_pad_id(tokenizer)

    def _embedded_default_val(self) -> bool:
        return self.dataset == EMBEDDED_PREFIX and self.split == "train"

    def _tokenize(self, raw, source: str):
        """Validate and tokenise every row (``datasets.map``); marks rows to drop instead of dropping."""
        if not len(raw):
            raise UserError(f"{source}: the dataset has no rows")
        columns = set(raw.column_names)
        chat = self.messages_field in columns
        if not chat:
            for key in (self.prompt_field, self.response_field):
                if key not in columns:
                    raise _bad_row(
                        source,
                        0,
                        key,
                        f"is missing (columns: {sorted(columns)}; set prompt_field/"
                        f"response_field or messages_field)",
                    )
        tokenizer, max_length, truncation = self.tokenizer, self.max_length, self.truncation
        prompt_format, fields = self.prompt_format, (self.prompt_field, self.response_field)
        messages_field = self.messages_field

        def encode(row: dict, index: int) -> dict:
            if chat:
                ids, labels = tokenize_chat(tokenizer, validate_messages(row, index, source, messages_field))
            else:
                prompt, response = validate_prompt_response(row, index, source, *fields)
                ids, labels = tokenize_prompt_response(tokenizer, prompt, response, prompt_format)
            too_long = len(ids) > max_length
            ids, labels = ids[:max_length], labels[:max_length]
            keep = not (too_long and truncation == "drop") and any(label != IGNORE_INDEX for label in labels)
            return {"input_ids": ids, "labels": labels, "keep": keep, "truncated": too_long and keep}

        with _quiet_progress_bars():
            return raw.map(
                encode,
                with_indices=True,
                remove_columns=raw.column_names,
                keep_in_memory=True,
                load_from_cache_file=False,
                # An explicit fingerprint skips hashing the closure (and the tokenizer inside it).
                new_fingerprint=hashlib.sha1(f"sft-{os.getpid()}-{id(self)}-{source}".encode()).hexdigest(),
            )

    def _drop_unusable(self, data, name: str):
        """Remove rows marked ``keep=False``; record and warn how many were dropped or truncated."""
        with _quiet_progress_bars():
            data_keep = data.filter(lambda keep: keep, input_columns="keep", keep_in_memory=True)
        dropped = len(data) - len(data_keep)
        truncated = sum(data_keep["truncated"])
        self.dropped[name], self.truncated[name] = dropped, truncated
        if dropped:
            reason = "longer than" if self.truncation == "drop" else "with no response token within"
            warnings.warn(
                f"SFTDataModule: dropped {dropped} of {len(data)} {name} rows {reason} "
                f"max_length={self.max_length} tokens",
                stacklevel=3,
            )
        if truncated:
            warnings.warn(
                f"SFTDataModule: truncated {truncated} of {len(data)} {name} rows to "
                f"max_length={self.max_length} tokens (the end of their responses is not trained on)",
                stacklevel=3,
            )
        return data_keep.remove_columns(["keep", "truncated"])

    # -- loaders

    def _loader(self, data, shuffle: bool, sampler=None) -> DataLoader:
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            collate_fn=SFTCollator(self._pad_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled with ``seed`` per epoch; sharded over ranks; resumes mid-epoch where a checkpoint left off.

        ``batch_size`` is per rank (a global batch is ``batch_size * world_size * accumulate_grad_batches``).
        """
        self._require_setup()
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(self.train_data, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed)
        n_batches = math.ceil(len(sampler) / self.batch_size)
        done = _batches_done_in_epoch(trainer, n_batches)
        sampler.skip = done * self.batch_size
        if trainer is not None:
            # Lightning sets the epoch again before iterating; setting it here too covers worker
            # processes, which draw indices as soon as the iterator is created.
            sampler.set_epoch(trainer.current_epoch)
        return self._loader(self.train_data, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        return (
            self._loader(self.val_data, shuffle=False)
            if self.val_data is not None and len(self.val_data)
            else []
        )

    def _require_setup(self) -> None:
        if self.train_data is None:
            raise RuntimeError("call SFTDataModule.setup() before asking for dataloaders")


def _check_int(name: str, value: Any, minimum: int, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(
            f"SFTDataModule: {name} must be an integer >= {minimum}{' ' + alternative if alternative else ''}, "
            f"got {value!r}"
        )


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


def _source_label(source: str) -> str:
    """How a source is named in errors: the file name for files, the source string otherwise."""
    path = Path(source).expanduser()
    return str(path) if path.suffix in _LOCAL_FORMATS else source
