"""SFTDataModule: the Lightning DataModule that loads, validates, tokenises and batches SFT data.

The pieces it assembles live next to it: :mod:`entropy_reg.data.sources` (rows and their validation),
:mod:`entropy_reg.data.formatting` (token ids and loss masks), :mod:`entropy_reg.data.collate` (batches).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from typing import Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from entropy_reg.data.collate import ResumableSampler, SFTCollator, _batches_done_in_epoch, resolve_pad_id
from entropy_reg.data.formatting import IGNORE_INDEX, tokenize_chat, tokenize_prompt_response
from entropy_reg.data.sources import (
    EMBEDDED_PREFIX,
    _bad_row,
    _quiet_progress_bars,
    _source_label,
    check_one_schema,
    load_raw_dataset,
    validate_messages,
    validate_prompt_response,
)
from entropy_reg.data.statistics import describe, row_statistics, warnings_for
from entropy_reg.errors import UserError
from entropy_reg.validation import check_int


class SFTDataModule(LightningDataModule):
    """Tokenised SFT batches ``{input_ids, attention_mask, labels}`` for causal-LM fine-tuning.

    Args:
        tokenizer: a name for :func:`entropy_reg.models.load_tokenizer` (``"tiny"``,
            ``"embedded:smollm2-135m-instruct"``, a directory, a ``.gguf`` file, a ``.ckpt``, a hub id).
            An already loaded tokenizer object is accepted too.
        gguf_file: GGUF file name when ``tokenizer`` is a directory.
        dataset: ``"embedded:pydoc"`` (Python's docs, see :mod:`entropy_reg.data.pydoc_corpus`), a local
            ``.jsonl``/``.json``/``.parquet`` file, or a hub dataset name.
        split: split of a hub dataset (or of the embedded one).
        val_dataset: validation source (same forms). Default: for ``embedded:pydoc`` its disjoint
            held-out split; otherwise ``val_fraction`` of ``dataset``, chosen with ``seed``.
        val_fraction: share of rows held out for validation when ``val_dataset`` is None (0 disables).
        prompt_field, response_field, messages_field: column names.
        max_length: maximum tokens per sequence.
        truncation: ``"truncate"`` cuts long sequences at ``max_length`` (the end of the response goes);
            ``"drop"`` skips them. Both warn with a count; rows left with no labeled token are dropped.
            At setup each split's :attr:`statistics` (truncated share, label tokens per row, responses'
            rep-2/rep-4 and duplicate share: :mod:`entropy_reg.data.statistics`) are printed, logged as
            ``data/<split>/*`` hyper-parameters and warned about past the thresholds documented there.
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
        max_length = check_int("SFTDataModule", "max_length", max_length, 2, error=UserError)
        batch_size = check_int("SFTDataModule", "batch_size", batch_size, 1, error=UserError)
        num_workers = check_int("SFTDataModule", "num_workers", num_workers, 0, error=UserError)
        max_records = check_int("SFTDataModule", "max_records", max_records, 1, allow_none=True,
                                alternative="or null for all rows", error=UserError)
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
        # Per split: entropy_reg.data.statistics.row_statistics of the rows kept (logged at setup).
        self.statistics: dict[str, dict[str, float]] = {}

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
        check_one_schema(raw, source, self.messages_field, self.prompt_field, self.response_field)
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
        self.statistics[name] = stats = row_statistics(data_keep["input_ids"], data_keep["labels"],
                                                       data_keep["truncated"])
        self._log_statistics(name, stats)
        return data_keep.remove_columns(["keep", "truncated"])

    def _log_statistics(self, name: str, stats: dict[str, float]) -> None:
        """One line at setup, a warning per threshold passed (:mod:`entropy_reg.data.statistics`), and
        ``data/<split>/<key>`` among the loggers' hyper-parameters (W&B: the run's config)."""
        rank_zero_info(f"SFTDataModule: {name} data: {describe(stats)}")
        for problem in warnings_for(stats):
            warnings.warn(f"SFTDataModule: {name} data: {problem}", stacklevel=4)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.is_global_zero and stats.get("rows"):
            for logger in trainer.loggers:
                logger.log_hyperparams({f"data/{name}/{k}": v for k, v in stats.items()})

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
