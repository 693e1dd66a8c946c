"""Training data: sources and row validation, formatting with loss masks, collation, the DataModule, the corpus.

Imports only ``errors``/``validation`` (and the corpus); ``SFTDataModule`` (Lightning) loads lazily, so
``entropy_reg.data.formatting`` is usable without Lightning. ``statistics`` (what the rows teach about
ending and repeating) reads ``metrics.repetition`` inside its function, at setup, never at import.
"""

from entropy_reg.data.collate import ResumableSampler, SFTCollator, resolve_pad_id
from entropy_reg.data.formatting import IGNORE_INDEX, format_prompt, tokenize_chat, tokenize_prompt_response
from entropy_reg.data.sources import (
    EMBEDDED_PREFIX,
    is_local_source,
    load_raw_dataset,
    validate_messages,
    validate_prompt_response,
)

__all__ = [
    "IGNORE_INDEX",
    "EMBEDDED_PREFIX",
    "ResumableSampler",
    "SFTCollator",
    "SFTDataModule",
    "format_prompt",
    "is_local_source",
    "load_raw_dataset",
    "resolve_pad_id",
    "tokenize_chat",
    "tokenize_prompt_response",
    "validate_messages",
    "validate_prompt_response",
]


def __getattr__(name):
    # The Lightning DataModule loads on first use: recipes' class_path entropy_reg.data.SFTDataModule
    # resolves through here, while entropy_reg.hf and the report reach formatting without Lightning.
    if name == "SFTDataModule":
        from entropy_reg.data.datamodule import SFTDataModule

        return SFTDataModule
    raise AttributeError(f"module 'entropy_reg.data' has no attribute {name!r}")
